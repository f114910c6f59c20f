"""Bad input gets one clear error naming the problem and the fix (or a NaN with a reason).

Cases covered elsewhere, listed so this file is the index: a config key typo and an unknown
config name (test_pipelines), a NaN training loss (test_pipelines, run FAILED with the reason),
constant images (test_callback: CNA NaN, tag with reason, training goes on), an untraceable
subclassed model (test_probe), missing dataset files offline (test_data), every form of bad
labels (test_measures: smoothed, mixed, multi-hot, fractional, non-numeric, wrong shape),
initial weights that do not match the model (test_baselines: a get_weights() list of another
model, a wrong type), malformed streams (test_streams: a generator, unbatched elements, dict
elements, a reshuffling stream).
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


SMOOTHED = r"must be one-hot rows with exactly one 1 per row.*smoothed or mixed labels\?"


def test_soft_or_fractional_labels_are_one_error_at_every_entry_point(digits, mlp):
    """SPEC §6: one validator; exact one-hot rows are accepted (test_callback, test_evaluate),
    smoothed or mixed rows are a ValueError naming the fix wherever labels are accepted."""
    onehot = keras.utils.to_categorical(digits.y_train, 10)
    smooth = onehot * 0.9 + 0.01                           # label smoothing 0.1
    with pytest.raises(ValueError, match="CNACallback train_data: labels .*" + SMOOTHED):
        cna_tf.CNACallback((digits.x_train, smooth), digits.test, preprocess=digits.preprocess,
                           value_range=digits.value_range)
    with pytest.raises(ValueError, match="train: labels .*" + SMOOTHED):
        cna_tf.evaluate(mlp, (digits.x_train, smooth), digits.test,
                        preprocess=digits.preprocess, value_range=digits.value_range)
    with pytest.raises(ValueError, match=SMOOTHED):
        cna_tf.margins(np.full((200, 10), 0.1), smooth)
    with pytest.raises(ValueError, match=r"train_data: labels .*float64 values such as \[\d\.5"):
        cna_tf.CNACallback((digits.x_train, digits.y_train + 0.5), digits.test,
                           preprocess=digits.preprocess, value_range=digits.value_range)
    with pytest.raises(ValueError, match=r"one-hot labels have 12 columns but the model has 10"):
        cb = cna_tf.CNACallback((digits.x_train, np.eye(12)[digits.y_train]), digits.test,
                                preprocess=digits.preprocess, value_range=digits.value_range,
                                mlflow=False)
        mlp.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
                callbacks=[cb])


@pytest.mark.parametrize("cut", [-7, 7])
def test_model_inputs_of_another_length_than_the_raw_images(digits, cut):
    """Shorter inputs used to die in an IndexError, longer ones to pair alpha and beta of
    different images silently."""
    x = digits.preprocess(digits.x_train)
    x = x[:cut] if cut < 0 else np.concatenate([x, x[:cut]])
    with pytest.raises(ValueError, match=rf"train_data: 200 raw images but model inputs of "
                                         rf"{200 + cut} samples; the third element must hold the "
                                         r"model inputs of the same images.*preprocess="):
        cna_tf.CNACallback((digits.x_train, digits.y_train, x), digits.test,
                           preprocess=digits.preprocess, value_range=digits.value_range)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_samples": 1}, r"max_samples must be an integer >= 2 \(CNA correlates at least 2 "
                         r"samples\) or None for all samples, got 1"),
    ({"full_max_samples": 0}, r"full_max_samples must be an integer >= 2 .* got 0"),
    ({"full_every": -1}, r"full_every must be >= 0 \(epochs between full snapshots; 0 disables "
                         r"the periodic ones\), got -1"),
    ({"every": 0}, r"every must be an integer >= 1 \(epochs between CNA measurements"),
    ({"method": "pearsonr"}, r"method \(the correlation of CNA\) must be 'pearson', "
                             r"'spearman' or 'kendall', got 'pearsonr'"),
])
def test_callback_argument_checks(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cna_tf.CNACallback(digits.train, digits.test, preprocess=digits.preprocess,
                           value_range=digits.value_range, **kwargs)


def test_callback_needs_two_samples(digits):
    with pytest.raises(ValueError, match=r"test_data needs at least 2 samples \(CNA is a "
                                         r"correlation over samples\), got 1; pass at least 2"):
        cna_tf.CNACallback(digits.train, (digits.x_test[:1], digits.y_test[:1]),
                           preprocess=digits.preprocess, value_range=digits.value_range)


@pytest.mark.parametrize("images, kwargs, match", [
    (np.zeros((0, 8, 8), np.uint8), {}, r"empty batch \(0 images, shape \(0, 8, 8\)\); pass "
                                        r"at least one image"),
    (np.zeros((3, 0), np.uint8), {}, r"images without pixels \(shape \(3, 0\)\)"),
    (np.array([["a", "b"], ["c", "d"]]), {}, r"numeric pixel values \(integer, float or bool\), "
                                             r"got dtype <U1; convert the images"),
    (np.array([[None, 1], [2, 3]]), {}, r"got dtype object; convert"),
    ([np.zeros((2, 2)), np.zeros((3, 3))], {"value_range": (0, 1)},
     r"could not be stacked into one .*Resize or crop them to one shape"),
    (np.zeros((2, 4)), {"value_range": 5}, r"value_range must be a pair of numbers \(low, high\)"
                                           r", got 5; pass value_range=\(low, high\).*e\.g\. "
                                           r"\(0, 255\) for uint8"),
    (np.zeros((2, 4)), {"value_range": (0,)}, r"pair of numbers \(low, high\), got \(0,\)"),
    (np.zeros((2, 4)), {"value_range": (0, 1, 2)}, r"pair of numbers .*got \(0, 1, 2\)"),
    (np.zeros((2, 4)), {"value_range": ("lo", "hi")}, r"pair of numbers .*got \('lo', 'hi'\)"),
    (np.zeros((2, 4)), {"value_range": "0-255"}, r"pair of numbers .*got '0-255'"),
    (np.zeros((2, 4)), {"value_range": (1, 0)}, r"low < high \(both finite\), got \(1, 0\); "
                                                r"pass value_range"),
    (np.zeros((2, 4)), {"value_range": (0, np.inf)}, r"low < high \(both finite\)"),
])
def test_alpha_bad_batches_and_value_ranges(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cna_tf.alpha(images, **kwargs)


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
    want = (r"ActivationProbe: model '{}' expects inputs of shape \(None, 8, 8, 1\) \(None = any "
            r"size\), got shape \(4, 28, 28, 1\)\. Pass the model inputs").format(mlp.name)
    x = np.zeros((4, 28, 28, 1), "float32")
    for call in (probe.layer_sums, probe.layer_sums_and_outputs, probe.layer_outputs,
                 probe.layer_sums_in_memory):
        with pytest.raises(ValueError, match=want):
            call(x)
    with pytest.raises(ValueError, match=r"takes 1 input\(s\) of shape \(None, 8, 8, 1\), got 2 "
                                         r"array\(s\)"):
        probe.layer_sums([x, x])
