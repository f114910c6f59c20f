"""Bad input gets one clear error naming the problem and the fix (or a NaN with a reason).

Cases covered elsewhere, listed so this file is the index: a config key typo and an unknown
config name (test_pipelines), a NaN training loss (test_pipelines, run FAILED with the reason),
constant images (test_callback: CNA NaN, tag with reason, training goes on), an untraceable
subclassed model (test_probe), missing dataset files offline (test_data).
"""
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import cna_tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))

import cells  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return cna_tf.data.load("digits", n_train=200, n_test=100)


@pytest.fixture
def mlp(digits):
    m = cna_tf.models.build("mlp", digits.input_shape, 10, width=0.05, depth=2, seed=0)
    m.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return m


@pytest.mark.parametrize("params, match", [
    ({"arch": "resnet50"}, r"unknown arch 'resnet50'; valid: mlp, vgg18, resnet18, resnet101"),
    ({"dataset": "cifar11"}, r"unknown dataset 'cifar11'; valid: digits, .*npz:PATH"),
])
def test_unknown_arch_or_dataset_fails_when_the_config_is_read(params, match):
    with pytest.raises(cells.ConfigError, match=match):
        cells.normalize(params)
    with pytest.raises(cells.ConfigError, match=match):
        cells.load_config({"cells": [params]})


def test_arch_and_dataset_spellings_map_to_one_cell():
    assert cells.normalize({"arch": "ResNet-18", "dataset": "F-MNIST"})["arch"] == "resnet18"
    assert cells.cell_key({"arch": "ResNet-18", "dataset": "fmnist"}) == \
        cells.cell_key({"arch": "resnet18", "dataset": "fashion_mnist"})


def test_unknown_arch_or_dataset_in_the_library():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'; valid names are mlp"):
        cna_tf.models.build("vgg19", (8, 8, 1), 10)
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'; valid names: digits"):
        cna_tf.data.load("cifar11")


@pytest.mark.parametrize("bad, match", [
    (12, r"labels must lie in \[0, 9\] for a model with 10 outputs; found 0..12"),
    (-1, r"labels must lie in \[0, 9\] for a model with 10 outputs; found -1..9"),
])
def test_labels_out_of_range(digits, mlp, bad, match):
    y = digits.y_train.copy()
    y[0] = bad
    with pytest.raises(ValueError, match=match):
        cna_tf.evaluate(mlp, (digits.x_train, y), digits.test, preprocess=digits.preprocess,
                        value_range=digits.value_range)
    cb = cna_tf.CNACallback((digits.x_train, y), digits.test, preprocess=digits.preprocess,
                            value_range=digits.value_range, mlflow=False)
    with pytest.raises(ValueError, match="CNACallback train_data: " + match):
        mlp.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
                callbacks=[cb])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        cna_tf.margins(np.full((2, 10), 0.1), np.array([0, 10]))


def test_one_hot_or_fractional_labels_in_the_callback(digits):
    onehot = np.eye(10)[digits.y_train]
    with pytest.raises(ValueError, match=r"integer class indices of shape \(n,\).*argmax"):
        cna_tf.CNACallback((digits.x_train, onehot), digits.test, preprocess=digits.preprocess,
                           value_range=digits.value_range)
    with pytest.raises(ValueError, match="integer class indices"):
        cna_tf.CNACallback((digits.x_train, digits.y_train + 0.5), digits.test,
                           preprocess=digits.preprocess, value_range=digits.value_range)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_pixels(digits, value):
    x = digits.x_train.astype("float32")
    x[3, 2, 2, 0] = value
    with pytest.raises(ValueError, match="image 3 has NaN or inf pixel values"):
        cna_tf.alpha(x, value_range=(0, 16))
    with pytest.raises(ValueError, match="NaN or inf"):
        cna_tf.CNACallback((x, digits.y_train), digits.test, preprocess=digits.preprocess,
                           value_range=(0, 16))


def test_nan_pixels_in_a_local_npz_dataset(tmp_path):
    x = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    x[1, 0, 0, 0] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=x, y_train=np.arange(20) % 2, x_test=x[:10],
             y_test=np.arange(10) % 2)
    with pytest.raises(ValueError, match="NaN|finite"):
        cna_tf.data.load(f"npz:{path}", value_range=(0.0, 1.0))


def test_fewer_than_two_probe_layers():
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(5)(inp))
    model = keras.Model(inp, out)
    with pytest.raises(ValueError, match="needs at least 2"):
        cna_tf.ActivationProbe(model)
    with pytest.raises(ValueError, match="at least 2 probe layers, got L=1"):
        cna_tf.beta(np.ones((5, 1)))


def test_wrong_input_shape_for_the_probe(digits, mlp):
    probe = cna_tf.ActivationProbe(mlp)
    with pytest.raises(ValueError):
        probe.layer_sums(np.zeros((4, 28, 28, 1), "float32"))
