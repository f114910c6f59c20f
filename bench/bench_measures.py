"""The measures on plain arrays: cna_area on 10,000 + 10,000 points (target <= 0.5 s), beta, cna.

Data: alpha uniform in [0, 1]; beta = a smooth function of alpha plus noise, the test set with a
different slope and a wiggle, so the smoothed curves cross several times and the polygon repair
(shapely.make_valid) has lobes to split ("crossing"), next to a plain shifted pair ("shifted").
Times are medians of repeats in one process.

Run: .venv/bin/python bench/bench_measures.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from cna_tf import measures  # noqa: E402
from common import add_common_args, interleaved, load, machine, median, save, table  # noqa: E402


def points(n: int, kind: str, seed: int):
    rng = np.random.default_rng(seed)
    a_tr, a_te = rng.random(n), rng.random(n)
    b_tr = 0.6 * a_tr + 0.05 * rng.standard_normal(n)
    if kind == "shifted":
        b_te = 0.6 * a_te + 0.1 + 0.05 * rng.standard_normal(n)
    else:
        b_te = 0.5 * a_te + 0.08 * np.sin(12 * a_te) + 0.05 + 0.05 * rng.standard_normal(n)
    return a_tr, b_tr, a_te, b_te


def timed(fn, repeats: int):
    fn()  # warm-up (imports, caches)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return median(t), t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="points per split (default 10,000)")
    ap.add_argument("--repeats", type=int, default=None, help="default 20 (quick 3)")
    add_common_args(ap)
    args = ap.parse_args()
    n = args.n or (2_000 if args.quick else 10_000)
    repeats = args.repeats or (3 if args.quick else 20)
    load_before = load()
    rows, results = [], {}

    for kind in ("crossing", "shifted"):
        a_tr, b_tr, a_te, b_te = points(n, kind, 0)
        area = measures.cna_area(a_tr, b_tr, a_te, b_te)
        t = interleaved({
            "cna_area": lambda: measures.cna_area(a_tr, b_tr, a_te, b_te),
            "curves": lambda: measures.curves(a_tr, b_tr, a_te, b_te)}, repeats=repeats)
        for op in ("cna_area", "curves"):
            key = f"{op}/{kind}"
            results[key] = {"seconds": median(t[op]), "all_seconds": t[op], "n": [n, n]}
            rows.append([f"{op} ({kind})", f"{n}+{n}", median(t[op])])
        results[f"cna_area/{kind}"]["area"] = area

    rng = np.random.default_rng(1)
    for layers in (5, 20, 100):
        z = rng.standard_normal((n, layers)).astype(np.float32)
        s, t = timed(lambda: measures.beta(z), repeats)
        results[f"beta/L{layers}"] = {"seconds": s, "all_seconds": t, "n": n, "layers": layers}
        rows.append([f"beta (n, L={layers})", n, s])
    a, b = points(n, "crossing", 2)[:2]
    for method in ("pearson", "spearman", "kendall"):
        s, t = timed(lambda: measures.cna(a, b, method=method), repeats)
        results[f"cna/{method}"] = {"seconds": s, "all_seconds": t, "n": n}
        rows.append([f"cna {method}", n, s])

    print(table(rows, ["operation", "points", "seconds (median)"]))
    worst = max(results[f"cna_area/{k}"]["seconds"] for k in ("crossing", "shifted"))
    met = worst <= 0.5
    print(f"cna_area on {n}+{n} points: {worst:.4f} s (target <= 0.5 s): "
          f"{'met' if met else 'MISSED'}")
    path = save("measures", {"machine": machine(), "n": n, "repeats": repeats,
                             "results": results, "cna_area_s": worst, "target": "<= 0.5 s",
                             "met": met, "quick": args.quick, "smoke": args.smoke,
                             "load_before": load_before,
                             "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
