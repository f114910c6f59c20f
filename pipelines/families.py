"""The families `compare` groups its ~50 measures into, and the short form of its printed tables.

Families, in the order the tables list them: the CNA family, the paper's baselines (SPEC §2),
then SPEC §12's suite by kind: spectral, Frobenius, distance to initialization, path, PAC-Bayes
and flatness, size and margin, the optimization-based measures; users' measures (`score`) last.

Every table `compare` logs (``compare/correlations.md``, ``.csv``, the run's Description) has
every measure. In the terminal a table with more rows than fit a screen keeps the CNA family, the
paper's baselines and the best `BEST` others in the table's own order (its rank; for the
correlation tables, which are not ranked, by Kendall's τ on All Nets), and says how many rows it
left out and where they are. The rank column keeps each measure's rank among all of them.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from cna_tf import suite

__all__ = ["FAMILIES", "ALWAYS_SHOWN", "BEST", "SUITE", "OPTIMIZATION", "family", "ordered",
           "shorten", "family_markdown"]

#: family -> its measures (a measure's ``_fft`` form is in the family of its reshaped form)
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "CNA": ("cna_area", "cna_margin", "cna_train", "cna_test"),
    "paper's baselines": ("l2", "l2_path", "spectral", "bound_2018", "margin"),
    "spectral": ("spec_init_main", "spec_orig_main", "prod_of_spec_over_margin", "prod_of_spec",
                 "fro_over_spec", "sum_of_spec_over_margin", "sum_of_spec"),
    "Frobenius": ("prod_of_fro_over_margin", "prod_of_fro", "sum_of_fro_over_margin",
                  "sum_of_fro", "param_norm", "l2_norm"),
    "distance": ("dist_init", "fro_dist", "dist_spec_init", "l2_dist"),
    "path": ("path_norm", "path_norm_over_margin"),
    "PAC-Bayes/flatness": ("pacbayes_init", "pacbayes_orig", "pacbayes_flatness",
                           "pacbayes_mag_init", "pacbayes_mag_orig", "pacbayes_mag_flatness",
                           "sharpness_flatness", "sharpness_mag_flatness"),
    "size and margin": ("num_params", "inverse_margin"),
    "optimization": suite.OPTIMIZATION,
}
USERS = "users' measures"
#: the rows every printed table keeps
ALWAYS_SHOWN: Tuple[str, ...] = FAMILIES["CNA"] + FAMILIES["paper's baselines"]
#: how many other measures a printed table keeps
BEST = 8
#: SPEC §12's post-hoc measures (`cna_tf.suite.MEASURES`) and the optimization-based ones
SUITE: Tuple[str, ...] = tuple(suite.MEASURES)
OPTIMIZATION: Tuple[str, ...] = suite.OPTIMIZATION
_ORDER = list(FAMILIES) + [USERS]


def family(metric: str) -> str:
    """The family of a measure; a name no family lists is a user's measure."""
    base = metric[:-len("_fft")] if metric.endswith("_fft") else metric
    return next((f for f, names in FAMILIES.items() if base in names), USERS)


def ordered(metrics: Iterable[str]) -> List[str]:
    """The measures grouped by family (in `FAMILIES` order), each family in its given order."""
    metrics = list(dict.fromkeys(metrics))
    return sorted(metrics, key=lambda m: _ORDER.index(family(m)))


#: a note under a table about one measure: "- kendall of 'l2' is undefined ..."
_NOTE = re.compile(r"- \S+ of '([^']+)' ")


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def shorten(table: str, order: Optional[Sequence[str]] = None, best: int = BEST,
            where: str = "compare/correlations.md") -> str:
    """A Markdown table (or several, with text between) as the terminal prints it.

    Keeps the header, the rows of `ALWAYS_SHOWN` and of users' measures (a name no family
    lists: what `score` added) and the first ``best`` other rows: in
    ``order`` when given, else in the table's row order. The first table's kept measures are
    kept in the tables after it (the paired fractions under a ranking). The metric is the
    column headed ``metric`` or ``other measure``; a table with neither is left whole. Under a
    table that lost rows, one line says how many and where they are.

    Args:
        table: the Markdown text.
        order: the measures, best first, for a table whose rows are not ranked.
        best: how many measures outside `ALWAYS_SHOWN` and users' measures to keep.
        where: the artifact that has every row.
    """
    lines = table.split("\n")
    out: List[str] = []
    keep: Optional[set] = None
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            note = _NOTE.match(lines[i])
            if not (note and keep is not None and note.group(1) not in keep):
                out.append(lines[i])  # a note on a measure left out goes with its row
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append(lines[i])
            i += 1
        header = _cells(block[0])
        column = next((k for k, h in enumerate(header) if h in ("metric", "other measure")),
                      None)
        if column is None or len(block) < 3:
            out += block
            continue
        body = block[2:]
        metrics = [_cells(row)[column] for row in body]
        if keep is None:
            users = {m for m in metrics if family(m) == USERS}  # what `score` added: shown
            others = [m for m in (order if order is not None else metrics)
                      if m in metrics and m not in ALWAYS_SHOWN and m not in users]
            keep = set(ALWAYS_SHOWN) | users | set(others[:best])
        kept = [row for row, m in zip(body, metrics) if m in keep]
        out += block[:2] + kept
        left = len(body) - len(kept)
        if left:
            out.append(f"(… and {left} more measures: every row is in {where})")
    return "\n".join(out)


def family_markdown(rows: Sequence[Mapping[str, Any]], target: str,
                    scope: str = "All Nets") -> str:
    """One row per family: how many of its measures were ranked and its best with ``target``
    in ``scope`` by Kendall's τ, with that measure's Pearson / Kendall / granulated Kendall /
    CMI (the grouped view of a table of ~50 rows)."""
    by_family: Dict[str, List[Mapping[str, Any]]] = {}
    for r in rows:
        if r["target"] == target and r["scope"] == scope:
            by_family.setdefault(family(r["metric"]), []).append(r)

    def fmt(v, spec="{:+.2f}"):
        return spec.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "–"

    def score(r, key):
        v = r.get(key, math.nan)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

    lines = [f"Best measure of each family with `{target}` in {scope} (by Kendall τ): "
             "Pearson / Kendall / granulated Kendall / CMI", "",
             "| family | measures | best | Pearson | Kendall | Ψ | CMI |",
             "|---|---|---|---|---|---|---|"]
    for fam in _ORDER:
        members = by_family.get(fam)
        if not members:
            continue
        top = max(members, key=lambda r: score(r, "kendall"))
        lines.append(f"| {fam} | {len(members)} | {top['metric']} | {fmt(top['pearson'])} | "
                     f"{fmt(top['kendall'])} | {fmt(top['granulated_kendall'])} | "
                     f"{fmt(top.get('cmi', math.nan), '{:.3f}')} |")
    return "\n".join(lines)
