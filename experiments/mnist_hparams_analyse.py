"""Ranks every measure of `experiments/mnist_hparams.py`'s JSON against the generalization gap.

Per measure and target (``gen_gap``, ``loss_gap``), over the final snapshots of the grid's
networks: Pearson, Kendall tau-b, granulated Kendall (axes depth, width, lr, batch_size) and
PGDL's conditional mutual information (`cna_tf.ranking`, SPEC §8), the functions
``pipelines/compare.py`` uses. CMI needs a complete grid: with a failed or missing cell it is
reported as undefined. Prints a Markdown table per target, sorted by CMI (then |Kendall|).

    python experiments/mnist_hparams_analyse.py docs/results/mnist_hparams.json [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEASURES = ["cna_area", "cna_margin", "l2", "l2_path", "spectral", "bound_2018", "dist_init",
            "sum_of_fro", "pacbayes_flatness", "pacbayes_mag_flatness",
            "sharpness_mag_flatness", "margin", "cna_train", "cna_test"]
TARGETS = ["gen_gap", "loss_gap"]
AXES = ["depth", "width", "lr", "batch_size"]


def networks(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One flat row per finished cell: its hyperparameters, metrics and flatness values."""
    rows = []
    for c in data["cells"]:
        if c.get("status") != "finished":
            continue
        r = dict(c["hparams"])
        for k, v in {**c.get("metrics", {}), **c.get("flatness", {})}.items():
            r[k] = math.nan if v is None else v
        r["epochs_trained"] = c["epochs_trained"]
        rows.append(r)
    return rows


def analyse(data: Dict[str, Any]) -> Dict[str, Any]:
    from cna_tf import ranking

    nets = networks(data)
    failed = [c["index"] for c in data["cells"] if c.get("status") != "finished"]
    expected = data.get("cells_expected", len(data["cells"]))
    hparams = {a: [n[a] for n in nets] for a in AXES}
    cmi_note = ""
    try:
        ranking.grid_codes(hparams, len(nets))
    except ValueError as e:
        cmi_note = f"CMI undefined: {e}"
    if failed or len(nets) != expected:
        cmi_note = (f"CMI undefined: {len(nets)} of {expected} networks finished "
                    f"(failed: {failed}); the grid is incomplete")
    rows = []
    for target in TARGETS:
        for m in MEASURES:
            x = [float(n.get(m, math.nan)) for n in nets]
            y = [float(n[target]) for n in nets]
            gk = ranking.granulated_kendall(nets, m, target, AXES)
            cmi = math.nan
            if not cmi_note:
                cmi = ranking.conditional_mutual_information(x, y, hparams)
            rows.append({"target": target, "measure": m, "n": sum(math.isfinite(v) for v in x),
                         "pearson": ranking.pearson(x, y), "kendall": ranking.kendall(x, y),
                         **gk, "cmi": cmi})
    return {"networks": len(nets), "failed": failed, "cmi_note": cmi_note, "rows": rows}


def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def markdown(result: Dict[str, Any], target: str) -> str:
    rows = [r for r in result["rows"] if r["target"] == target]
    rows.sort(key=lambda r: (-(r["cmi"] if not math.isnan(r["cmi"]) else -1),
                             -abs(r["kendall"]) if not math.isnan(r["kendall"]) else 0))
    head = ("| rank | measure | CMI (×100) | Kendall τ | granulated Kendall Ψ | ψ depth | ψ width "
            "| ψ lr | ψ batch | Pearson |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for i, r in enumerate(rows, 1):
        cmi = "n/a" if math.isnan(r["cmi"]) else f"{100 * r['cmi']:.2f}"
        lines.append(f"| {i} | `{r['measure']}` | {cmi} | {fmt(r['kendall'])} | "
                     f"{fmt(r['granulated_kendall'])} | {fmt(r.get('psi.depth', math.nan))} | "
                     f"{fmt(r.get('psi.width', math.nan))} | {fmt(r.get('psi.lr', math.nan))} | "
                     f"{fmt(r.get('psi.batch_size', math.nan))} | {fmt(r['pearson'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="the JSON experiments/mnist_hparams.py wrote")
    ap.add_argument("--json", default="", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    result = analyse(json.loads(Path(args.results).read_text()))
    print(f"{result['networks']} networks; {result['cmi_note'] or 'complete grid: CMI defined'}")
    for target in TARGETS:
        print(f"\n### Target `{target}`\n")
        print(markdown(result, target))
    if args.json:
        Path(args.json).write_text(json.dumps(
            result, indent=1, default=lambda v: None,
            allow_nan=True).replace("NaN", "null"))


if __name__ == "__main__":
    main()
