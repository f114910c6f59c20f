"""SPEC §12's two spectral norms of a conv layer side by side, from a study's networks.csv alone
(no MLflow, no retraining): for each measure with an ``_fft`` form, how the FFT form (the
operator norm of the convolution, Sedghi et al.) compares with the reshaped form (σ_max of the
kernel reshaped to a (k·k·c_in) × c_out matrix) network by network, and how each ranks the gap.

    python experiments/fft_vs_reshaped.py docs/results/gap_study_conv_networks.csv
    python experiments/fft_vs_reshaped.py docs/results/gap_study_conv_networks.csv \\
        --where arch=vgg18

Per pair: the networks with both values finite; the median and range of µ_FFT / µ_reshaped, the
ratio of the two forms' µ before the report (SPEC §12: a √(µ/m) value v gives µ ∝ v², a
½(log µ − log m) value gives µ ∝ e^(2v); m cancels); Kendall
τ-b between the two forms over the networks (1: they order the networks alike); each form's
Kendall τ-b with ``gen_gap`` on all those networks (not the seed-bootstrap mean `compare`'s
interval tables print) and its mean robust sign-error with ``gen_gap`` (SPEC §10, as `compare`
computes it).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gap_study_sign_error as csv_study  # noqa: E402
from study_scope import select  # noqa: E402

from cna_tf import suite  # noqa: E402
from cna_tf.ranking import kendall  # noqa: E402


def mu_ratio(measure: str, fft: np.ndarray, reshaped: np.ndarray) -> np.ndarray:
    """µ_FFT / µ_reshaped from the two reported values (see the module docstring)."""
    reported = suite.MEASURES[measure].reported
    if reported == "log":
        return np.exp(2 * (fft - reshaped))
    if reported == "sqrt":
        return (fft / reshaped) ** 2
    return fft / reshaped


def rows(nets: List[Dict[str, Any]]) -> List[List[str]]:
    """One table row per measure that has an ``_fft`` twin among the networks' columns."""
    measures = csv_study.measures_of(nets)
    signs = csv_study.sign_error_tables(nets)["gen_gap"]
    out = []
    for fft in (m for m in measures if m.endswith("_fft")):
        base = fft[:-len("_fft")]
        pairs = [(n[base], n[fft], n["gen_gap"]) for n in nets
                 if all(math.isfinite(v) for v in (n[base], n[fft], n["gen_gap"]))]
        if len(pairs) < 3:
            continue
        b, f, gap = (np.array(c, dtype=float) for c in zip(*pairs))
        ratio = mu_ratio(base, f, b)
        out.append([base, str(len(pairs)), f"{np.median(ratio):.4g}",
                    f"{ratio.min():.4g} .. {ratio.max():.4g}",
                    f"{kendall(b, f):+.2f}", f"{kendall(b, gap):+.2f}", f"{kendall(f, gap):+.2f}",
                    f"{signs[base]['all']['mean']:.2f}", f"{signs[fft]['all']['mean']:.2f}"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="compare's networks.csv")
    ap.add_argument("--where", action="append", default=[],
                    help="keep the networks with this value, e.g. arch=vgg18 (repeatable)")
    args = ap.parse_args()
    nets, _ = csv_study.load(args.csv)
    nets = select(nets, args.where)
    header = ["measure", "networks", "µ_FFT / µ_reshaped (median)", "range",
              "τ(reshaped, FFT)", "τ with gen_gap: reshaped", "FFT",
              "mean sign-error: reshaped", "FFT"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows(nets):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
