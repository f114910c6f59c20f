"""Where one measure (CNA-M by default) stands among every measure a study's `compare` ranked,
read from that run's ``correlations.md`` alone (no MLflow, no retraining): its rank by the seed-bootstrap Kendall point and by CMI, the measures it beats
(paired fraction >= 0.95) or loses to (<= 0.05) in the same replicates, its mean robust
sign-error and rank, and per intervention the sign-error of chosen measures.

    python experiments/suite_summary.py docs/results/gap_study
    python experiments/suite_summary.py docs/results/gap_study --axis n_train \\
        --measures l2,spectral,sum_of_spec,prod_of_spec,fro_dist,path_norm
    python experiments/suite_summary.py docs/results/gap_study --combined \\
        docs/results/gap_study_conv      # one row per measure, both studies side by side

``--combined`` prints the table of docs/results/README.md: Kendall with ``gen_gap`` (point and
95 % interval) and the mean sign-error with ``gen_gap`` of every measure in each study.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TARGETS = ("gen_gap", "loss_gap")
#: how the titles of compare's tables begin (other lines between a title and its table are notes)
_TITLES = ("Correlation with", "Best measure", "Seed-bootstrap intervals", "Robust sign-error",
           "`")
#: "point [low, high]" after U+2212 minus signs became "-"
_CELL = re.compile(r"([+-]?\d+\.\d+) \[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]")


def _blocks(md: str) -> List[Tuple[str, List[List[str]]]]:
    """(title line, table rows split into cells) for every table in a compare report."""
    out, title, rows = [], "", []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        else:
            if rows:
                out.append((title, rows))
                rows = []
            if line.startswith(_TITLES):
                title = line
    return out


def _number(text: str) -> float:
    try:
        return float(text.replace("−", "-"))
    except ValueError:
        return float("nan")


class Study:
    """The tables of one `compare` run: intervals, paired fractions and sign-errors."""

    def __init__(self, folder: str, focus: str = "cna_margin"):
        self.folder, self.focus = Path(folder), focus
        blocks = _blocks((self.folder / "correlations.md").read_text())
        self.intervals: Dict[str, List[Dict[str, str]]] = {}
        self.paired: Dict[str, Dict[str, Tuple[float, float]]] = {}
        self.sign: Dict[str, List[Dict[str, str]]] = {}
        for title, rows in blocks:
            head, body = rows[0], rows[1:]
            target = next((t for t in TARGETS if f"`{t}`" in title), None)
            if target is None:
                continue
            as_dicts = [dict(zip(head, r)) for r in body]
            if title.startswith("Seed-bootstrap intervals") and target not in self.intervals:
                self.intervals[target] = as_dicts
            elif title.startswith("Robust sign-error") and target not in self.sign:
                self.sign[target] = as_dicts
        # the paired-fraction tables follow their interval table, in target order
        paired = [rows for title, rows in blocks
                  if title.startswith(f"`{focus}` against every other measure")]
        for target, rows in zip([t for t in TARGETS if t in self.intervals], paired):
            self.paired[target] = {r[0]: (_number(r[1]), _number(r[2])) for r in rows[1:]}

    def kendall(self, target: str) -> Dict[str, Tuple[float, float, float]]:
        out = {}
        for r in self.intervals[target]:
            m = _CELL.match(r["Kendall"].replace("−", "-"))
            if m:
                out[r["metric"]] = tuple(float(v) for v in m.groups())
        return out

    def cmi_rank(self, target: str) -> Dict[str, int]:
        return {r["metric"]: int(r["rank"]) for r in self.intervals[target]
                if r.get("CMI", "–") not in ("–", "")}

    def sign_error(self, target: str, column: str = "all") -> Dict[str, float]:
        return {r["metric"]: _number(r[column].split(" / ")[0]) for r in self.sign.get(target, [])
                if r.get(column, "–") not in ("–", "")}

    def summary(self, target: str) -> str:
        k = self.kendall(target)
        order = sorted(k, key=lambda m: -k[m][0])
        f = self.focus
        lines = [f"### {target}: {len(k)} measures"]
        if f in k:
            lines.append(f"- {f} Kendall {k[f][0]:+.2f} [{k[f][1]:+.2f}, {k[f][2]:+.2f}]: "
                         f"rank {order.index(f) + 1} of {len(k)} by the Kendall point")
        cmi = self.cmi_rank(target)
        if f in cmi:
            lines.append(f"- by CMI: rank {cmi[f]} of {len(cmi)} measures with a CMI")
        se = self.sign_error(target)
        if f in se:
            se_order = sorted(se, key=lambda m: se[m])
            lines.append(f"- mean sign-error {se[f]:.2f}: rank {se_order.index(f) + 1} of "
                         f"{len(se)} (lowest first)")
        paired = self.paired.get(target, {})
        for i, stat in ((1, "Kendall"), (0, "CMI")):
            beats = sorted(m for m, v in paired.items() if v[i] >= 0.95)
            loses = sorted(m for m, v in paired.items() if v[i] <= 0.05)
            defined = sum(1 for v in paired.values() if v[i] == v[i])
            lines.append(f"- by {stat} ({defined} comparisons): beats with a paired fraction >= "
                         f"0.95: {', '.join(beats) or 'none'} ({len(beats)}); loses to with "
                         f"<= 0.05: {len(loses)}" + (f" ({', '.join(loses)})" if len(loses) <= 12
                                                      else ""))
        return "\n".join(lines)


def combined(studies: List[Tuple[str, Study]], target: str = "gen_gap", focus: str = "cna_margin"
             ) -> str:
    """One row per measure: Kendall (point [interval]) and mean sign-error in each study."""
    names: List[str] = []
    for _, s in studies:
        for m in sorted(s.kendall(target), key=lambda m: -s.kendall(target)[m][0]):
            if m not in names:
                names.append(m)
    head = ["measure"] + [f"{label}: {col}" for label, _ in studies
                          for col in ("Kendall", "sign-error")]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in names:
        cells = [f"**{m}** ◀" if m == focus else m]
        for _, s in studies:
            k, se = s.kendall(target).get(m), s.sign_error(target).get(m)
            cells.append(f"{k[0]:+.2f} [{k[1]:+.2f}, {k[2]:+.2f}]" if k else "–")
            cells.append(f"{se:.2f}" if se is not None and se == se else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a study's copy of compare's artifacts (correlations.md)")
    ap.add_argument("--focus", default="cna_margin")
    ap.add_argument("--axis", default="", help="print each --measures' sign-error on this axis")
    ap.add_argument("--measures", default="", help="comma-separated, for --axis")
    ap.add_argument("--combined", nargs="*", default=None,
                    help="more study folders: print the combined gen_gap table instead")
    args = ap.parse_args(argv)
    study = Study(args.folder, args.focus)
    if args.combined is not None:
        studies = [(Path(args.folder).name, study)] + [
            (Path(f).name, Study(f, args.focus)) for f in args.combined]
        print(combined(studies, focus=args.focus))
        return
    for target in TARGETS:
        if target in study.intervals:
            print(study.summary(target))
            if args.axis:
                se = study.sign_error(target, args.axis)
                wanted = args.measures.split(",") if args.measures else sorted(se)
                print(f"  sign-error on {args.axis} (mean over its environments): "
                      + ", ".join(f"{m} {se[m]:.2f}" for m in wanted if m in se))
            print()


if __name__ == "__main__":
    main()
