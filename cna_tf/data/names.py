"""Dataset names: the valid ones and the one rule that maps a spelling to its canonical name.

:func:`cna_tf.data.load`, the grid configs and the ``train`` step all canonicalize through
:func:`canonical_name`.
"""
from __future__ import annotations

from typing import Any, Tuple

__all__ = ["DATASETS", "NPZ_PREFIX", "PGDL_PREFIX", "canonical_name"]

#: Valid dataset names for :func:`cna_tf.data.load` (plus ``"npz:PATH"``).
DATASETS: Tuple[str, ...] = (
    "digits", "mnist5k", "gaussian", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn",
    "imagenet32",
)
#: Prefix of a local npz file used as a dataset: ``"npz:/data/my.npz"``.
NPZ_PREFIX = "npz:"
#: Prefix of a PGDL 2020 task directory whose training data is the dataset (`cna_tf.data.pgdl`):
#: ``"pgdl:/data/public_data/input_data/task1_v4"``.
PGDL_PREFIX = "pgdl:"

# Other spellings, after lower-casing and replacing "-" by "_".
_ALIASES = {
    "fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist", "f_mnist": "fashion_mnist",
    "cifar_10": "cifar10", "cifar_100": "cifar100", "imagenet_32": "imagenet32",
    "gaussian_noise": "gaussian",
}


def canonical_name(name: Any) -> str:
    """The canonical dataset name of a spelling: case, ``-``/``_`` and aliases folded.

    ``"npz:PATH"`` and ``"pgdl:PATH"`` names are returned with surrounding white space removed
    and the path as given.

    Examples:
        >>> canonical_name("Fashion-MNIST"), canonical_name("CIFAR-10"), canonical_name("fmnist")
        ('fashion_mnist', 'cifar10', 'fashion_mnist')

    Args:
        name: a dataset name (one of `DATASETS`, an alias such as ``"f-mnist"``, or
            ``"npz:PATH"``).

    Raises:
        ValueError: not a string, an empty ``npz:`` path, or an unknown name (the message lists
            the valid names).
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    text = name.strip()
    if text.startswith(NPZ_PREFIX):
        if not text[len(NPZ_PREFIX):]:
            raise ValueError("npz datasets are named 'npz:PATH', e.g. 'npz:/data/svhn.npz'")
        return text
    if text.startswith(PGDL_PREFIX):
        if not text[len(PGDL_PREFIX):]:
            raise ValueError("PGDL tasks are named 'pgdl:DIR', e.g. "
                             "'pgdl:/data/public_data/input_data/task1_v4'")
        return text
    key = text.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}, "
                         "or 'npz:PATH' for a local npz file ('pgdl:DIR' for a PGDL task)")
    return key
