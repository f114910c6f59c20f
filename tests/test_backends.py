"""The core and the callback under KERAS_BACKEND=jax and torch agree with TensorFlow.

Each backend runs tests/backend_worker.py in its own process on the same saved weights.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("backend_worker.py")
ROOT = WORKER.parent.parent


def run_worker(backend, out_dir, save=False):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(WORKER), str(out_dir)] + (["--save-weights"] if save else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{backend} worker failed:\n{proc.stderr[-4000:]}"
    return json.loads((Path(out_dir) / f"{backend}.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("backends")
    return out, run_worker("tensorflow", out, save=True)


def close(a, b, rtol=1e-4, atol=1e-5):
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_agrees_with_tensorflow(reference, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"{backend} is not installed: `make test` installs it (Makefile BACKENDS)")
    out, ref = reference
    got = run_worker(backend, out)
    assert got["backend"] == backend and not got["tensorflow_imported"]
    # tf.data needs TensorFlow: one clear error naming the backend and the alternative
    assert ref["pipeline_error"] is None
    assert f"backend {backend!r}" in got["pipeline_error"]
    assert "ds.preprocess(ds.x_train)" in got["pipeline_error"]
    assert got["layer_names"] == ref["layer_names"]
    np.testing.assert_allclose(got["sums"], ref["sums"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["outputs"], ref["outputs"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["beta"], ref["beta"], rtol=1e-4, atol=1e-4)
    assert close(got["cna"], ref["cna"]) and close(got["cna_area"], ref["cna_area"])
    for key, value in ref["evaluate"].items():
        assert close(got["evaluate"][key], value), (key, got["evaluate"][key], value)
    # the flatness α search's box holds inside the compiled step: every weight moved to its face
    for res in (ref, got):
        assert res["box_moves"] == pytest.approx([0.01] * 4, abs=1e-6), res["backend"]
    # the subclassed twin of the same network: the functional model's figures, on every backend
    for res in (ref, got):
        assert res["sub_layer_names"] == res["layer_names"]
        np.testing.assert_allclose(res["sub_sums"], res["sums"], rtol=1e-5, atol=1e-4)
        for key, value in res["evaluate"].items():
            assert close(res["sub_evaluate"][key], value, rtol=1e-5), (key, res["backend"])
    assert got["sub_history"].keys() == ref["sub_history"].keys() == {"0", "1"}
    for epoch, metrics in ref["sub_history"].items():
        for key, value in metrics.items():
            assert close(got["sub_history"][epoch][key], value, rtol=1e-4, atol=1e-4), \
                (epoch, key, got["sub_history"][epoch][key], value)
    assert got["history"].keys() == ref["history"].keys() == {"0", "1", "2"}
    for epoch, metrics in ref["history"].items():
        assert metrics.keys() == got["history"][epoch].keys()
        for key, value in metrics.items():
            assert close(got["history"][epoch][key], value, rtol=1e-4, atol=1e-4), \
                (epoch, key, got["history"][epoch][key], value)
