"""MLproject step `grid`: train every cell of a config, each as its own process and child run.

A parent run holds the grid (tag ``cna_tf.grid_key``: a hash of its cell keys). Each cell is a
child run (tags ``mlflow.parentRunId`` and ``cna_tf.cell_key``) trained by ``train.py`` in its
own process, ``workers`` at a time. Re-running the same grid resumes the same parent run: cells
that FINISHED are skipped, runs left RUNNING by a killed grid are marked KILLED, and failed or
killed cells are trained again in their own run (resumed from the cell's backup when one exists,
otherwise the old run is deleted and a new one started), so no cell is ever recorded twice.

This module keeps that bookkeeping (the parent run, the plan, each cell's run opened and closed);
how a cell's ``train.py`` runs is an executor's (`executors.py`): ``local`` (``train.py``
subprocesses on this machine), ``ray`` (the same ``train.py`` command as a Ray task per cell, on
a local Ray runtime or a cluster; see docs/scaling.md) and ``kubernetes`` (MLflow Projects'
kubernetes backend).

    python pipelines/grid.py --config demo --workers 2
    python pipelines/grid.py --config demo --backend ray                      # local Ray runtime
    python pipelines/grid.py --config paper --datasets mnist           # its MNIST rows, offline
    python pipelines/grid.py --config paper --backend ray --ray_address ray://head:10001 \
        --ray_gpus_per_cell 1
    python pipelines/grid.py --config paper --backend kubernetes --backend_config k8s.json
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup import has_backup  # noqa: E402
from cells import ConfigError, cell_key, cli_args, load_config, select  # noqa: E402
from executors import (FORWARD_ENV, KubernetesExecutor, LocalExecutor, RayExecutor,  # noqa: E402
                       require_ray)
from params import declared, log_launch, log_resolved, parse_float, parse_int  # noqa: E402

from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402

BACKENDS = ("local", "kubernetes", "ray")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo", help="demo, paper, or a YAML path")
    ap.add_argument("--workers", type=parse_int, default=2,
                    help="cells trained at once (local; ray with a local runtime: its CPUs are "
                    "workers x ray_cpus_per_cell)")
    ap.add_argument("--backend", default="local", help="local, ray or kubernetes")
    ap.add_argument("--backend_config", default="",
                    help="MLflow kubernetes backend config (JSON), passed through")
    ap.add_argument("--experiment", default="",
                    help="experiment name (default: the one `mlflow run` uses, else "
                    "cna_tf-<config>)")
    ap.add_argument("--backup_root", default="",
                    help="where cells keep resume state (default .cna_backup)")
    ap.add_argument("--datasets", default="",
                    help="only the cells of these datasets (comma-separated; empty: all), e.g. "
                    "mnist for the paper's grid where the data exists offline")
    ap.add_argument("--max_cells", type=parse_int, default=0,
                    help="only the first N cells (0: all)")
    ap.add_argument("--ray_address", default="",
                    help="ray: empty starts a local Ray runtime; 'auto' or 'ray://host:10001' "
                    "(or host:6379 on a cluster node) joins a cluster")
    ap.add_argument("--ray_cpus_per_cell", type=parse_float, default=1.0,
                    help="ray: CPUs per cell task")
    ap.add_argument("--ray_gpus_per_cell", type=parse_float, default=0.0,
                    help="ray: GPUs per cell task")
    ap.add_argument("--ray_max_retries", type=parse_int, default=3,
                    help="ray: times Ray retries a cell whose worker process or node died (a "
                    "training failure, i.e. train.py exiting non-zero, is never retried)")
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


def label(p: Dict[str, Any]) -> str:
    """A cell as the progress lines and the MLflow UI (its run name) show it."""
    extra = f" shuffle={p['label_shuffle']:g}" if p["label_shuffle"] else ""
    depth = f" depth={p['depth']}" if p["arch"] == "mlp" else ""
    return (f"{p['arch']}/{p['dataset']} w={p['width']:g}{depth} ep={p['epochs']} "
            f"seed={p['seed']}{extra}")


class Grid:
    """One grid run: finds or creates the parent run and the cells' child runs, runs the cells."""

    def __init__(self, name: str, cells: List[Dict[str, Any]], experiment: str,
                 backup_root: Path, backend: str = "local", backend_config: str = "",
                 ray_address: str = "", ray_cpus_per_cell: float = 1.0,
                 ray_gpus_per_cell: float = 0.0, ray_max_retries: int = 3):
        """Checks the backend's arguments and finds (or makes) the grid's experiment.

        Raises:
            ValueError: an unknown backend, kubernetes without ``backend_config``, ray without
                Ray installed or with negative resources; the message names the fix.
        """
        import mlflow

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend == "kubernetes" and not backend_config:
            raise ValueError("backend kubernetes needs --backend_config (MLflow's kubernetes "
                             "backend JSON: kube-context, repository-uri, kube-job-template-path)")
        if backend == "ray":
            try:
                require_ray()
            except ImportError as e:
                raise ValueError(str(e)) from None
            if ray_cpus_per_cell < 0 or ray_gpus_per_cell < 0 or ray_max_retries < -1:
                raise ValueError("ray_cpus_per_cell and ray_gpus_per_cell must be >= 0, "
                                 "ray_max_retries >= 0 (or -1: retry forever)")
        self.ray_address = (ray_address or "").strip()
        self.ray_cpus, self.ray_gpus = float(ray_cpus_per_cell), float(ray_gpus_per_cell)
        self.ray_max_retries = int(ray_max_retries)
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
        #: the grid step's declared parameters as given (logged when `mlflow run` did not)
        self.launch: Dict[str, Any] = {}

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
            run = mlflow.start_run(run_id=own)
            mlflow.set_tags({TAG + "grid_key": gk, TAG + "role": "grid", TAG + "config": self.name,
                             "mlflow.runName": f"grid-{self.name}"})
            resolved = {"config": self.name, "cells": len(self.cells),
                        "experiment": self.client.get_experiment(self.experiment_id).name}
            if self.backend == "ray":
                resolved["ray_address"] = self.ray_address or "local"
            if self.launch:  # run as a plain script: what `mlflow run` would have logged
                log_launch("grid", self.launch)
            log_resolved(resolved)
            print(f"grid run {run.info.run_id} ({self.name}, {len(self.cells)} cells)")
        self.parent_id = run.info.run_id
        mlflow.set_tag(TAG + "grid_run_id", self.parent_id)
        if own and own != self.parent_id:
            self.client.set_tag(own, "mlflow.runName", f"grid-{self.name} (attempt)")
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
                if resume is None and has_backup(self.backup_root / key, r.info.run_id):
                    resume = r.info.run_id
                else:
                    self.client.delete_run(r.info.run_id)
            todo.append((p, resume))
        return todo, done

    # -- cells --------------------------------------------------------------------------------
    def open_cell(self, p: Dict[str, Any], resume: Optional[str], status: str = "RUNNING") -> str:
        """The cell's child run, created here (the driver) once, or the one to resume."""
        key = cell_key(p)
        if resume is None:
            run = self.client.create_run(self.experiment_id, run_name=label(p),
                                         tags={"mlflow.parentRunId": self.parent_id,
                                               TAG + "cell_key": key, TAG + "role": "train",
                                               "arch": p["arch"], "dataset": p["dataset"]})
            run_id = run.info.run_id
            # the params `mlflow run . -e train -P ...` would log for this cell
            log_launch("train", p, run_id, self.client)
            if status != "RUNNING":
                self.client.update_run(run_id, status=status)
        else:
            run_id = resume
            self.client.update_run(run_id, status=status)
        return run_id

    def train_spec(self, p: Dict[str, Any], run_id: str) -> Tuple[List[str], Dict[str, str]]:
        """``train.py``'s arguments and environment for a cell's run: the same on every backend.

        ``MLFLOW_RUN_ID`` makes train.py log into (and resume) the run the grid created; the
        cell's backup directory makes it continue from its last completed epoch.
        """
        key = cell_key(p)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV)}
        env.update(MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                   MLFLOW_EXPERIMENT_ID=self.experiment_id, TF_CPP_MIN_LOG_LEVEL="3")
        args = [*cli_args(p), "--cell_key", key, "--parent_run_id", self.parent_id,
                "--backup_dir", str(self.backup_root / key)]
        return args, env

    def lock_path(self, p: Dict[str, Any]) -> str:
        """The cell's lock file, beside its backup directory (held while its train.py runs)."""
        return str(self.backup_root / f"{cell_key(p)}.lock")

    def close_cell(self, run_id: str, rc: Optional[int], log: str) -> str:
        """Records how the cell's train.py ended; returns the run's final status.

        ``rc`` None: it never ended (the Ray task was lost); ``log`` then gives the reason.
        A run train.py left RUNNING is FAILED (exit code > 0) or KILLED (a signal, or lost), with
        tag ``cna_tf.failure`` (the log's last line unless train.py set its own reason).
        """
        status = self.client.get_run(run_id).info.status
        if rc != 0:
            if status in ("RUNNING", "SCHEDULED"):
                status = "FAILED" if rc is not None and rc > 0 else "KILLED"
                self.client.set_terminated(run_id, status)
            if TAG + "failure" not in self.client.get_run(run_id).data.tags:
                tail = log[-3000:].strip()
                reason = tail.splitlines()[-1] if tail else f"exit code {rc}"
                self.client.set_tag(run_id, TAG + "failure", reason[:5000])
        if log:
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "train.log"
                path.write_text(log)
                self.client.log_artifact(run_id, str(path), "logs")
        return status

    def executor(self, workers: int) -> Union[LocalExecutor, RayExecutor]:
        """The backend's executor (`executors.py`), for ``workers`` cells at a time."""
        if self.backend == "ray":
            return RayExecutor(self.ray_address, self.ray_cpus, self.ray_gpus,
                               self.ray_max_retries, workers, self.tracking_uri)
        if self.backend == "kubernetes":
            return KubernetesExecutor(self.backend_config, workers)
        return LocalExecutor(workers)

    def run(self, workers: int = 2) -> Dict[str, int]:
        """Runs the remaining cells; returns counts of finished and failed cells.

        Raises:
            ConnectionError: backend ray could not reach or start Ray (before any run is made).
        """
        import mlflow

        failed: List[str] = []
        with self.executor(workers) as executor:  # ray connects here, before any run
            self.open_parent()
            todo, done = self.plan()
            progress = Progress(len(self.cells), done)
            if done:
                print(f"{done} of {len(self.cells)} cells already finished: skipped", flush=True)

            def cell_done(p: Dict[str, Any], run_id: str, status: str, seconds: float) -> None:
                if status != "FINISHED":
                    failed.append(f"{label(p)} ({run_id}): {status}")
                progress.finished(label(p), status.split()[0], seconds)

            executor.run(self, todo, cell_done)
        counts = {"cells_finished": len(self.cells) - len(failed), "cells_failed": len(failed)}
        mlflow.log_metrics(counts)
        if failed:
            print("failed cells (re-run the grid to retry them):\n  " + "\n  ".join(failed))
        return counts


