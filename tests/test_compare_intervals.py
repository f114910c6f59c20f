"""`compare` with seed-bootstrap intervals (issue 26 items 2 and 5, SPEC §9): the interval
columns of the CSV, the All Nets table with `point [low, high]`, CNA-M's paired fractions, the
one line for runs without a seed axis, and compare/networks.csv (one row per network)."""
import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

from cna_tf import ranking  # noqa: E402


def _log_grid(client, exp, seeds, rng):
    """A complete grid over depth x width x lr (x seeds): the gap grows with width; cna_margin
    is the gap plus a little noise, l2 pure noise."""
    import itertools

    from mlflow.entities import Metric, Param

    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    nets = []
    for depth, width, lr, seed in itertools.product((2, 4), (0.25, 0.5, 1.0), (0.01, 0.05),
                                                    seeds):
        gap = 0.1 * width + 0.02 * depth + 0.3 * lr + 0.01 * rng.standard_normal()
        values = {"gen_gap": gap, "loss_gap": 2 * gap + 0.01 * rng.standard_normal(),
                  "cna_margin": gap + 0.002 * rng.standard_normal(),
                  "l2": rng.standard_normal(), "train_acc": 1.0, "test_acc": 1.0 - gap}
        run = client.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                           "mlflow.parentRunId": grid.info.run_id,
                                           "cna_tf.final_only": "true"})
        rid = run.info.run_id
        params = {"arch": "mlp", "dataset": "mnist", "depth": depth, "width": width, "lr": lr,
                  "seed": seed, "epochs": 30}
        # the init snapshot (step 0) is dropped: final_only
        metrics = [Metric(k, x, 0, step) for k, v in values.items()
                   for step, x in ((0, 0.0), (17 + seed, v))]
        client.log_batch(rid, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(rid, "FINISHED")
        nets.append(dict(depth=depth, width=width, lr=lr, seed=seed, **values))
    client.set_terminated(grid.info.run_id, "FINISHED")
    return nets


def _artifact(client, name, path, tmp_path):
    run = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                             "tags.`cna_tf.role` = 'compare'")[0]
    local = client.download_artifacts(run.info.run_id, path, str(tmp_path))
    return run, Path(local).read_text()


def test_compare_reports_seed_bootstrap_intervals(store, tmp_path, capsys):
    import compare as compare_step

    nets = _log_grid(store, store.create_experiment("seeds"), (0, 1, 2),
                     np.random.default_rng(0))
    rows = compare_step.main(["--experiment", "seeds", "--replicates", "200"])
    out = capsys.readouterr().out
    got = {(r["scope"], r["metric"], r["target"]): r for r in rows}
    r = got[("All Nets", "cna_margin", "gen_gap")]
    # the same numbers as the library's bootstrap on the per-network values, in compare's
    # order of the networks (by hyperparameters: width, depth, lr, seed in AXES order)
    nets = sorted(nets, key=lambda n: tuple(repr(n[a]) for a in ("width", "depth", "lr",
                                                                  "seed")))
    hp = {a: [n[a] for n in nets] for a in ("depth", "width", "lr", "seed")}
    ref = ranking.bootstrap({"cna_margin": [n["cna_margin"] for n in nets],
                             "l2": [n["l2"] for n in nets]}, [n["gen_gap"] for n in nets], hp,
                            replicates=200)
    assert r["boot_mode"] == "seed" and r["boot_n"] == 36
    for stat in ("kendall", "pearson", "granulated_kendall", "cmi"):
        point, low, high = ref["cna_margin"][stat]
        assert (r[f"{stat}_point"], r[f"{stat}_low"], r[f"{stat}_high"]) == \
            pytest.approx((point, low, high))
        assert low <= high
        assert low <= r[f"{stat}_point"] <= high   # the point is the replicates' mean
    # the value on all 36 networks stays in the row (the first table's), not in the interval's
    assert r["kendall"] == pytest.approx(ranking.kendall([i["cna_margin"] for i in nets],
                                                         [i["gen_gap"] for i in nets]))
    assert r["kendall"] != pytest.approx(r["kendall_point"])
    assert r["kendall_low"] > 0.5 and got[("All Nets", "l2", "gen_gap")]["kendall_low"] < 0
    # the printed table: CNA-M first by CMI, with its interval, and its paired fractions
    assert "Seed-bootstrap intervals of the correlation with `gen_gap` in All Nets" in out
    assert ("every point is its mean over the replicates, one network per combination; the "
            "values on all networks are in \"Correlation with `gen_gap`\")") in out
    line = next(ln for ln in out.splitlines() if ln.startswith("| 1 | "))
    assert line.startswith("| 1 | cna_margin | ") and " [" in line
    assert "No seed axis" not in out
    lines = out.splitlines()
    start = lines.index("| other measure | by CMI | by Kendall |")
    fractions = next(ln for ln in lines[start:] if ln.startswith("| l2 | "))
    by_cmi, by_tau = (float(v) for v in fractions.strip("| ").split(" | ")[1:])
    assert by_cmi > 0.95 and by_tau > 0.95
    assert by_tau == pytest.approx(ref.paired["kendall"][("cna_margin", "l2")])
    # the CSV: low/high columns
    run, text = _artifact(store, "seeds", "compare/correlations.csv", tmp_path)
    head = next(csv.reader([text.splitlines()[0]]))
    for stat in ("pearson", "kendall", "granulated_kendall", "cmi"):
        assert f"{stat}_low" in head and f"{stat}_high" in head
    assert "kendall_low.cna_margin.gen_gap" in run.data.metrics
    # one row per network: hyperparameters, seed, epochs trained, measures, gaps
    _, text = _artifact(store, "seeds", "compare/networks.csv", tmp_path)
    table = list(csv.DictReader(text.splitlines()))
    assert len(table) == 36
    for col in ("run_id", "depth", "width", "lr", "seed", "weight_decay", "dropout",
                "epochs_trained", "cna_margin", "l2", "gen_gap", "loss_gap", "train_acc",
                "test_acc"):
        assert col in table[0], col
    row = next(t for t in table if (t["depth"], t["width"], t["lr"], t["seed"]) ==
               ("4", "0.5", "0.05", "2"))
    net = next(n for n in nets if (n["depth"], n["width"], n["lr"], n["seed"]) ==
               (4, 0.5, 0.05, 2))
    assert float(row["gen_gap"]) == pytest.approx(net["gen_gap"])
    assert row["epochs_trained"] == "19"   # the final snapshot's step (17 + seed)


