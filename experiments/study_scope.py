"""A finished grid's rankings within one scope (e.g. one architecture), from `compare`'s
networks.csv alone (no MLflow, no retraining): `compare`'s seed-bootstrap interval tables
(SPEC §9) and robust sign-error tables (SPEC §10) of the networks whose hyperparameters have
the given values, for ``gen_gap`` and ``loss_gap``. `compare` prints these for All Nets only.

    python experiments/study_scope.py docs/results/gap_study_conv_networks.csv --where arch=vgg18
    python experiments/study_scope.py docs/results/gap_study_conv_networks.csv --converged_only

The seed bootstrap draws by seed where every combination has two or more seeds, as `compare`
does (`compare._replicate_axis`); the hyperparameters are those that vary within the scope.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "pipelines"))
sys.path.insert(0, str(HERE))

from gap_study_sign_error import load, measures_of, sign_error_tables, varied  # noqa: E402

TARGETS = ("gen_gap", "loss_gap")


def select(nets: List[Dict[str, Any]], where: List[str]) -> List[Dict[str, Any]]:
    """The networks whose hyperparameters equal every ``key=value`` of ``where``."""
    out = nets
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or key not in nets[0]:
            raise SystemExit(f"--where {item!r}: give key=value with a column of the table "
                             f"({', '.join(k for k in nets[0] if not k.startswith('_'))})")
        out = [n for n in out if str(n[key]) == value or _same_number(n[key], value)]
    if not out:
        raise SystemExit(f"no network has {' and '.join(where)}")
    return out


def _same_number(a: Any, b: str) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def scope_report(nets: List[Dict[str, Any]], scope: str, replicates: int = 1000) -> str:
    """The interval and sign-error tables of ``nets`` for both gaps, as `compare` prints them."""
    from compare import _replicate_axis, interval_markdown, sign_error_markdown

    from cna_tf import ranking

    measures = measures_of(nets)
    hp = varied(nets)
    axis, why = _replicate_axis(hp, len(nets))
    parts = [f"{scope}: {len(nets)} networks; varied: {', '.join(hp) or 'nothing'}"
             + (f" ({why})" if why else "")]
    for target in TARGETS:
        res = ranking.bootstrap({m: [n[m] for n in nets] for m in measures},
                                [n[target] for n in nets], hp, replicate_axis=axis,
                                replicates=replicates, seed=0)
        parts.append(interval_markdown(res, target, scope=scope))
    signs = sign_error_tables(nets)
    parts += [sign_error_markdown(signs[t], t, scope=scope) for t in TARGETS]
    return "\n\n".join(parts)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help="compare's networks.csv")
    ap.add_argument("--where", action="append", default=[],
                    help="key=value (repeatable): keep the networks with that value")
    ap.add_argument("--converged_only", action="store_true",
                    help="leave out the networks that did not reach stop_loss")
    ap.add_argument("--replicates", type=int, default=1000)
    args = ap.parse_args()
    nets, _ = load(args.path)
    nets = select(nets, args.where)
    if args.converged_only:
        nets = [n for n in nets if n["converged"] is not False]
    scope = " and ".join(args.where) or "All Nets"
    if args.converged_only:
        scope += " (converged only)"
    print(scope_report(nets, scope, args.replicates))
