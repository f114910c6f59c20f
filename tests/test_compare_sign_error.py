"""`compare` with the robust sign-error and convergence (issue 30 items 2 and 4, SPEC §10): one
table per gap under the bootstrap tables (loss_gap without the noise filter, said in a line),
compare/environments.csv, the per-intervention figure, the Description, the count of networks
that did not reach stop_loss and `converged_only` (with its one line for the bootstrap and CMI).
Runs are logged with MlflowClient (no training), as in tests/test_compare_intervals.py."""
import csv
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

from cna_tf import ranking  # noqa: E402

#: (depth, width, lr, seed) of the runs that did not reach stop_loss
UNCONVERGED = {(4, 1.0, 0.05, 0), (4, 1.0, 0.05, 1)}
#: the run that predates the converged tag (it stopped: cna_tf.stopped_at_epoch)
OLDER = (2, 0.25, 0.01, 2)
#: every other measure compare ranks: noise
NOISE = ("cna_area", "l2", "l2_path", "spectral", "bound_2018", "margin", "cna_train",
         "cna_test", "dist_init", "sum_of_fro")


def _log_grid(client, exp, rng, stop_loss=0.01):
    """depth x width x lr x 3 seeds, every run with a 1,000-image test set: the gap grows with
    width, depth and lr; cna_margin is the gap plus a little noise, l2 pure noise."""
    from mlflow.entities import Metric, Param

    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    nets = []
    for depth, width, lr, seed in itertools.product((2, 4), (0.25, 0.5, 1.0), (0.01, 0.05),
                                                    (0, 1, 2)):
        gap = 0.1 * width + 0.02 * depth + 0.3 * lr + 0.01 * rng.standard_normal()
        values = {"gen_gap": gap, "loss_gap": 2 * gap + 0.01 * rng.standard_normal(),
                  "cna_margin": gap + 0.002 * rng.standard_normal(),
                  "train_acc": 1.0, "test_acc": 1.0 - gap}
        values.update({m: rng.standard_normal() for m in NOISE})
        key = (depth, width, lr, seed)
        tags = {"cna_tf.role": "train", "arch": "mlp", "mlflow.parentRunId": grid.info.run_id,
                "cna_tf.final_only": "true", "cna_tf.n_test": "1000"}
        if stop_loss:
            if key == OLDER:
                tags["cna_tf.stopped_at_epoch"] = "17"
            else:
                tags["cna_tf.converged"] = "false" if key in UNCONVERGED else "true"
        rid = client.create_run(exp, tags=tags).info.run_id
        params = {"arch": "mlp", "dataset": "mnist", "depth": depth, "width": width, "lr": lr,
                  "seed": seed, "epochs": 30, "stop_loss": stop_loss}
        client.log_batch(rid, metrics=[Metric(k, v, 0, 17) for k, v in values.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(rid, "FINISHED")
        nets.append(dict(depth=depth, width=width, lr=lr, seed=seed, **values))
    client.set_terminated(grid.info.run_id, "FINISHED")
    return nets


def _compare_run(client, name):
    return client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              "tags.`cna_tf.role` = 'compare'")[0]


def _reference(nets, target, noise_filter):
    nets = sorted(nets, key=lambda n: tuple(repr(n[a]) for a in ("width", "depth", "lr",
                                                                  "seed")))
    hp = {a: [n[a] for n in nets] for a in ("width", "depth", "lr", "seed")}
    measures = ("cna_area", "cna_margin") + NOISE[1:]       # compare's order (METRICS)
    return ranking.sign_errors({m: [n[m] for n in nets] for m in measures},
                               [n[target] for n in nets], hp, n_test=1000,
                               noise_filter=noise_filter)


def test_compare_prints_and_logs_the_sign_error_tables(store, tmp_path, capsys):
    import compare as compare_step

    nets = _log_grid(store, store.create_experiment("signs"), np.random.default_rng(0))
    compare_step.main(["--experiment", "signs", "--replicates", "50"])
    out = capsys.readouterr().out
    # every network is kept; the count of those that did not converge is said
    assert ("Convergence: 2 of 36 networks did not reach stop_loss; 1 older run(s) carry no "
            "converged flag") in out
    assert "They are included (converged_only=false)." in out
    # one table per gap, under the bootstrap tables; the library's numbers on the same networks
    lines = out.splitlines()
    boot = lines.index(next(ln for ln in lines if ln.startswith("Seed-bootstrap intervals of "
                                                                "the correlation with `loss_gap`")))
    for target, noise_filter in (("gen_gap", True), ("loss_gap", False)):
        ref = _reference(nets, target, noise_filter)
        table = compare_step.sign_error_markdown(ref, target)
        ref.n_test = [1000]
        assert compare_step.sign_error_markdown(ref, target) in out
        start = next(k for k, ln in enumerate(lines)
                     if ln.startswith(f"Robust sign-error with `{target}` in All Nets"))
        assert start > boot and table.splitlines()[0] == lines[start]
        header = next(ln for ln in lines[start:] if ln.startswith("| rank |"))
        assert header == "| rank | metric | width | depth | lr | all |"
        first = next(ln for ln in lines[start:] if ln.startswith("| 1 | "))
        assert first.startswith("| 1 | cna_margin | ")         # the gap plus noise: best
        all_cell = first.strip("| ").split(" | ")[-1]
        every = ref["cna_margin"]["all"]
        assert all_cell == f"{every['mean']:.2f} / {every['max']:.2f} ({every['n']})"
        assert every["n"] > 0 and min(ref[m]["all"]["mean"] for m in NOISE) > every["mean"]
    assert "Pairs weighed by Hoeffding's noise filter on 1,000 test points" in out
    assert sum("No noise filter: `loss_gap` is not a difference of error rates" in ln
               for ln in lines) == 1
    # artifacts: environments.csv (every kept environment of both gaps), the figures
    run = _compare_run(store, "signs")
    path = store.download_artifacts(run.info.run_id, "compare/environments.csv", str(tmp_path))
    table = list(csv.DictReader(Path(path).read_text().splitlines()))
    for target, noise_filter in (("gen_gap", True), ("loss_gap", False)):
        ref = _reference(nets, target, noise_filter)
        got = [r for r in table if r["target"] == target]
        assert len(got) == len(ref.environments)
        env = ref.environments[0]
        row = next(r for r in got if (r["axis"], r["a"], r["b"]) ==
                   (env["axis"], str(env["a"]), str(env["b"]))
                   and r["fixed"] == ", ".join(f"{k}={v}" for k, v in env["fixed"].items()))
        assert float(row["cna_margin"]) == pytest.approx(env["losses"]["cna_margin"])
        assert float(row["ess"]) == pytest.approx(env["ess"]) and row["pairs"] == "9"
    names = {a.path for a in store.list_artifacts(run.info.run_id, "compare")}
    assert {"compare/sign_error_gen_gap.png", "compare/sign_error_loss_gap.png"} <= names
    # the Description holds the tables where they fit, and the convergence line
    note = run.data.tags["mlflow.note.content"]
    assert "Convergence: 2 of 36 networks did not reach stop_loss" in note
    assert "Robust sign-error with `gen_gap` in All Nets" in note
    assert run.data.metrics["unconverged"] == 2
    assert run.data.metrics["sign_error_max.cna_margin.gen_gap"] == pytest.approx(
        _reference(nets, "gen_gap", True)["cna_margin"]["all"]["max"])
    # networks.csv says which networks converged (the older run: from its stopped_at_epoch)
    path = store.download_artifacts(run.info.run_id, "compare/networks.csv", str(tmp_path))
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    assert sum(r["converged"] == "False" for r in rows) == 2
    assert sum(r["converged"] == "True" for r in rows) == 34
    assert {r["test_size"] for r in rows} == {"1000"}


def test_converged_only_leaves_them_out_and_says_the_grid_is_incomplete(store, capsys):
    import compare as compare_step

    _log_grid(store, store.create_experiment("conv"), np.random.default_rng(1))
    rows = compare_step.main(["--experiment", "conv", "--replicates", "50",
                              "--converged_only", "true"])
    out = capsys.readouterr().out
    assert "converged_only=true: they are left out, 34 networks remain." in out
    r = next(r for r in rows if (r["scope"], r["metric"], r["target"]) ==
             ("All Nets", "cna_margin", "gen_gap"))
    # (4, 1.0, 0.05) kept one seed of three: compare resamples a pool (its own line says so)
    assert r["boot_n"] == 34 and r["boot_mode"] == "pool"
    assert "1 of the 12 combinations of the other hyperparameters have a single network" in \
        r["boot_note"]
    line = ("converged_only left out 2 networks that did not reach stop_loss: the 34 left are "
            "no longer a complete grid (0 of 12 combinations of ['width', 'depth', 'lr'] lost "
            "every seed, 1 some)")
    # one line for the bootstrap (per gap table) and one for CMI
    assert sum(ln == f"- {line}; the seed bootstrap draws from the networks left (pool mode)"
               for ln in out.splitlines()) == 2
    assert f"CMI in All Nets: not computed: {line}; CMI needs every combination once" in out
    assert _compare_run(store, "conv").data.metrics["runs"] == 36


def test_without_stop_loss_no_network_is_judged(store, capsys):
    import compare as compare_step

    _log_grid(store, store.create_experiment("free"), np.random.default_rng(2), stop_loss=0.0)
    compare_step.main(["--experiment", "free", "--replicates", "20", "--converged_only",
                       "true"])
    out = capsys.readouterr().out
    assert ("Convergence: no run set stop_loss (36 networks trained to their epoch budget): "
            "none is judged.") in out
    assert "converged_only left out" not in out


def _run(tags=None, params=None, metrics=None):
    return SimpleNamespace(data=SimpleNamespace(tags=tags or {}, params=params or {},
                                                metrics=metrics or {}))


def test_run_converged_reads_the_tag_or_derives_it_for_older_runs():
    import compare as compare_step

    f = compare_step.run_converged
    assert f(_run({"cna_tf.converged": "true"})) is True
    assert f(_run({"cna_tf.converged": "false"}, {"stop_loss": "0.01"})) is False
    assert f(_run(params={"stop_loss": "0.0"})) is None and f(_run()) is None
    older = {"stop_loss": "0.01"}
    assert f(_run({"cna_tf.stopped_at_epoch": "12"}, older)) is True
    assert f(_run(params=older, metrics={"loss": 0.3})) is False
    assert f(_run(params=older, metrics={"loss": 0.005})) is True
    # under weight decay the rule read the cross-entropy, not Keras' loss
    assert f(_run(params=older, metrics={"loss": 0.05, "cross_entropy": 0.008})) is True
    assert f(_run(params=older)) is False


def test_sign_error_table_sorts_by_the_mean_over_all_and_marks_empty_cells():
    import compare as compare_step

    hp = {"a": [0, 0, 1, 1, 2, 2], "seed": [0, 1] * 3}
    gap = np.array([0.1, 0.1, 0.5, 0.5, 0.1, 0.1])
    res = ranking.sign_errors({"minus": -gap, "gap": gap, "flat": np.ones(6)}, gap, hp,
                              n_test=10**6)
    text = compare_step.sign_error_markdown(res, "gen_gap")
    body = [ln for ln in text.splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert [ln.split(" | ")[1] for ln in body] == ["gap", "flat", "minus"]
    assert body[0].endswith("| 0.00 / 0.00 (2) | 0.00 / 0.00 (2) |")
    assert body[1].endswith("| 0.50 / 0.50 (2) | 0.50 / 0.50 (2) |")
    # a constant gap keeps no environment: every cell "– (0)"
    none = ranking.sign_errors({"x": np.arange(6.0)}, np.full(6, 0.2), hp)
    row = next(ln for ln in compare_step.sign_error_markdown(none, "gen_gap").splitlines()
               if ln.startswith("| – | x |"))
    assert row == "| – | x | – (0) | – (0) |"


def test_the_gap_study_numbers_come_from_its_csv():
    """docs/results/gap_study.md's sign-error figures (the re-run with the §12 suite, issue 39),
    re-derived from the committed CSV by experiments/gap_study_sign_error.py (the library's
    sign_errors; no MLflow): every measure column of the CSV, all networks and converged only."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import gap_study_sign_error as study

    nets, how = study.load(str(ROOT / "docs" / "results" / "gap_study_networks.csv"))
    assert len(nets) == 96 and "converged column" in how
    assert sum(n["converged"] is False for n in nets) == 12
    assert len(study.measures_of(nets)) == 49
    res = study.sign_error_tables(nets)
    cna_m = res["gen_gap"]["cna_margin"]
    assert (cna_m["all"]["n"], round(cna_m["all"]["mean"], 2)) == (39, 0.54)
    assert round(cna_m["label_shuffle"]["mean"], 2) == 0.83
    assert round(res["gen_gap"]["pacbayes_mag_flatness"]["all"]["mean"], 2) == 0.00
    assert round(res["gen_gap"]["num_params"]["n_train"]["mean"], 2) == 0.00
    assert all(v["all"]["max"] > 0 for v in res["gen_gap"].values())
    kept = study.sign_error_tables([n for n in nets if n["converged"]])
    assert round(kept["gen_gap"]["cna_margin"]["all"]["mean"], 2) == 0.52
    doc = (ROOT / "docs" / "results" / "gap_study.md").read_text()
    import compare as compare_step

    for target in ("gen_gap", "loss_gap"):
        res[target].n_test, res[target].n_test_note = [10000], ""
        compare_table = compare_step.sign_error_markdown(res[target], target)
        table = "\n".join(ln for ln in compare_table.splitlines() if ln.startswith("|"))
        assert table in doc, target
