"""A finished study's seed-bootstrap columns and tables re-derived from its networks.csv alone
(no MLflow, no retraining): `compare`'s ``add_intervals`` on the networks of the table, written
back into the study's copy of `compare`'s artifacts, ``correlations.csv`` (the ``<stat>_point``,
``_low``, ``_high`` and ``boot_*`` columns of every scope) and ``correlations.md`` (the All-Nets
interval tables). Everything else in them (the correlations on all instances, CMI on all
networks, the sign-error tables) is kept as `compare` wrote it.

    python experiments/study_tables.py docs/results/gap_study_networks.csv docs/results/gap_study
    python experiments/study_tables.py docs/results/gap_study_conv_networks.csv \\
        docs/results/gap_study_conv

    python experiments/study_tables.py docs/results/mnist_hparams.json   # a pool: printed

The networks are drawn in `compare`'s order, so the replicates are those of the study's
`compare` run: the intervals come out as it logged them (the script says if any moved), and
only what SPEC §9 now defines differently (every point the mean of its replicates) changes.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "pipelines"))
sys.path.insert(0, str(HERE))

from gap_study_sign_error import load  # noqa: E402

STATS = ("kendall", "granulated_kendall", "pearson", "cmi")


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def rederive(networks_csv: str, artifacts: Path, replicates: int = 1000,
             level: float = 0.95) -> Tuple[List[Dict[str, Any]], str, List[str]]:
    """``(rows, markdown, changes)``: correlations.csv's rows with the bootstrap columns
    recomputed, correlations.md with its interval tables redrawn, and one line per changed
    point (``scope target metric stat: old -> new``) plus any moved interval bound."""
    from compare import TARGETS, add_intervals, interval_markdown

    from cna_tf.ranking import ALL_NETS

    nets, _ = load(networks_csv)
    with open(artifacts / "correlations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    old = [dict(r) for r in rows]
    boot = add_intervals(rows, nets, replicates=replicates, level=level)
    changes = []
    for was, now in zip(old, rows):
        if now["target"] not in TARGETS:
            continue
        for stat in STATS:
            label = f"{now['scope']} {now['target']} {now['metric']} {stat}"
            for part in ("low", "high"):
                a, b = _float(was.get(f"{stat}_{part}")), now[f"{stat}_{part}"]
                if not (abs(a - b) <= 1e-12 or (math.isnan(a) and math.isnan(b))):
                    changes.append(f"{label} {part} MOVED: {a!r} -> {b!r}")
            fmt = "{:.3f}" if stat == "cmi" else "{:+.2f}"   # as the tables print them
            a, b = (fmt.format(_float(was.get(f"{stat}_point"))),
                    fmt.format(now[f"{stat}_point"]))
            if a != b:
                changes.append(f"{label}: {a} -> {b} [{fmt.format(now[f'{stat}_low'])}, "
                               f"{fmt.format(now[f'{stat}_high'])}]")
    text = (artifacts / "correlations.md").read_text()
    for target in TARGETS:
        if (ALL_NETS, target) not in boot:
            continue
        start = f"Seed-bootstrap intervals of the correlation with `{target}` in {ALL_NETS}"
        section = re.compile(re.escape(start) + r".*?(?=\n\n(?:Seed-bootstrap intervals|Robust "
                             r"sign-error)|\n*\Z)", re.S)
        table = interval_markdown(boot[(ALL_NETS, target)], target)
        text, n = section.subn(lambda _: table, text, count=1)
        if n != 1:
            raise SystemExit(f"{artifacts / 'correlations.md'}: no interval table for {target}")
    return rows, text, changes


def pool_tables(path: str, replicates: int = 1000) -> str:
    """A grid without seeds (``docs/results/mnist_hparams.json``) re-stated with intervals, as
    docs/results/gap_study.md shows it: per gap the bootstrap's mode and notes, every measure's
    Kendall, Pearson and Ψ (points: means over the resamples) with CMI on all the networks, and
    CNA-M's paired fractions by Kendall."""
    from gap_study_sign_error import CNA_M, measures_of, varied

    from cna_tf import ranking

    nets, _ = load(path)
    hp = varied(nets)
    measures = measures_of(nets)
    lines = []
    for target in ("gen_gap", "loss_gap"):
        gap = [n[target] for n in nets]
        res = ranking.bootstrap({m: [n[m] for n in nets] for m in measures}, gap, hp,
                                replicates=replicates, seed=0)
        lines += [f"{target} {res.mode} {res.notes} {res.cmi_note}",
                  f"| metric | Kendall | Pearson | Ψ | CMI (all {len(nets)}) |",
                  "|---|---|---|---|---|"]
        for m in sorted(measures, key=lambda m: -res[m]["kendall"][0]):
            cells = [f"{p:+.2f} [{lo:+.2f}, {hi:+.2f}]" for p, lo, hi in
                     (res[m][s] for s in ("kendall", "pearson", "granulated_kendall"))]
            cmi = ranking.conditional_mutual_information([n[m] for n in nets], gap, hp)
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {cmi:.3f} |")
        lines.append(f"{CNA_M} beats, by Kendall: " + str(
            {o: round(res.paired["kendall"][(CNA_M, o)], 2) for o in measures if o != CNA_M}))
    return "\n".join(lines)


def main(argv=None) -> int:
    from compare import to_csv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", help="compare's networks.csv of the study, or a grid record "
                    "without seeds (mnist_hparams.json: its pool tables are printed)")
    ap.add_argument("artifacts", nargs="?", help="the folder of the study's correlations.csv "
                    "and .md")
    ap.add_argument("--replicates", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.networks.endswith(".json"):
        print(pool_tables(args.networks, args.replicates))
        return 0
    if not args.artifacts:
        ap.error("name the folder of the study's correlations.csv and .md")
    folder = Path(args.artifacts)
    rows, text, changes = rederive(args.networks, folder, args.replicates)
    (folder / "correlations.csv").write_text(to_csv(rows))
    (folder / "correlations.md").write_text(text)
    print("\n".join(changes) or "no point changed")
    return 1 if any("MOVED" in c for c in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
