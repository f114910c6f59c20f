"""cna_tf.models: the paper's architectures (SPEC §4) build, run, save/load and are probeable."""
import keras
import numpy as np
import pytest

import cna_tf
from cna_tf import models

# Small widths keep the whole file fast on a 2-core CPU.
WIDTHS = {"mlp": 0.125, "vgg18": 0.125, "resnet18": 0.125, "resnet101": 0.0625}
SHAPES = [(8, 8, 1), (32, 32, 3)]


def _x(shape, n=4, seed=0):
    return np.random.default_rng(seed).random((n,) + tuple(shape), dtype=np.float32)


def _weighted(model):
    return [l for l in model.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))]


@pytest.fixture(scope="module")
def built():
    """One model per (architecture, shape), shared by the forward/probe/save tests."""
    return {(name, shape): models.build(name, shape, 10, width=WIDTHS[name], seed=1)
            for name in models.ARCHITECTURES for shape in SHAPES}


def test_architectures_listed():
    assert models.ARCHITECTURES == ("mlp", "vgg18", "resnet18", "resnet101")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_forward_and_probe(built, name, shape):
    model = built[(name, shape)]
    assert model.name == f"{name}_w{WIDTHS[name]:g}"
    assert model.layers[-1].name == "classifier"
    x = _x(shape)
    y = model.predict(x, verbose=0, batch_size=len(x))
    assert y.shape == (len(x), 10)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
    n_weighted = len(_weighted(model))
    assert n_weighted == models.count_weighted_layers(model)
    assert n_weighted == {"mlp": 6, "vgg18": 18, "resnet18": 21, "resnet101": 105}[name]
    probe = cna_tf.ActivationProbe(model)
    sums = probe.layer_sums(x)
    assert sums.shape == (len(x), n_weighted - 1)
    assert np.all(np.isfinite(sums))
    assert "classifier" not in probe.layer_names


def test_downsampling_skipped_below_two():
    vgg = models.build("vgg18", (8, 8, 1), 3, width=0.0625)
    pools = [l.name for l in vgg.layers if isinstance(l, keras.layers.MaxPooling2D)]
    assert pools == ["block1_pool", "block2_pool", "block3_pool"]  # 8 -> 4 -> 2 -> 1
    assert vgg.get_layer("block5_4_conv").output.shape[1:3] == (1, 1)
    vgg28 = models.build("vgg18", (28, 28, 1), 3, width=0.0625)
    assert vgg28.get_layer("block5_4_conv").output.shape[1:3] == (1, 1)  # 28,14,7,3,1
    # Non-square: only the side that is still >= 2 is halved.
    rect = models.build("vgg18", (32, 4), 3, width=0.0625)
    assert rect.get_layer("block5_4_conv").output.shape[1:3] == (2, 1)
    res = models.build("resnet18", (8, 8), 3, width=0.0625)
    assert res.input_shape == (None, 8, 8)
    assert res.get_layer("stage4_block2_2_conv").output.shape[1:3] == (1, 1)
    assert res.predict(_x((8, 8), n=2), verbose=0).shape == (2, 3)


@pytest.mark.parametrize("name", ["mlp", "vgg18", "resnet18"])
def test_save_load_round_trip(built, tmp_path, name):
    model = built[(name, (8, 8, 1))]
    x = _x((8, 8, 1), n=3, seed=5)
    want = model.predict(x, verbose=0)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.name == model.name
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


def test_resnet18_parameter_count():
    model = models.build("resnet18", (32, 32, 3), 10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 11_173_962  # the CIFAR ResNet-18 of the published PyTorch code
    assert model.count_params() == pytest.approx(11.2e6, rel=0.01)  # + BN moving statistics


def test_mlp_default_is_paper_mlp():
    model = models.build("mlp", (28, 28, 1), 10)
    dense = _weighted(model)
    assert [l.units for l in dense] == [500] * 5 + [10]
    assert all(l.activation is keras.activations.relu for l in dense[:-1])
    assert dense[-1].activation is keras.activations.softmax
    assert all(l.kernel_regularizer is None and l.bias_regularizer is None for l in dense)
    assert [l.units for l in _weighted(models.build("mlp", (8, 8), 10, depth=2, units=7))] == \
        [7, 7, 10]
    assert [l.units for l in _weighted(models.build("mlp", (64,), 10, width=0.5))] == \
        [250] * 5 + [10]


def test_width_scaling_and_minimum_one_channel():
    vgg = models.build("vgg18", (8, 8, 1), 4, width=0.001)
    assert all(l.filters == 1 for l in vgg.layers if isinstance(l, keras.layers.Conv2D))
    vgg = models.build("vgg18", (8, 8, 1), 4, width=0.25)
    convs = [l.filters for l in vgg.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs == [16] * 2 + [32] * 2 + [64] * 4 + [128] * 8
    assert vgg.get_layer("fc").units == 128


def test_seed_is_deterministic_and_per_layer():
    a = models.build("mlp", (8, 8), 10, width=0.125, depth=3, seed=3)
    b = models.build("mlp", (8, 8), 10, width=0.125, depth=3, seed=3)
    c = models.build("mlp", (8, 8), 10, width=0.125, depth=3, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    ka = [l.kernel.numpy() for l in _weighted(a)]
    assert not np.allclose(ka[1], ka[2])  # same shape, different layer seeds
    assert not np.allclose(ka[0], _weighted(c)[0].kernel.numpy())


def test_name_aliases():
    assert models.build("ResNet-18", (8, 8, 1), 2, width=0.0625).name == "resnet18_w0.0625"


@pytest.mark.parametrize("args,kw,match", [
    (("alexnet", (32, 32, 3), 10), {}, "mlp, vgg18, resnet18, resnet101"),
    (("vgg18", (32, 32, 3), 10), {"width": 0}, "width must be"),
    (("vgg18", (32, 32, 3), 10), {"width": -1.0}, "width must be"),
    (("mlp", (8, 8), 1), {}, "num_classes must be"),
    (("vgg18", (784,), 10), {}, r"\(H, W\) or \(H, W, C\)"),
    (("resnet18", (8, 8, 1, 1), 10), {}, r"\(H, W\) or \(H, W, C\)"),
    (("resnet18", (0, 8, 1), 10), {}, r"\(H, W\) or \(H, W, C\)"),
    (("mlp", (), 10), {}, "valid input shapes"),
    (("mlp", (8, -8), 10), {}, "valid input shapes"),
    (("vgg18", (8, 8, 1), 10), {"depth": 3}, "valid keyword arguments for vgg18 are"),
    (("mlp", (8, 8), 10), {"initializer": "zeros"}, "valid initializers are"),
])
def test_errors_list_valid_options(args, kw, match):
    with pytest.raises(ValueError, match=match):
        models.build(*args, **kw)
