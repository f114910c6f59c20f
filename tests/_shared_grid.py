"""The test session's one trained tiny grid and its MLflow store (`shared_grid` in conftest.py).

What is in it: ``pipelines/grid.py`` with 2 workers trained `CONFIG`, 8 MLPs on scikit-learn's
digits (depth 2, 2 epochs, 300 training and 150 test images, 200 points per CNA split, models
saved): shuffled labels 0 / 0.5 x width 0.05 / 0.1 x seed 0 / 1, a complete grid (CMI defined).
The clean cells have a snapshot at every epoch (0, 1, 2); the shuffled ones the final one only
(SPEC §4, as `make demo` does). The config is named ``demo`` and the experiment ``cna_tf-demo``,
the names `make demo` uses, so that the link `make demo` prints opens it (tests/test_ui.py).
The store is a sqlite file with its artifacts beside it (``store/mlflow.db``, ``store/mlruns``).

It is trained once per test session: under pytest-xdist each worker process asks for it, the
first one trains it under a file lock in the session's temporary folder (shared by the workers),
the others wait for it and read the result (pytest-xdist's documented pattern for a session
fixture run once). Tests only read it; a test that writes to a store (rerunning the grid,
comparing, scoring, training beside it) works on its own copy: `SharedGrid.copy`.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent

EXPERIMENT = "cna_tf-demo"
CONFIG = """name: demo
description: the test session's shared tiny grid (tests/_shared_grid.py)
defaults: {arch: mlp, dataset: digits, depth: 2, epochs: 2, snapshot_every: 1, batch_size: 64,
           n_train: 300, n_test: 150, max_samples: 200, save_model: true,
           suite: cheap}
cells:
  - {label_shuffle: 0.0, width: [0.05, 0.1], seed: [0, 1]}
  - {label_shuffle: 0.5, final_only: true, width: [0.05, 0.1], seed: [0, 1]}
"""
N_CELLS = 8
#: the columns of an MLflow sqlite store that hold an absolute artifact path
_PATH_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                 ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


@dataclass(frozen=True)
class SharedGrid:
    """The trained grid: its folder (read only), the grid step's output and how long it took."""

    path: Path
    stdout: str
    stderr: str
    seconds: float

    @property
    def store(self) -> Path:
        return self.path / "store"

    @property
    def uri(self) -> str:
        """The tracking URI of the shared store (read it; never write to it)."""
        return f"sqlite:///{self.store / 'mlflow.db'}"

    @property
    def config(self) -> Path:
        return self.path / "demo.yaml"

    def grid_args(self, backup_root: Path) -> List[str]:
        """``pipelines/grid.py``'s arguments that trained it (a rerun's: resumes, trains none)."""
        return ["--config", str(self.config), "--workers", "2", "--backup_root",
                str(backup_root), "--experiment", EXPERIMENT]

    def copy(self, dest: Path) -> str:
        """A writable copy of the store at ``dest`` (the sqlite file and its artifacts, the
        runs' artifact paths pointed at the copy's); its tracking URI."""
        shutil.copytree(self.store, dest)
        db = dest / "mlflow.db"
        with sqlite3.connect(db) as con:
            for table, column in _PATH_COLUMNS:
                con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                            (str(self.store), str(dest)))
        con.close()
        return f"sqlite:///{db}"


def _train(root: Path) -> Dict[str, object]:
    """Trains `CONFIG` into ``root/store`` (cwd there: MLflow puts the artifacts beside it)."""
    store = root / "store"
    store.mkdir(parents=True)
    (root / "demo.yaml").write_text(CONFIG)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
               TF_CPP_MIN_LOG_LEVEL="3")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "PYTEST_CURRENT_TEST"):  # MLflow turns on test-only checks with the last one
        env.pop(key, None)
    grid = SharedGrid(root, "", "", 0.0)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "grid.py"),
                           *grid.grid_args(root / "backup")],
                          cwd=store, env=env, capture_output=True, text=True, timeout=1200)
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "seconds": time.time() - t0}


def shared_grid(tmp_path_factory) -> SharedGrid:
    """The session's grid, trained by the first process that asks (see the module docstring)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's folder, the same for all its workers
    root = base / "shared_grid"
    result = base / "shared_grid.json"
    with FileLock(str(base / "shared_grid.lock")):
        if not result.is_file():
            shutil.rmtree(root, ignore_errors=True)
            result.write_text(json.dumps(_train(root)))
    r = json.loads(result.read_text())
    assert r["returncode"] == 0, "the shared grid failed to train:\n" + r["stdout"][-2000:] \
        + r["stderr"][-4000:]
    return SharedGrid(root, r["stdout"], r["stderr"], r["seconds"])
