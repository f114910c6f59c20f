"""`make bench` as documented, at --smoke sizes: every bench/ script runs and writes its JSON.

One run of the make target (``make bench BENCH_ARGS="--smoke --out DIR"``, the documented
command with size arguments; tests/test_docs.py counts it as run here) feeds every test below:
each checks its script's JSON. ``--smoke`` is ``--quick`` at the smallest sizes that still run
each measurement once (bench/common.py; a script with no smaller size runs ``--quick``'s, as
bench_alpha does). No time limits are asserted: timings on a shared machine say
nothing about correctness. The numbers' targets are checked by reading bench/results and
docs/performance.md, not here.
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """``make bench BENCH_ARGS="--smoke --out DIR"`` once: (DIR, its output)."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MLFLOW_ENABLE_ASYNC_LOGGING="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["make", "bench", f"BENCH_ARGS=--smoke --out {out}"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_make_bench_runs_every_script(bench_run):
    out, _ = bench_run
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    scripts = re.findall(r"bench/(bench_\w+)\.py", recipe)
    # bench_backend compares Keras backends (and a GPU): by hand, docs/performance.md
    assert sorted(scripts) == sorted(p.stem for p in BENCH.glob("bench_*.py")
                                     if p.stem != "bench_backend")
    assert len(list(out.glob("*.json"))) == len(scripts)


def run_bench(script: str, bench_run) -> dict:
    """The JSON that ``script`` wrote in the shared `make bench` run."""
    out, log = bench_run
    name = script[len("bench_"):-len(".py")]
    # <name>_<backend>.json (a backend name has no "_": callback_* is not callback_memory_*)
    files = [f for f in out.glob(f"{name}_*.json") if "_" not in f.stem[len(name) + 1:]]
    assert len(files) == 1, (files, log[-2000:])
    data = json.loads(files[0].read_text())
    assert data["quick"] is True and data["smoke"] is True
    assert {"platform", "python", "cpus", "keras", "backend"} <= set(data["machine"])
    assert isinstance(data["met"], bool)
    return data


def positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_bench_alpha(bench_run):
    d = run_bench("bench_alpha.py", bench_run)
    assert d["n"] == 2000
    assert positive(d["vectorized_s"], d["loop_s"], d["speedup"], d["float32_10k_s"])


def test_bench_probe(bench_run):
    d = run_bench("bench_probe.py", bench_run)
    assert [c["model"] for c in d["cases"]] == ["mlp", "resnet18"]
    for c in d["cases"]:
        assert {"predict", "probe", "usual"} <= set(c["seconds"])
        assert positive(*c["seconds"].values(), c["ratio_probe_predict"],
                        c["ratio_usual_predict"], c["n"], c["n_usual"], c["layers"])
    assert {(m["model"], m["method"]) for m in d["memory"]} == {
        ("mlp", "predict"), ("mlp", "probe"), ("mlp", "usual")}
    for m in d["memory"]:
        assert positive(m["rss_before_mb"], m["peak_rss_mb"], m["fetched_mb"], m["seconds"])
        assert m["peak_rss_mb"] >= m["rss_before_mb"]
    assert {"mlp/predict", "mlp/probe", "mlp/usual"} <= set(d["memory_growth"])
    usual, probe = d["memory_growth"]["mlp/usual"], d["memory_growth"]["mlp/probe"]
    assert usual["fetched_mb"][1] > probe["fetched_mb"][1]
    sweep = d["batch_sweep"]
    assert {r["model"] for r in sweep} == {"mlp", "resnet18"}
    assert {r["batch_size"] for r in sweep} >= {64, 2048}
    for r in sweep:
        assert positive(r["predict_s"], r["probe_s"], r["ratio_median"], r["ratio_fastest"],
                        r["ratio_cpu"])
    assert isinstance(d["met_fastest"], bool) and isinstance(d["met_cpu"], bool)


def test_bench_measures(bench_run):
    d = run_bench("bench_measures.py", bench_run)
    assert positive(d["cna_area_s"], d["n"])
    for key in ("cna_area/crossing", "cna_area/shifted", "curves/crossing", "beta/L5",
                "beta/L20", "cna/pearson", "cna/spearman", "cna/kendall"):
        assert positive(d["results"][key]["seconds"]), key
    assert positive(d["results"]["cna_area/crossing"]["area"])


def test_bench_callback(bench_run):
    d = run_bench("bench_callback.py", bench_run)
    assert {"plain", "callback", "callback_mlflow"} == set(d["epoch_s"])
    assert positive(*d["epoch_s"].values(), d["plain_epoch_s"], d["light_s"],
                    d["full_snapshot_s"])
    assert all(math.isfinite(v) for v in d["overhead"].values())
    assert len(d["epoch_intervals"]["callback"]) == d["rounds"] * (d["epochs"] - 2)
    assert d["defaults"] == {"every": 1, "full_every": 20, "max_samples": 2000}


def test_bench_callback_memory(bench_run):
    d = run_bench("bench_callback_memory.py", bench_run)
    assert [r["n"] for r in d["runs"]] == [1200, 6000]
    for r in d["runs"]:
        assert r["raw_train_mb"] == pytest.approx(r["n"] * 3072 / 2**20)
        assert positive(r["plain"]["peak_rss_mb"], r["callback"]["peak_rss_mb"],
                        r["callback"]["seconds"], r["allowed_mb"])
        assert r["callback"]["peak_rss_mb"] >= r["callback"]["rss_before_mb"]
        assert r["snapshots"] == [0, 1] and r["full_train_samples"] == r["n"]
        assert r["extra_fraction_of_raw"] == pytest.approx(r["extra_peak_mb"]
                                                           / r["raw_train_mb"])
    assert math.isfinite(d["extra_fraction_of_raw"])


def test_bench_grid(bench_run):
    d = run_bench("bench_grid.py", bench_run)
    assert d["max_cells"] == 2 and d["cells"] == 2
    assert [r["workers"] for r in d["runs"]] == [1, 2]
    assert all(r["finished"] == 2 and r["failed"] == 0 for r in d["runs"])
    assert positive(d["seconds_1_worker"], d["seconds_2_workers"], d["speedup"])
    assert d["speedup"] == d["seconds_1_worker"] / d["seconds_2_workers"]


def test_bench_stream(bench_run):
    d = run_bench("bench_stream.py", bench_run)
    assert [r["n"] for r in d["runs"]] == [600, 1200]
    for r in d["runs"]:
        assert positive(r["rss_before_mb"], r["peak_rss_mb"], r["seconds"], r["batch_size"])
        assert r["peak_rss_mb"] >= r["rss_before_mb"]
        assert r["dataset_uint8_mb"] == pytest.approx(r["n"] * 3072 / 2**20)
        assert math.isfinite(r["cna_train"]) and r["alpha_train_mean"] > 0
    assert math.isfinite(d["bytes_per_image_growth"]) and d["peak_fraction_of_dataset"] > 0


def test_bench_layer_outputs(bench_run):
    d = run_bench("bench_layer_outputs.py", bench_run)
    assert [c["model"] for c in d["cases"]] == ["mlp", "resnet18"]
    for c in d["cases"]:
        assert positive(c["seconds"]["layer_outputs"], c["seconds"]["per_layer_submodels"],
                        c["seconds"]["one_submodel"], c["ratio_per_layer_to_layer_outputs"],
                        c["n"], c["layers"])
        assert c["max_abs_diff"] <= 1e-3


def test_bench_flatness(bench_run):
    d = run_bench("bench_flatness.py", bench_run)
    names = {"pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness"}
    assert {k.split("/", 1)[0] for k in d["results"]} == {"digits"}  # --quick: digits only
    assert names <= {k.split("/", 1)[1] for k in d["results"]}
    assert positive(d["results"]["digits/total_seconds"])
    for key, r in d["results"].items():
        if key.split("/", 1)[1] not in names:
            continue
        assert positive(r["flatness"], r["value"], r["forward_passes"], r["seconds"],
                        r["steps"]), key
        assert 0 < r["value"] <= 2 and r["flatness"] == pytest.approx(1 / r["value"] ** 2)
        if key.endswith("sharpness_mag_flatness"):
            assert r["gradient_steps"] > 0


def test_bench_score(bench_run):
    d = run_bench("bench_score.py", bench_run)
    assert d["networks"] == 1 and d["rounds"] == 1  # --quick: one MLP, one forced run
    assert len(d["overhead_rounds_s"]) == 1 and len(d["overhead_rounds_s"][0]) == 1
    assert positive(d["overhead_per_network_s"], d["cpu_per_network_s"],
                    d["predict_per_network_s"], d["ratio_overhead_predict"])
    (part,) = d["parts"]
    assert part["arch"] == "mlp" and part["dataset"] == "digits"
    assert positive(part["load_s"], part["data_s"], part["log_s"], part["predict_s"])
    assert d["target_s"] == 1.0


def test_bench_ranking(bench_run):
    d = run_bench("bench_ranking.py", bench_run)
    assert (d["networks"], d["measures"]) == (96, 15) and d["environments"] > 0
    assert {"sign_errors", "sign_errors_no_filter", "bootstrap"} == set(d["results"])
    assert positive(d["sign_errors_s"], d["ratio_to_bootstrap"],
                    *(r["seconds"] for r in d["results"].values()))


def test_bench_suite(bench_run):
    d = run_bench("bench_suite.py", bench_run)
    assert set(d["results"]) == {"mlp/digits", "vgg18/digits"}  # --quick: both on digits
    assert d["target_s"] == 1.0 and d["met"] == all(
        r["cheap_seconds"] < 1.0 for r in d["results"].values())
    for key, r in d["results"].items():
        assert positive(r["epoch_seconds"], r["cheap_seconds"], r["cheap_seconds_warm"],
                        r["cheap_ratio_to_epoch"], r["total_ratio_to_epoch"]), key
        assert r["cheap_measures"] == 28 and r["m"] == 150   # --smoke's size
        assert set(r["searches"]) == {"pacbayes_flatness", "pacbayes_mag_flatness",
                                      "sharpness_flatness", "sharpness_mag_flatness"}
        for name, s in r["searches"].items():
            assert positive(s["seconds"], s["search_seconds"], s["ratio_to_epoch"]), name
            assert 0 < s["value"] <= 2 and s["search_seconds"] <= s["seconds"]