def test_compare_without_a_seed_axis_says_so_in_one_line(store, capsys):
    import compare as compare_step

    _log_grid(store, store.create_experiment("one-seed"), (0,), np.random.default_rng(1))
    rows = compare_step.main(["--experiment", "one-seed", "--replicates", "100"])
    out = capsys.readouterr().out
    assert sum("No seed axis" in ln for ln in out.splitlines()) == 2   # gen_gap, loss_gap
    assert sum("every point is its mean over the resamples of the networks with replacement"
               in ln for ln in out.splitlines()) == 2             # the pool's title says so
    r = next(r for r in rows if (r["scope"], r["metric"], r["target"]) ==
             ("All Nets", "cna_margin", "gen_gap"))
    assert r["boot_mode"] == "pool"
    assert math.isfinite(r["kendall_low"]) and math.isnan(r["cmi_low"])


def test_compare_under_mlflow_run_reads_the_experiment_it_was_started_in(store, monkeypatch,
                                                                         capsys):
    """`mlflow run . -e compare --experiment-name NAME` (no -P experiment=) compares NAME's
    grid: mlflow run creates the step's run in NAME and passes its id as MLFLOW_RUN_ID."""
    import compare as compare_step

    exp = store.create_experiment("started-in")
    _log_grid(store, exp, (0, 1), np.random.default_rng(2))
    step_run = store.create_run(exp)  # what `mlflow run` creates before the command starts
    monkeypatch.setenv("MLFLOW_RUN_ID", step_run.info.run_id)
    rows = compare_step.main(["--replicates", "50"])
    assert "24 runs, 24 network instances" in capsys.readouterr().out
    assert rows and store.get_run(step_run.info.run_id).data.tags["cna_tf.role"] == "compare"


def test_a_seed_in_only_some_combinations_is_a_pool(store, capsys):
    """As in the demo grid: seeds 0 and 1 for some combinations, seed 0 alone for others."""
    import compare as compare_step

    exp = store.create_experiment("some-seeds")
    _log_grid(store, exp, (0,), np.random.default_rng(3))
    _log_grid(store, exp, (1,), np.random.default_rng(4))  # a second grid run: seed 1
    grid_2 = store.search_runs([exp], "tags.`cna_tf.role` = 'grid'")
    rows = compare_step.main(["--experiment", "some-seeds", "--all_runs", "true",
                              "--replicates", "50"])
    assert len(grid_2) == 2 and rows
    both = next(r for r in rows if (r["scope"], r["metric"], r["target"]) ==
                ("All Nets", "cna_margin", "gen_gap"))
    assert both["boot_mode"] == "seed"   # every combination has seeds 0 and 1
    import mlflow

    run = mlflow.MlflowClient().search_runs(
        [exp], "tags.`cna_tf.role` = 'train' and params.depth = '4' and params.seed = '1'")
    for r in run:  # seed 1 of the depth-4 combinations is deleted: they keep one seed only
        mlflow.MlflowClient().delete_run(r.info.run_id)
    capsys.readouterr()
    rows = compare_step.main(["--experiment", "some-seeds", "--all_runs", "true",
                              "--replicates", "50"])
    out = capsys.readouterr().out
    r = next(r for r in rows if (r["scope"], r["metric"], r["target"]) ==
             ("All Nets", "cna_margin", "gen_gap"))
    assert r["boot_mode"] == "pool" and "6 of the 12 combinations" in r["boot_note"]
    assert sum("No seed axis" in ln for ln in out.splitlines()) == 2
