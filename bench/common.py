"""Shared helpers of the bench/ scripts: timing in one process, machine description, results."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> Dict[str, object]:
    import keras
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "keras": keras.__version__,
            "backend": keras.backend.backend()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), "?")
    except OSError:
        pass
    try:
        import jax
        info["devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001 - jax is optional
        pass
    return info


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
                ) -> Dict[str, List[float]]:
    """Times each function ``repeats`` times, alternating them so drift affects all alike."""
    return interleaved_cpu(fns, repeats=repeats, warmup=warmup)[0]


def load() -> Dict[str, float]:
    """Load averages (1, 5, 15 min) and the CPU count, to tell a busy machine from a quiet one."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return {}
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cpus": os.cpu_count()}


def rss_mb() -> float:
    """Current resident set size of this process (MiB), from /proc (Linux)."""
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Resets this process's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0).

    Returns False where that is not possible; `peak_rss_mb` then reports the process's peak
    since it started (``ru_maxrss``), which is why each memory case runs in a fresh process.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """RSS high-water mark (MiB): VmHWM since the last `reset_peak_rss`, else ru_maxrss."""
    kb = _status_kb("VmHWM")
    if kb:
        return kb / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kb(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class _Smoke(argparse.Action):
    """``--smoke``: ``--quick`` with the smallest sizes (sets both flags)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.smoke = namespace.quick = True


def add_common_args(ap) -> None:
    """``--quick`` (small sizes), ``--smoke`` and ``--out`` (results folder) of every script.

    ``--smoke`` is ``--quick`` at the smallest sizes that still run every measurement once
    (tests/test_bench_smoke.py runs `make bench` with it): its figures say nothing about
    performance. A script without a smaller size than ``--quick``'s runs ``--quick``'s.
    """
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--smoke", action=_Smoke, nargs=0, default=False,
                    help="--quick at the smallest sizes: every measurement once, for tests")
    ap.add_argument("--out", default=None, help=f"results folder (default {RESULTS})")


def interleaved_cpu(fns: Dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
                    ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """`interleaved` that also returns the process CPU time of each call (all threads).

    CPU seconds count the work this process did, so they move much less than wall seconds
    when other processes share the cores (they still include threads spinning while waiting).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: Dict[str, List[float]] = {k: [] for k in fns}
    cpu: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - t)
    return wall, cpu


def parse_args(ap, worker: Optional[Callable[..., object]] = None):
    """`add_common_args`, then the parsed arguments.

    With ``worker``, the script is also its own memory worker (the other end of `run_worker`):
    started as ``--mem-worker JSON``, it runs ``worker(*JSON)``, prints the result as JSON and
    exits, so the measurement happens in a process of its own.
    """
    import sys

    add_common_args(ap)
    if worker is not None:
        ap.add_argument("--mem-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if worker is not None and args.mem_worker:
        print(json.dumps(worker(*json.loads(args.mem_worker))))
        sys.exit(0)
    return args


def run_worker(script: str, args: List[object]) -> Dict[str, object]:
    """Runs ``python SCRIPT --mem-worker JSON(args)`` in a fresh process (so its peak RSS is its
    own) and returns the last JSON object it printed.

    Raises:
        RuntimeError: the worker failed or printed no JSON (its stderr's end is in the message).
    """
    import subprocess
    import sys

    cmd = [sys.executable, os.path.abspath(script), "--mem-worker", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def median(v: List[float]) -> float:
    return statistics.median(v)


def save(name: str, payload: Dict[str, object], out: Optional[str] = None) -> Path:
    """Writes ``<out or bench/results>/<name>_<backend>.json``."""
    folder = Path(out) if out else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{payload['machine']['backend']}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def table(rows: List[List[object]], header: List[str]) -> str:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
