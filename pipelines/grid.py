"""MLproject step `grid`: train every cell of a config, each as its own process and child run.

A parent run holds the grid (tag ``cna_tf.grid_key``: a hash of its cell keys). Each cell is a
child run (tags ``mlflow.parentRunId`` and ``cna_tf.cell_key``) trained by ``train.py`` in its
own process, ``workers`` at a time. Re-running the same grid resumes the same parent run: cells
that FINISHED are skipped, runs left RUNNING by a killed grid are marked KILLED, and failed or
killed cells are trained again in their own run (resumed from the cell's backup when one exists,
otherwise the old run is deleted and a new one started), so no cell is ever recorded twice.

    python pipelines/grid.py --config demo --workers 2
    python pipelines/grid.py --config paper --backend kubernetes --backend_config k8s.json
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import cell_key, cli_args, load_config  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent
TRAIN = Path(__file__).resolve().parent / "train.py"
TAG = "cna_tf."
BACKENDS = ("local", "kubernetes", "ray")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo", help="demo, paper, or a YAML path")
    ap.add_argument("--workers", type=lambda v: int(float(v)), default=2, help="cells trained at once (local)")
    ap.add_argument("--backend", default="local", help="local or kubernetes")
    ap.add_argument("--backend_config", default="",
                    help="MLflow kubernetes backend config (JSON), passed through")
    ap.add_argument("--experiment", default="",
                    help="experiment name (default: the one `mlflow run` uses, else "
                    "cna_tf-<config>)")
    ap.add_argument("--backup_root", default="",
                    help="where cells keep resume state (default .cna_backup)")
    ap.add_argument("--max_cells", type=lambda v: int(float(v)), default=0, help="only the first N cells (0: all)")
    return ap.parse_args(argv)


def grid_key(keys: List[str]) -> str:
    return hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:16]


class Progress:
    """Prints one line per finished cell: done/total, failures, elapsed, ETA."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.failed = total, done, 0
        self.t0, self.ran = time.time(), 0
        self._lock = threading.Lock()

    def finished(self, label: str, status: str, seconds: float) -> None:
        with self._lock:
            self.done += 1
            self.ran += 1
            self.failed += status != "FINISHED"
            elapsed = time.time() - self.t0
            left = self.total - self.done
            eta = elapsed / self.ran * left
            print(f"[{self.done}/{self.total}] {status:8s} {label} ({seconds:.0f}s) | elapsed "
                  f"{_hms(elapsed)}, ETA {_hms(eta)}, failed {self.failed}", flush=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _label(p: Dict[str, Any]) -> str:
    extra = f" shuffle={p['label_shuffle']:g}" if p["label_shuffle"] else ""
    depth = f" depth={p['depth']}" if p["arch"] == "mlp" else ""
    return (f"{p['arch']}/{p['dataset']} w={p['width']:g}{depth} ep={p['epochs']} "
            f"seed={p['seed']}{extra}")


class Grid:
    """One grid run: finds or creates the parent run and the cells' child runs, runs the cells."""

    def __init__(self, name: str, cells: List[Dict[str, Any]], experiment: str,
                 backup_root: Path, backend: str = "local", backend_config: str = ""):
        import mlflow

        if backend not in BACKENDS:
            raise SystemExit(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend == "kubernetes" and not backend_config:
            raise SystemExit("backend kubernetes needs --backend_config (MLflow's kubernetes "
                             "backend JSON: kube-context, repository-uri, kube-job-template-path)")
        if backend == "ray":
            raise SystemExit("backend ray is not available yet; use local or kubernetes")
        self.name, self.cells = name, cells
        self.keys = [cell_key(c) for c in cells]
        self.backend, self.backend_config = backend, backend_config
        self.backup_root = backup_root
        self.client = mlflow.MlflowClient()
        own = os.environ.get("MLFLOW_RUN_ID")
        if own and not experiment:  # `mlflow run -e grid`: the grid lives where MLflow put it
            self.experiment_id = self.client.get_run(own).info.experiment_id
        else:
            self.experiment_id = mlflow.set_experiment(experiment or f"cna_tf-{name}"
                                                       ).experiment_id
        self.tracking_uri = mlflow.get_tracking_uri()
        self.parent_id: Optional[str] = None

    # -- runs ---------------------------------------------------------------------------------
    def open_parent(self) -> str:
        """Starts the grid's parent run: the one an earlier attempt created, or a new one.

        Under ``mlflow run -e grid`` MLflow has made a run for this process (``MLFLOW_RUN_ID``):
        it becomes the parent of a new grid; when resuming, it is tagged as an attempt pointing
        at the parent. Either way it gets tag ``cna_tf.grid_run_id``.
        """
        import mlflow

        gk = grid_key(self.keys)
        own = os.environ.pop("MLFLOW_RUN_ID", "") or None
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{TAG}grid_key` = '{gk}' and tags.`{TAG}role` = 'grid'",
            max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            run = mlflow.start_run(run_id=found[0].info.run_id)
            print(f"resuming grid run {run.info.run_id} ({self.name}, {len(self.cells)} cells)")
        else:
            run = mlflow.start_run(run_id=own, run_name=None if own else f"grid-{self.name}")
            mlflow.set_tags({TAG + "grid_key": gk, TAG + "role": "grid", TAG + "config": self.name})
            mlflow.log_params({"config": self.name, "cells": len(self.cells),
                               "backend": self.backend})
            print(f"grid run {run.info.run_id} ({self.name}, {len(self.cells)} cells)")
        self.parent_id = run.info.run_id
        mlflow.set_tag(TAG + "grid_run_id", self.parent_id)
        if own and own != self.parent_id:
            self.client.set_tag(own, TAG + "role", "grid-attempt")
            self.client.set_tag(own, TAG + "grid_run_id", self.parent_id)
        return self.parent_id

    def children(self) -> Dict[str, List[Any]]:
        """Child runs of the parent by cell key (active runs only; deleted ones are gone)."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
            max_results=50_000)
        by_key: Dict[str, List[Any]] = {}
        for r in runs:
            by_key.setdefault(r.data.tags.get(TAG + "cell_key", ""), []).append(r)
        return by_key

    def plan(self) -> Tuple[List[Tuple[Dict[str, Any], Optional[str]]], int]:
        """Cells still to train, each with the run id to resume (or None); and how many are done.

        Runs left RUNNING by a killed grid are marked KILLED first. A failed or killed cell is
        resumed in its own run when its backup exists; otherwise its runs are deleted.
        """
        by_key = self.children()
        todo, done = [], 0
        for p, key in zip(self.cells, self.keys):
            runs = by_key.get(key, [])
            if any(r.info.status == "FINISHED" for r in runs):
                done += 1
                for r in runs:  # a leftover duplicate of a finished cell
                    if r.info.status != "FINISHED":
                        self.client.delete_run(r.info.run_id)
                continue
            resume = None
            for r in runs:
                if r.info.status in ("RUNNING", "SCHEDULED"):
                    self.client.set_terminated(r.info.run_id, "KILLED")
                    self.client.set_tag(r.info.run_id, TAG + "failure",
                                        "killed: the grid stopped while this cell was running")
                if resume is None and self._has_backup(key):
                    resume = r.info.run_id
                else:
                    self.client.delete_run(r.info.run_id)
            todo.append((p, resume))
        return todo, done

    def _has_backup(self, key: str) -> bool:
        return (self.backup_root / key / "training_metadata.json").exists()

    # -- cells --------------------------------------------------------------------------------
    def run_cell(self, p: Dict[str, Any], resume: Optional[str]) -> Tuple[str, str]:
        """Trains one cell to the end; returns (run id, final status)."""
        if self.backend == "kubernetes":
            return self._run_cell_kubernetes(p)
        key = cell_key(p)
        if resume is None:
            run = self.client.create_run(self.experiment_id, run_name=f"{p['arch']}-{key[:8]}",
                                         tags={"mlflow.parentRunId": self.parent_id,
                                               TAG + "cell_key": key, TAG + "role": "train",
                                               "arch": p["arch"], "dataset": p["dataset"]})
            run_id = run.info.run_id
        else:
            run_id = resume
            self.client.update_run(run_id, status="RUNNING")
        env = dict(os.environ, MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                   MLFLOW_EXPERIMENT_ID=self.experiment_id, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, str(TRAIN), *cli_args(p), "--cell_key", key,
               "--parent_run_id", self.parent_id,
               "--backup_dir", str(self.backup_root / key)]
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "train.log"
            with open(log, "w") as f:
                rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(PROJECT_DIR))
            status = self.client.get_run(run_id).info.status
            if rc != 0:
                tail = log.read_text(errors="replace")[-3000:]
                if status in ("RUNNING", "SCHEDULED"):
                    self.client.set_terminated(run_id, "FAILED" if rc > 0 else "KILLED")
                    status = "FAILED" if rc > 0 else "KILLED"
                if TAG + "failure" not in self.client.get_run(run_id).data.tags:
                    reason = tail.strip().splitlines()[-1] if tail.strip() else f"exit code {rc}"
                    self.client.set_tag(run_id, TAG + "failure", reason[:5000])
            self.client.log_artifact(run_id, str(log), "logs")
        return run_id, status

    def _run_cell_kubernetes(self, p: Dict[str, Any]) -> Tuple[str, str]:
        """One cell as a Kubernetes job through MLflow Projects (the job tags itself a child)."""
        import mlflow.projects

        key = cell_key(p)
        params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in p.items()}
        params.update(cell_key=key, parent_run_id=self.parent_id)
        submitted = mlflow.projects.run(
            str(PROJECT_DIR), entry_point="train", parameters=params, backend="kubernetes",
            backend_config=self.backend_config, experiment_id=self.experiment_id,
            synchronous=False)
        submitted.wait()
        return submitted.run_id, submitted.get_status()

    def run(self, workers: int = 2) -> Dict[str, int]:
        """Runs the remaining cells; returns counts of finished and failed cells."""
        import mlflow

        self.open_parent()
        todo, done = self.plan()
        progress = Progress(len(self.cells), done)
        if done:
            print(f"{done} of {len(self.cells)} cells already finished: skipped", flush=True)
        failed: List[str] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(self._timed, p, resume): p for p, resume in todo}
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    run_id, status, seconds = fut.result()
                except Exception as e:  # noqa: BLE001 - one cell's error must not stop the grid
                    run_id, status, seconds = "-", f"ERROR {type(e).__name__}: {e}", 0.0
                if status != "FINISHED":
                    failed.append(f"{_label(p)} ({run_id}): {status}")
                progress.finished(_label(p), status.split()[0], seconds)
        counts = {"cells_finished": len(self.cells) - len(failed), "cells_failed": len(failed)}
        mlflow.log_metrics(counts)
        if failed:
            print("failed cells (re-run the grid to retry them):\n  " + "\n  ".join(failed))
        return counts

    def _timed(self, p, resume):
        t = time.time()
        run_id, status = self.run_cell(p, resume)
        return run_id, status, time.time() - t


def main(argv: Optional[List[str]] = None) -> str:
    import mlflow

    args = parse_args(argv)
    name, cells = load_config(args.config)
    if args.max_cells:
        cells = cells[:args.max_cells]
    backup_root = Path(args.backup_root or os.environ.get("CNA_TF_BACKUP_DIR", ".cna_backup"))
    grid = Grid(name, cells, args.experiment, backup_root.resolve(),
                args.backend, args.backend_config)
    t0 = time.time()
    try:
        counts = grid.run(args.workers)
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
    print(f"grid {grid.parent_id}: {counts['cells_finished']} finished, "
          f"{counts['cells_failed']} failed, in {_hms(time.time() - t0)}", flush=True)
    return grid.parent_id


if __name__ == "__main__":
    main()
