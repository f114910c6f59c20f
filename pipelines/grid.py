"""MLproject step `grid`: train every cell of a config, each as its own process and child run.

A parent run holds the grid (tag ``cna_tf.grid_key``: a hash of its cell keys). Each cell is a
child run (tags ``mlflow.parentRunId`` and ``cna_tf.cell_key``) trained by ``train.py`` in its
own process, ``workers`` at a time. Re-running the same grid resumes the same parent run: cells
that FINISHED are skipped, runs left RUNNING by a killed grid are marked KILLED, and failed or
killed cells are trained again in their own run (resumed from the cell's backup when one exists,
otherwise the old run is deleted and a new one started), so no cell is ever recorded twice.

Before anything is trained the grid looks up every cell's dataset (`data_status`, file lookups
only); when any is missing it stops with one message: the missing datasets, how many cells each
holds, and the fetch command (``--datasets`` runs only the cells whose data is here). With
``--dry_run true`` it prints the plan instead of training: the cells, each dataset's status, and
the cells already finished in the store.

This module keeps that bookkeeping (the parent run, the plan, each cell's run opened and closed);
how a cell's ``train.py`` runs is an executor's (`executors.py`): ``local`` (``train.py``
subprocesses on this machine), ``ray`` (the same ``train.py`` command as a Ray task per cell, on
a local Ray runtime or a cluster; see docs/scaling.md) and ``kubernetes`` (MLflow Projects'
kubernetes backend).

    python pipelines/grid.py --config demo --workers 2
    python pipelines/grid.py --config demo --backend ray                      # local Ray runtime
    python pipelines/grid.py --config paper --datasets mnist           # its MNIST rows, offline
    python pipelines/grid.py --config paper --dry_run true    # the plan: cells, data, finished
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
from params import (declared, log_launch, log_resolved, parse_bool, parse_float,  # noqa: E402
                    parse_int)

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
    ap.add_argument("--dry_run", type=parse_bool, default=False,
                    help="print the plan (the cells, each dataset's data status, the cells "
                    "already finished in the store) and train nothing")
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


def find_parent(client, experiment_id: str, keys: List[str]) -> Optional[str]:
    """The id of the grid run of these cell keys in the experiment (the first made), or None."""
    found = client.search_runs(
        [experiment_id], f"tags.`{TAG}grid_key` = '{grid_key(keys)}' and "
        f"tags.`{TAG}role` = 'grid'", max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


def children(client, experiment_id: str, parent_id: str) -> Dict[str, List[Any]]:
    """A grid run's child runs by cell key (active runs only; deleted ones are gone)."""
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=50_000)
    by_key: Dict[str, List[Any]] = {}
    for r in runs:
        by_key.setdefault(r.data.tags.get(TAG + "cell_key", ""), []).append(r)
    return by_key


# -- data: looked up before anything is trained ---------------------------------------------
def _location_options(p: Dict[str, Any]) -> Dict[str, Any]:
    import json

    options = json.loads(p["data_options"]) if p["data_options"] else {}
    return {k: v for k, v in options.items() if k in ("cache_dir", "data_dir", "label_mode")}


def data_status(cells: List[Dict[str, Any]]) -> Dict[str, Tuple[Optional[str], int]]:
    """Each dataset of the cells, in config order: where it is (None: missing) and its cells.

    File lookups only (`cna_tf.data.loaders.locate`); a dataset whose cells name different
    folders (``data_options``) is missing when any of them lacks it.
    """
    from cna_tf.data.loaders import locate

    out: Dict[str, Tuple[Optional[str], int]] = {}
    seen: Dict[Tuple[str, str], Optional[str]] = {}
    for p in cells:
        options = _location_options(p)
        key = (p["dataset"], repr(sorted(options.items())))
        if key not in seen:
            seen[key] = locate(p["dataset"], **options)
        where, n = out.get(p["dataset"], ("", 0))
        out[p["dataset"]] = (None if where is None or seen[key] is None else seen[key], n + 1)
    return out


def fetch_hint(missing: List[str]) -> str:
    """How to get the missing datasets: the fetch command, and imagenet32's manual download."""
    from cna_tf.data.fetch import FETCHABLE, fetch_command

    fetchable = [d for d in missing if d in FETCHABLE]
    lines = []
    if fetchable:
        lines.append(f"fetch them: {fetch_command(fetchable)}")
    if "imagenet32" in missing:
        lines.append("imagenet32 needs an ImageNet account: `python -m cna_tf.data.fetch "
                     "imagenet32` says what to download and where to put it")
    other = [d for d in missing if d not in fetchable and d != "imagenet32"]
    if other:
        lines.append(f"put these files in place: {', '.join(other)}")
    return "\n".join(lines)


