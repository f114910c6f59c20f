"""How close a re-run of a grid came to an earlier run of the same cells: two `compare`
``networks.csv`` tables matched network by network on ``cell_key`` (the cell's hyperparameters
and seed), every column they share compared (no MLflow, no retraining).

    python experiments/rerun_check.py OLD.csv NEW.csv

Prints, for each shared numeric column: the networks compared, how many are equal to the last
digit, the largest and the median absolute difference, and the largest relative one; then the
networks whose ``gen_gap`` moved most. Networks in only one table are counted.
"""
from __future__ import annotations

import argparse
import csv
import math
from typing import Dict, List

import numpy as np

#: the columns that say what a network is, not what was measured
KEYS = ("run_id", "cell_key", "arch", "dataset", "width", "depth", "epochs", "lr", "momentum",
        "batch_size", "label_shuffle", "seed", "n_train", "weight_decay", "dropout", "test_size")
#: what the check is about, first in its table
FIRST = ("gen_gap", "loss_gap", "train_acc", "test_acc", "epochs_trained")


def read(path: str) -> Dict[str, Dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["cell_key"]: r for r in rows}


def number(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--top", type=int, default=5, help="networks listed by gen_gap change")
    args = ap.parse_args(argv)
    old, new = read(args.old), read(args.new)
    both = sorted(set(old) & set(new))
    print(f"{len(both)} networks in both; only in old: {len(set(old) - set(new))}, only in "
          f"new: {len(set(new) - set(old))}")
    shared = [c for c in next(iter(old.values())) if c in next(iter(new.values()))
              and c not in KEYS]
    shared = [c for c in FIRST if c in shared] + [c for c in shared if c not in FIRST]
    print("| column | compared | equal | max abs diff | median abs diff | max rel diff |")
    print("|---|---|---|---|---|---|")
    for c in shared:
        a = np.array([number(old[k][c]) for k in both])
        b = np.array([number(new[k][c]) for k in both])
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            continue
        d = np.abs(a[ok] - b[ok])
        rel = d / np.maximum(np.abs(a[ok]), 1e-12)
        nan_moved = int(np.sum(np.isfinite(a) != np.isfinite(b)))
        extra = f" ({nan_moved} finite in one only)" if nan_moved else ""
        print(f"| {c} | {int(ok.sum())}{extra} | {int(np.sum(d == 0))} | {d.max():.4g} | "
              f"{np.median(d):.4g} | {rel.max():.3g} |")
    moved = sorted(both, key=lambda k: -abs(number(old[k]["gen_gap"]) - number(new[k]["gen_gap"])))
    print("\nlargest gen_gap changes (old -> new):")
    for k in moved[:args.top]:
        o, n = old[k], new[k]
        label = " ".join(f"{a}={o[a]}" for a in KEYS[2:] if a in o and a != "test_size")
        print(f"  {label}: gen_gap {number(o['gen_gap']):.4f} -> {number(n['gen_gap']):.4f}, "
              f"epochs {o.get('epochs_trained')} -> {n.get('epochs_trained')}")


if __name__ == "__main__":
    main()
