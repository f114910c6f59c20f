"""alpha: vectorized counting vs a per-image np.histogram loop (target >= 20x).

Run: .venv/bin/python bench/bench_alpha.py [--n 50000] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import cna_tf  # noqa: E402
from common import add_common_args, interleaved, load, machine, median, save, table  # noqa: E402


def loop_alpha(x: np.ndarray, bins: int = 100) -> np.ndarray:
    """The usual way: one np.histogram call per image."""
    out = np.empty(len(x))
    for i, img in enumerate(x):
        counts, _ = np.histogram(img, bins=bins, range=(0, 255))
        p = counts[counts > 0] / img.size
        out[i] = -(p * np.log(p)).sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=None, help="images (default 50,000; quick 2,000)")
    ap.add_argument("--repeats", type=int, default=3)
    add_common_args(ap)
    args = ap.parse_args()
    if args.n is None:
        args.n = 2_000 if args.quick else 50_000
    load_before = load()
    x = np.random.default_rng(0).integers(0, 256, size=(args.n, 32, 32, 3), dtype=np.uint8)
    t = interleaved({"vectorized": lambda: cna_tf.alpha(x),
                     "loop": lambda: loop_alpha(x)}, repeats=args.repeats, warmup=0)
    vec, loop = median(t["vectorized"]), median(t["loop"])
    xf = x[:10_000].astype(np.float32) / 255
    tf0 = time.perf_counter()
    cna_tf.alpha(xf, value_range=(0.0, 1.0))
    t_float = time.perf_counter() - tf0
    rows = [["alpha uint8 vectorized", args.n, vec, loop / vec],
            ["np.histogram loop", args.n, loop, 1.0],
            ["alpha float32 vectorized", 10_000, t_float, float("nan")]]
    print(table(rows, ["method", "images", "seconds", "speed-up"]))
    print(f"speed-up {loop / vec:.1f}x (target >= 20x)")
    path = save("alpha", {"machine": machine(), "n": args.n, "shape": [32, 32, 3],
                          "vectorized_s": vec, "loop_s": loop, "speedup": loop / vec,
                          "float32_10k_s": t_float, "target": ">= 20x",
                          "met": loop / vec >= 20, "quick": args.quick,
                          "smoke": args.smoke,
                          "load_before": load_before, "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