def missing_message(name: str, status: Dict[str, Tuple[Optional[str], int]]) -> str:
    """The grid's one message when datasets are missing (see `data_status`)."""
    missing = [d for d, (where, _) in status.items() if where is None]
    here = [d for d, (where, _) in status.items() if where is not None]
    total = sum(n for _, n in status.values())
    lines = [f"grid {name!r}: {len(missing)} of its {len(status)} datasets are not on this "
             f"machine; nothing was trained:"]
    lines += [f"  {d}: {status[d][1]} of {total} cells" for d in missing]
    lines.append(fetch_hint(missing))
    if here:
        lines.append(f"or train only the cells whose data is here: -P datasets={','.join(here)} "
                     f"(mlflow run) or --datasets {','.join(here)}")
    return "\n".join(lines)


def dry_run(name: str, cells: List[Dict[str, Any]], experiment: str,
            status: Dict[str, Tuple[Optional[str], int]]) -> Dict[str, Any]:
    """Prints the plan; trains nothing, creates no run (beyond the one `mlflow run` made).

    The finished cells are those a real run would skip: FINISHED child runs of the grid run of
    these cells (found as `Grid.open_parent` finds it) in the experiment the grid would use.

    Returns:
        ``{"cells", "finished", "missing", "experiment", "grid_run_id"}`` for callers and tests.
    """
    import mlflow

    client = mlflow.MlflowClient()
    keys = [cell_key(c) for c in cells]
    own = os.environ.get("MLFLOW_RUN_ID")
    exp_name = experiment or f"cna_tf-{name}"
    if own and not experiment:
        exp = client.get_experiment(client.get_run(own).info.experiment_id)
    else:
        exp = client.get_experiment_by_name(exp_name)
    parent = find_parent(client, exp.experiment_id, keys) if exp is not None else None
    done = set()
    if parent is not None:
        done = {k for k, runs in children(client, exp.experiment_id, parent).items()
                if any(r.info.status == "FINISHED" for r in runs)}
    if own:
        client.set_tag(own, "mlflow.runName", f"grid-{name} (dry run)")
        client.set_tag(own, TAG + "role", "grid-dry-run")
    print(f"dry run of grid {name!r}: {len(cells)} cells; nothing is trained", flush=True)
    width = len(str(len(cells)))
    for i, (p, k) in enumerate(zip(cells, keys), 1):
        state = "finished" if k in done else (
            "to train" if status[p["dataset"]][0] is not None else "no data")
        print(f"  {i:>{width}}. {state:8s}  {label(p)}  [{k}]")
    print("data:")
    for d, (where, n) in status.items():
        print(f"  {d}: {n} cell{'s' * (n != 1)}, "
              + (f"here: {where}" if where is not None else "MISSING"))
    missing = [d for d, (where, _) in status.items() if where is None]
    if missing:
        print("  " + fetch_hint(missing).replace("\n", "\n  "))
    if exp is None:
        store = f"no experiment {exp_name!r} in the store yet"
    elif parent is None:
        store = f"no run of this grid in experiment {exp.name!r} yet"
    else:
        store = f"grid run {parent} in experiment {exp.name!r}"
    print(f"store ({mlflow.get_tracking_uri()}): {store}; {len(done & set(keys))} of "
          f"{len(cells)} cells finished (a real run skips them), {len(cells) - len(done)} to "
          "train", flush=True)
    return {"cells": len(cells), "finished": len(done), "missing": missing,
            "experiment": exp.name if exp is not None else exp_name, "grid_run_id": parent}


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
        found = find_parent(self.client, self.experiment_id, self.keys)
        if found:
            run = mlflow.start_run(run_id=found)
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
        return children(self.client, self.experiment_id, self.parent_id)

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
        status = data_status(cells)
        if args.dry_run:
            dry_run(name, cells, args.experiment, status)
            return ""
        if any(where is None for where, _ in status.values()):
            remote = args.backend == "kubernetes" or (args.backend == "ray" and
                                                      args.ray_address.strip())
            if not remote:
                raise SystemExit(missing_message(name, status))
            # the cells run on other machines, whose disks this one cannot see
            print("warning: " + missing_message(name, status).replace(
                "nothing was trained", f"the {args.backend} workers must have them"),
                file=sys.stderr, flush=True)
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
