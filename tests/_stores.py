"""Empty MLflow sqlite stores for tests, each a copy of one store migrated once per process.

A new sqlite store runs MLflow's alembic migrations when it is first opened: about 1 s of CPU in
a process that has MLflow loaded, 2.5 s in a fresh ``train.py`` (alembic's imports too), for
every test that starts from an empty store. `sqlite_store` copies a store migrated once instead,
with the one thing MLflow writes from where it runs: the Default experiment's artifact location,
``<the opening process's working directory>/mlruns/0`` (`tests/test_stores.py` checks the copy
against a store MLflow creates). The documented commands' tests (`test_docs.py`, the PGDL,
dry-run and Keras example lines) and the MLflow servers' stores still start from nothing, as a
user's do.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Optional, Union

_TEMPLATE: Optional[Path] = None


def _template() -> Path:
    global _TEMPLATE
    if _TEMPLATE is None or not _TEMPLATE.is_file():
        import mlflow

        folder = tempfile.mkdtemp(prefix="cna_tf-empty-store-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = Path(folder) / "mlflow.db"
        mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # migrates it
        _TEMPLATE = path
    return _TEMPLATE


def sqlite_store(path: Union[str, Path], cwd: Union[str, Path, None] = None) -> str:
    """The URI of an empty migrated sqlite store at ``path`` (made unless ``path`` exists), as
    MLflow makes one from a process working in ``cwd`` (default: this one's)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), path)
        default = Path(os.path.abspath(cwd or os.getcwd())) / "mlruns" / "0"
        with sqlite3.connect(path) as db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (str(default),))
        db.close()
    return f"sqlite:///{path}"
