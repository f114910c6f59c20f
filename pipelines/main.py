"""MLproject entry point `main`: the grid, then its comparison, chained by run id.

    mlflow run . --env-manager local -P config=demo -P workers=2
    mlflow run . --env-manager local -P config=paper -P dry_run=true   # the grid's plan only

The grid step checks its data first and stops, naming what to fetch, when any is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from params import (PROJECT_DIR, declared, log_launch, parse_bool, parse_float,  # noqa: E402
                    parse_int)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--workers", type=parse_int, default=2)
    ap.add_argument("--backend", default="local")
    ap.add_argument("--backend_config", default="")
    # Passed through to the grid step (backend=ray), see pipelines/grid.py.
    ap.add_argument("--ray_address", default="")
    ap.add_argument("--ray_cpus_per_cell", type=parse_float, default=1.0)
    ap.add_argument("--ray_gpus_per_cell", type=parse_float, default=0.0)
    ap.add_argument("--ray_max_retries", type=parse_int, default=3)
    ap.add_argument("--max_cells", type=parse_int, default=0)
    ap.add_argument("--datasets", default="", help="only the cells of these datasets")
    ap.add_argument("--dry_run", type=parse_bool, default=False,
                    help="the grid step prints its plan and trains nothing; no comparison")
    return ap.parse_args(argv)


def grid_parameters(args: argparse.Namespace) -> dict:
    """The grid entry point's parameters from main's arguments."""
    return {"config": args.config, "workers": args.workers, "backend": args.backend,
            "backend_config": args.backend_config, "ray_address": args.ray_address,
            "ray_cpus_per_cell": args.ray_cpus_per_cell,
            "ray_gpus_per_cell": args.ray_gpus_per_cell,
            "ray_max_retries": args.ray_max_retries, "max_cells": args.max_cells,
            "datasets": args.datasets, "dry_run": str(args.dry_run).lower()}


def main(argv: Optional[List[str]] = None) -> None:
    import mlflow

    args = parse_args(argv)
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        log_launch("main", {k: getattr(args, k) for k in declared("main")})
        experiment_id = run.info.experiment_id
        try:
            grid = mlflow.projects.run(
                str(PROJECT_DIR), entry_point="grid", env_manager="local",
                experiment_id=experiment_id, parameters=grid_parameters(args))
        except mlflow.exceptions.ExecutionException as e:  # its own message is printed above
            raise SystemExit(f"main: the grid step failed, so nothing was compared ({e})"
                             ) from None
        if args.dry_run:
            return
        grid_run_id = client.get_run(grid.run_id).data.tags["cna_tf.grid_run_id"]
        mlflow.set_tag("cna_tf.grid_run_id", grid_run_id)
        compare = mlflow.projects.run(str(PROJECT_DIR), entry_point="compare", env_manager="local",
                                      experiment_id=experiment_id,
                                      parameters={"grid_run_id": grid_run_id})
        mlflow.set_tag("cna_tf.compare_run_id", compare.run_id)


if __name__ == "__main__":
    main()
