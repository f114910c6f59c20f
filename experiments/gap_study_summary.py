"""What the gap_study grid's networks look like: the spread of the gaps, each axis's effect on
them, epochs trained and networks that hit the epoch cap; from `compare`'s networks.csv alone.

    python experiments/gap_study_summary.py docs/results/gap_study_networks.csv
    python experiments/gap_study_summary.py docs/results/gap_study_conv_networks.csv
"""
from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from typing import Dict, List

import numpy as np

#: networks.csv's hyperparameter columns, in the order the summary lists those that vary (the
#: seed is the replicate, not an axis)
AXES = ("arch", "dataset", "depth", "width", "n_train", "label_shuffle", "weight_decay",
        "dropout", "lr", "momentum", "batch_size", "epochs")


def varied_axes(rows: List[Dict[str, str]]) -> List[str]:
    """The hyperparameters whose value differs between the networks."""
    return [a for a in AXES if a in rows[0] and len({r[a] for r in rows}) > 1]


def _value_order(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def load(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(rows: List[Dict[str, str]]) -> str:
    gap = np.array([float(r["gen_gap"]) for r in rows])
    loss_gap = np.array([float(r["loss_gap"]) for r in rows])
    epochs = np.array([int(float(r["epochs_trained"])) for r in rows])
    cap = max(int(float(r["epochs"])) for r in rows)
    lines = [f"{len(rows)} networks; gen_gap {gap.min():.4f} .. {gap.max():.4f} (span "
             f"{gap.max() - gap.min():.4f}, median {np.median(gap):.4f}); loss_gap "
             f"{loss_gap.min():.3f} .. {loss_gap.max():.3f}",
             f"epochs trained {epochs.min()} .. {epochs.max()} (median "
             f"{int(np.median(epochs))}); {int(np.sum(epochs >= cap))} of {len(rows)} reached "
             f"the {cap}-epoch cap before cross-entropy 0.01",
             "", "| axis | value | networks | mean gen_gap | mean loss_gap | mean test_acc | "
             "mean epochs |", "|---|---|---|---|---|---|---|"]
    axes = varied_axes(rows)
    for axis in axes:
        groups: Dict[str, list] = defaultdict(list)
        for r in rows:
            groups[r[axis]].append(r)
        for value in sorted(groups, key=_value_order):
            g = groups[value]
            mean = lambda k: float(np.mean([float(r[k]) for r in g]))  # noqa: E731
            lines.append(f"| {axis} | {value} | {len(g)} | {mean('gen_gap'):.4f} | "
                         f"{mean('loss_gap'):.3f} | {mean('test_acc'):.4f} | "
                         f"{mean('epochs_trained'):.1f} |")
    # seed-to-seed spread of the gap within a combination
    combos: Dict[tuple, list] = defaultdict(list)
    for r in rows:
        combos[tuple(r[a] for a in axes)].append(float(r["gen_gap"]))
    sd = [float(np.std(v, ddof=1)) for v in combos.values() if len(v) > 1]
    between = float(np.std([np.mean(v) for v in combos.values()], ddof=1))
    lines += ["", f"gen_gap seed-to-seed SD within a combination: median {np.median(sd):.4f} "
                  f"(max {max(sd):.4f}); SD of the {len(combos)} combination means: "
                  f"{between:.4f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks_csv")
    print(summary(load(ap.parse_args().networks_csv)))