def main(argv: Optional[List[str]] = None) -> str:
    """Runs the grid step; a bad config or backend, or an unreachable Ray, exits with one line."""
    import mlflow

    args = parse_args(argv)
    try:
        name, cells = load_config(args.config)
        cells = select(cells, args.datasets, f"config {name!r}")
        if args.max_cells:
            cells = cells[:args.max_cells]
        backup_root = Path(args.backup_root or os.environ.get("CNA_TF_BACKUP_DIR", ".cna_backup"))
        grid = Grid(name, cells, args.experiment, backup_root.resolve(),
                    args.backend, args.backend_config, ray_address=args.ray_address,
                    ray_cpus_per_cell=args.ray_cpus_per_cell,
                    ray_gpus_per_cell=args.ray_gpus_per_cell,
                    ray_max_retries=args.ray_max_retries)
    except (ConfigError, ValueError) as e:
        raise SystemExit(str(e)) from None
    grid.launch = {k: getattr(args, k) for k in declared("grid")}
    t0 = time.time()
    try:
        counts = grid.run(args.workers)
    except ConnectionError as e:  # ray: nothing was started
        raise SystemExit(str(e)) from None
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
    print(f"grid {grid.parent_id}: {counts['cells_finished']} finished, "
          f"{counts['cells_failed']} failed, in {_hms(time.time() - t0)}", flush=True)
    return grid.parent_id


if __name__ == "__main__":
    main()
