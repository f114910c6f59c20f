"""Demo grid wall time with 1 and with 2 workers (scaling ratio), each in a fresh store.

Each measurement runs the grid step (`pipelines/grid.py`, local backend) as a subprocess into a
throwaway sqlite store and backup folder, so nothing is resumed or skipped between them. The
worker counts alternate (1, 2, 1, 2, ...) so slow drift of a shared machine hits both alike.

Run: .venv/bin/python bench/bench_grid.py [--config demo] [--rounds 1] [--quick] [--out DIR]

``--smoke`` trains the config's first 2 cells shrunk (`SMOKE`: 1 epoch on 200 images): the
same grid step and worker counts, in seconds.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import add_common_args, load, machine, median, save, table  # noqa: E402

GRID = HERE.parent / "pipelines" / "grid.py"
#: what ``--smoke`` changes in the config's defaults (sizes only)
SMOKE = {"epochs": 1, "snapshot_every": 1, "n_train": 200, "n_test": 100, "max_samples": 100,
         "save_model": False}


def smoke_config(config: str, folder: str) -> str:
    """``config`` with `SMOKE` in its defaults, written to ``folder``; its path."""
    import yaml

    sys.path.insert(0, str(HERE.parent / "pipelines"))
    from cells import CONFIG_DIR

    path = Path(config) if config.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{config}.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("defaults", {}).update(SMOKE)
    out = Path(folder) / path.name
    out.write_text(yaml.safe_dump(data))
    return str(out)


def time_grid(config: str, workers: int, max_cells: int) -> dict:
    """Runs the grid once with ``workers`` into a fresh store; returns wall seconds and counts."""
    with tempfile.TemporaryDirectory(prefix="cna_bench_grid_") as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
                   TF_CPP_MIN_LOG_LEVEL="3", MLFLOW_ENABLE_ASYNC_LOGGING="false")
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(k, None)
        cmd = [sys.executable, str(GRID), "--config", config, "--workers", str(workers),
               "--experiment", f"bench-grid-{workers}", "--backup_root", f"{tmp}/backup",
               "--max_cells", str(max_cells)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"grid with {workers} worker(s) failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    m = re.search(r"(\d+) finished, (\d+) failed", proc.stdout)
    if not m:
        raise RuntimeError(f"grid output has no summary line:\n{proc.stdout[-2000:]}")
    return {"workers": workers, "seconds": seconds, "finished": int(m.group(1)),
            "failed": int(m.group(2))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo", help="grid config (demo, paper or a YAML path)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating (1 worker, 2 workers) pairs")
    ap.add_argument("--max-cells", type=int, default=None, help="first N cells (quick: 2; 0: all)")
    add_common_args(ap)
    args = ap.parse_args()
    max_cells = args.max_cells if args.max_cells is not None else (2 if args.quick else 0)
    load_before = load()
    runs = []
    smoke_dir = tempfile.TemporaryDirectory(prefix="cna_bench_grid_smoke_")
    config = smoke_config(args.config, smoke_dir.name) if args.smoke else args.config
    for _ in range(args.rounds):
        for workers in (1, 2):
            r = time_grid(config, workers, max_cells)
            print(f"workers {workers}: {r['seconds']:.1f} s ({r['finished']} cells finished, "
                  f"{r['failed']} failed)", flush=True)
            runs.append(r)
    t1 = median([r["seconds"] for r in runs if r["workers"] == 1])
    t2 = median([r["seconds"] for r in runs if r["workers"] == 2])
    speedup = t1 / t2
    cells = runs[0]["finished"] + runs[0]["failed"]
    print(table([["1", cells, t1, 1.0], ["2", cells, t2, speedup]],
                ["workers", "cells", "wall s (median)", "speed-up"]))
    print(f"2-worker speed-up {speedup:.2f}x on {os.cpu_count()} CPUs "
          f"(parallel efficiency {speedup / 2:.0%})")
    smoke_dir.cleanup()
    path = save("grid", {"machine": machine(), "config": args.config, "max_cells": max_cells,
                         "cells": cells, "runs": runs, "seconds_1_worker": t1,
                         "seconds_2_workers": t2, "speedup": speedup,
                         "efficiency": speedup / 2, "met": all(r["failed"] == 0 for r in runs),
                         "target": "report the 1 vs 2 worker ratio (no numeric target)",
                         "quick": args.quick, "smoke": args.smoke,
                         "smoke_defaults": SMOKE if args.smoke else None,
                         "load_before": load_before,
                         "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
