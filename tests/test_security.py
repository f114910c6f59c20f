"""Security defaults: loopback servers, no pickle from untrusted files, sanitized artifact names."""
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import cna_tf
from cna_tf.tracking import sanitize_artifact_name

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, want", [
    ("../../etc/passwd", "passwd"),
    ("/abs/path/fig.png", "fig.png"),
    ("a b;rm -rf ~.csv", "a_b_rm_-rf_.csv"),
    ("..", "artifact"),
    ("", "artifact"),
])
def test_artifact_names_are_sanitized(name, want):
    got = sanitize_artifact_name(name)
    assert got == want
    assert "/" not in got and not got.startswith(".")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    obj = np.array([{"x": 1}], dtype=object)
    np.savez(path, x_train=obj, y_train=np.zeros(1), x_test=obj, y_test=np.zeros(1))
    with pytest.raises(ValueError, match="pickle|Object arrays"):
        cna_tf.data.load(f"npz:{path}")


def test_cifar_batches_refuse_code_objects():
    from cna_tf.data.formats import RestrictedUnpickler
    import io

    payload = pickle.dumps(print)  # a global that is not a container or a numpy array
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        RestrictedUnpickler(io.BytesIO(payload)).load()


def test_servers_bind_loopback_by_default():
    make = (ROOT / "Makefile").read_text()
    for line in make.splitlines():
        if re.search(r"mlflow (ui|server)", line):
            assert "--host 127.0.0.1" in line, line
    for path in list((ROOT / "tests").glob("*.py")) + list((ROOT / "pipelines").glob("*.py")):
        if path.name != "test_security.py":
            assert "0.0.0.0" not in path.read_text(), path


def test_train_saves_models_that_load_in_safe_mode(tmp_path):
    import keras

    model = cna_tf.models.build("mlp", (8, 8, 1), 10, width=0.05, depth=2)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    assert "safe_mode=False" not in (ROOT / "pipelines" / "train.py").read_text()
