"""One canonicalization of dataset and architecture names, shared by the library and the grid."""
import sys
from pathlib import Path

import pytest

import cna_tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))

import cells  # noqa: E402


@pytest.mark.parametrize("spelling, name", [
    ("digits", "digits"), (" MNIST ", "mnist"), ("mnist5k", "mnist5k"),
    ("Fashion-MNIST", "fashion_mnist"), ("fashion_mnist", "fashion_mnist"),
    ("fashionmnist", "fashion_mnist"), ("fmnist", "fashion_mnist"), ("F-MNIST", "fashion_mnist"),
    ("CIFAR-10", "cifar10"), ("cifar_100", "cifar100"), ("ImageNet-32", "imagenet32"),
    ("imagenet_32", "imagenet32"), ("gaussian_noise", "gaussian"), ("Gaussian-Noise", "gaussian"),
    ("npz:/data/My.npz", "npz:/data/My.npz"),
])
def test_dataset_spellings(spelling, name):
    assert cna_tf.data.canonical_name(spelling) == name
    # the grid reads config names through the same function
    assert cells.normalize({"dataset": spelling})["dataset"] == name


@pytest.mark.parametrize("bad, match", [
    ("cifar11", "unknown dataset 'cifar11'; valid names: digits, mnist5k, gaussian, mnist, "
                "fashion_mnist, cifar10, cifar100, svhn, imagenet32, or 'npz:PATH'"),
    ("npz:", "npz:PATH"),
    ("pgdl:", "'pgdl:DIR'"),
    (3, "must be a string"),
])
def test_bad_dataset_names(bad, match):
    with pytest.raises(ValueError, match=match):
        cna_tf.data.canonical_name(bad)


def test_every_dataset_name_is_canonical():
    for name in cna_tf.data.DATASETS:
        assert cna_tf.data.canonical_name(name) == name


@pytest.mark.parametrize("spelling, name", [
    ("mlp", "mlp"), ("VGG-18", "vgg18"), ("vgg_18", "vgg18"), ("ResNet-18", "resnet18"),
    (" resnet101 ", "resnet101"),
])
def test_architecture_spellings(spelling, name):
    assert cna_tf.models.canonical_name(spelling) == name
    assert cells.normalize({"arch": spelling})["arch"] == name


def test_bad_architecture_name():
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'; valid names are mlp, "
                                         "vgg18, resnet18, resnet101"):
        cna_tf.models.canonical_name("resnet50")
