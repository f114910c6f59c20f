"""Shared helpers of the bench/ scripts: timing in one process, machine description, results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

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
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def median(v: List[float]) -> float:
    return statistics.median(v)


def save(name: str, payload: Dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{payload['machine']['backend']}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def table(rows: List[List[object]], header: List[str]) -> str:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
