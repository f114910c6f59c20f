"""`compare` over runs that logged SPEC §8's flatness names in two forms: `cna_tf.flatness`'s
1/σ′² (``flatness: true`` with ``suite: none``, and every run from before the suite) and SPEC
§12's √(µ/m) report (``suite: all`` or ``cheap``). Side by side they do not compare, so compare
leaves those three names out of the ranking and says why in one line. Runs are logged with
MlflowClient (no training), as in tests/test_compare_sign_error.py."""
import csv
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import compare as compare_step  # noqa: E402

FLATNESS = ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness")


def _run(params, metrics=FLATNESS):
    return SimpleNamespace(data=SimpleNamespace(params=params, tags={},
                                                metrics={m: 1.0 for m in metrics}))


def test_the_form_follows_the_runs_suite_parameter():
    assert compare_step.flatness_form(_run({"suite": "all"})) == "suite"
    assert compare_step.flatness_form(_run({"suite": "cheap", "flatness": "true"})) == "suite"
    assert compare_step.flatness_form(_run({"suite": "none", "flatness": "true"})) == "raw"
    assert compare_step.flatness_form(_run({"flatness": "true"})) == "raw"  # before the suite
    # what the step resolved wins over what was given
    assert compare_step.flatness_form(_run({"suite": "x", "resolved.suite": "all"})) == "suite"
    # one form, or runs without the measures: nothing to say
    assert compare_step.mixed_flatness([_run({"suite": "all"}), _run({"suite": "cheap"})]) == ""
    assert compare_step.mixed_flatness([_run({"suite": "none"}), _run({})]) == ""
    assert compare_step.mixed_flatness([_run({"suite": "all"}),
                                        _run({"suite": "none"}, metrics=("l2",))]) == ""
    line = compare_step.mixed_flatness([_run({"suite": "all"}), _run({"suite": "none"}),
                                        _run({})])
    assert line.startswith("Flatness: 2 run(s) logged pacbayes_flatness, pacbayes_mag_flatness, "
                           "sharpness_mag_flatness as SPEC §8's 1/σ′²")
    assert "and 1 as SPEC §12's √(µ/m)" in line


def test_compare_leaves_the_two_forms_out_and_says_why(store, tmp_path, capsys):
    from mlflow.entities import Metric, Param

    exp = store.create_experiment("forms")
    rng = np.random.default_rng(0)
    for width, seed, suite in itertools.product((0.25, 0.5, 1.0), (0, 1), ("all", "none")):
        gap = 0.1 * width + 0.01 * rng.standard_normal()
        sigma = 0.5 / (1 + width)
        # the same σ′ in its two forms: §8's 1/σ′² and §12's √(1/(σ′² m)), m = 1,000
        flat = 1 / sigma ** 2 if suite == "none" else np.sqrt(1 / sigma ** 2 / 1000)
        values = {"gen_gap": gap, "loss_gap": 2 * gap, "cna_margin": gap, "l2": width,
                  "train_acc": 1.0, "test_acc": 1.0 - gap, **{m: flat for m in FLATNESS}}
        rid = store.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                          "cna_tf.final_only": "true"}).info.run_id
        params = {"arch": "mlp", "dataset": "mnist", "width": width, "seed": seed,
                  "suite": suite, "flatness": "true"}
        store.log_batch(rid, metrics=[Metric(k, v, 0, 5) for k, v in values.items()],
                        params=[Param(k, str(v)) for k, v in params.items()])
        store.set_terminated(rid, "FINISHED")

    rows = compare_step.main(["--experiment", "forms", "--all_runs", "true",
                              "--replicates", "20"])
    out = capsys.readouterr().out
    assert {r["metric"] for r in rows} & set(FLATNESS) == set()
    assert {"cna_margin", "l2"} <= {r["metric"] for r in rows}
    line = next(ln for ln in out.splitlines() if ln.startswith("Flatness: "))
    assert "6 run(s) logged" in line and "and 6 as SPEC §12's" in line
    assert "not ranked here (compare/networks.csv keeps them as logged)" in line
    run = store.search_runs([exp], "tags.`cna_tf.role` = 'compare'")[0]
    assert line in run.data.tags["mlflow.note.content"]
    path = store.download_artifacts(run.info.run_id, "compare/networks.csv", str(tmp_path))
    nets = list(csv.DictReader(Path(path).read_text().splitlines()))
    assert len(nets) == 12 and all(float(n["pacbayes_flatness"]) > 0 for n in nets)
