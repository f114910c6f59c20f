"""Robust sign-error (SPEC §10) on the gap study's shape: 96 networks x 15 measures in well
under a second (target <= 0.5 s), against the seed bootstrap (SPEC §9, 1,000 replicates) on the
same networks in the same process.

Data: a complete grid of 2^5 combinations x 3 seeds (the gap study's 96 MLPs), a gap that
depends on every axis plus seed noise, 15 measures (the gap plus noise of several sizes, pure
noise, ties, a NaN). Times are medians of interleaved repeats in one process.

Run: .venv/bin/python bench/bench_ranking.py [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from cna_tf import ranking  # noqa: E402
from common import add_common_args, interleaved, load, machine, median, save, table  # noqa: E402

AXES = ("depth", "width", "n_train", "label_shuffle", "weight_decay")


def gap_study_shape(seeds: int = 3, measures: int = 15, seed: int = 0):
    """(measures, gap, hparams) of 2^5 combinations x ``seeds`` networks."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*([0, 1] for _ in AXES), range(seeds)))
    hp = {a: [c[k] for c in combos] for k, a in enumerate(AXES + ("seed",))}
    effect = np.array([0.005, -0.02, -0.03, 0.08, -0.001])
    gap = 0.04 + np.array([c[:5] for c in combos]) @ effect + 0.003 * rng.standard_normal(
        len(combos))
    out = {}
    for k in range(measures):
        if k % 3 == 0:
            out[f"m{k}"] = gap + (0.01 * (k + 1)) * rng.standard_normal(len(gap))
        elif k % 3 == 1:
            out[f"m{k}"] = rng.standard_normal(len(gap))
        else:
            out[f"m{k}"] = np.round(3 * rng.random(len(gap)))
    out["m1"][5] = np.nan
    return out, gap, hp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="default 20 (quick 3; smoke 1)")
    add_common_args(ap)
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.smoke else 3 if args.quick else 20)
    replicates = 20 if args.smoke else 100 if args.quick else 1000
    load_before = load()
    measures, gap, hp = gap_study_shape()
    t = interleaved({
        "sign_errors": lambda: ranking.sign_errors(measures, gap, hp),
        "sign_errors_no_filter": lambda: ranking.sign_errors(measures, gap, hp,
                                                             noise_filter=False),
        "bootstrap": lambda: ranking.bootstrap(measures, gap, hp, replicates=replicates)},
        repeats=repeats)
    res = ranking.sign_errors(measures, gap, hp)
    results = {k: {"seconds": median(v), "all_seconds": v} for k, v in t.items()}
    rows = [[k, len(gap), len(measures), median(v)] for k, v in t.items()]
    print(table(rows, ["operation", "networks", "measures", "seconds (median)"]))
    s = results["sign_errors"]["seconds"]
    ratio = s / results["bootstrap"]["seconds"]
    met = s <= 0.5
    print(f"sign_errors on {len(gap)} networks x {len(measures)} measures: {s:.4f} s "
          f"({len(res.environments)} environments; target <= 0.5 s): "
          f"{'met' if met else 'MISSED'}; {ratio:.3f} x the seed bootstrap's "
          f"{replicates} replicates")
    path = save("ranking", {"machine": machine(), "networks": len(gap),
                            "measures": len(measures), "environments": len(res.environments),
                            "replicates": replicates, "repeats": repeats, "results": results,
                            "sign_errors_s": s, "ratio_to_bootstrap": ratio,
                            "target": "<= 0.5 s", "met": met, "quick": args.quick,
                            "smoke": args.smoke, "load_before": load_before,
                            "load_after": load()}, out=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
