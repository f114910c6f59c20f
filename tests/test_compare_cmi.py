"""compare reports PGDL's conditional mutual information (SPEC §8) beside Pearson, Kendall and
granulated Kendall, on the final snapshots where they form a complete grid, and says why not
elsewhere; it ranks dist_init, sum_of_fro and the flatness measures when present."""
import itertools
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))


def _log_grid(client, exp, drop_last=False):
    """A 2x2x2 grid over depth, width, lr (one run each, seed 0); snapshots at epochs 0 and 5.
    gen_gap = 4·[depth=5] + 2·[width=0.5] + [lr=0.05] (+0.1 so none is 0); at the final
    snapshot cna_margin = gen_gap, l2 = −gen_gap, pacbayes_flatness = gen_gap²; at epoch 0 the
    measures are unrelated to the gap (only the final snapshot may enter CMI)."""
    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    combos = list(itertools.product([3, 5], [0.25, 0.5], [0.01, 0.05]))
    if drop_last:
        combos = combos[:-1]
    for k, (depth, width, lr) in enumerate(combos):
        run = client.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                           "mlflow.parentRunId": grid.info.run_id,
                                           "cna_tf.final_only": "false"})
        rid = run.info.run_id
        for name, v in {"arch": "mlp", "dataset": "digits", "depth": depth, "width": width,
                        "lr": lr, "seed": 0}.items():
            client.log_param(rid, name, v)
        gap = 4 * (depth == 5) + 2 * (width == 0.5) + (lr == 0.05) + 0.1
        for step, values in ((0, {"gen_gap": 0.01 * k, "cna_margin": (-1) ** k, "l2": k % 3}),
                             (5, {"gen_gap": gap, "cna_margin": gap, "l2": -gap,
                                  "pacbayes_flatness": gap ** 2, "dist_init": 1.0})):
            for name, v in values.items():
                client.log_metric(rid, name, v, step=step)
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(grid.info.run_id, "FINISHED")


def test_compare_reports_cmi_on_a_complete_grid(store):
    import compare as compare_step

    _log_grid(store, store.create_experiment("full"))
    rows = compare_step.main(["--experiment", "full"])
    got = {(r["scope"], r["metric"], r["target"]): r for r in rows}
    margin = got[("All Nets", "cna_margin", "gen_gap")]
    assert margin["cmi"] == pytest.approx(1.0, abs=1e-9)       # the gap itself
    assert margin["cmi_n"] == 8 and margin["cmi_hparams"] == "width, depth, lr"
    assert got[("All Nets", "pacbayes_flatness", "gen_gap")]["cmi"] == pytest.approx(1.0, abs=1e-9)
    # −gap on a 2x2x2 grid: I/H of the hand-computed table in tests/test_cmi.py
    want = (0.5 * math.log2(4 / 3) + 0.5 * math.log2(8 / 9)) / (
        -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))
    assert got[("All Nets", "l2", "gen_gap")]["cmi"] == pytest.approx(want, rel=1e-9)
    assert got[("All Nets", "dist_init", "gen_gap")]["cmi"] == 0.0  # constant: no information
    assert "sum_of_fro" in {r["metric"] for r in rows}
    assert math.isnan(got[("All Nets", "cna_test", "test_acc")]["cmi"])   # not a gap
    # the epoch-0 instances still enter Pearson / Kendall (16 instances), not CMI
    assert margin["n"] == 16

    import mlflow
    run = mlflow.MlflowClient().search_runs(
        [mlflow.MlflowClient().get_experiment_by_name("full").experiment_id],
        "tags.`cna_tf.role` = 'compare'")[0]
    md = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                  artifact_path="compare/correlations.md"))
    text = md.read_text()
    assert "/ CMI (PGDL's conditional mutual information" in text
    assert "- CMI in All Nets: 8 final snapshots, a complete grid over width, depth, lr." in text
    assert "Ranked by CMI: 1. " in text
    csv = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                   artifact_path="compare/correlations.csv"))
    assert "cmi" in csv.read_text().splitlines()[0].split(",")
    assert run.data.metrics["cmi.cna_margin.gen_gap"] == pytest.approx(1.0, abs=1e-9)


def test_compare_notes_an_incomplete_grid(store):
    import compare as compare_step

    _log_grid(store, store.create_experiment("partial"), drop_last=True)
    rows = compare_step.main(["--experiment", "partial"])
    r = next(r for r in rows if (r["scope"], r["metric"], r["target"])
             == ("All Nets", "cna_margin", "gen_gap"))
    assert math.isnan(r["cmi"])
    assert "do not form a complete grid" in r["cmi_note"]
    assert "missing e.g. {'width': 0.5, 'depth': 5, 'lr': 0.05}" in r["cmi_note"]
    text = compare_step.markdown(rows, "gen_gap")
    assert "- CMI in All Nets: not computed: 7 networks do not form a complete grid" in text
