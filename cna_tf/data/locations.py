"""Where dataset files live on this machine: Keras' download cache and cna_tf's data folder.

* Keras' cache, ``$KERAS_HOME/datasets`` (``~/.keras/datasets``; ``<tmp>/.keras/datasets`` too
  when the Keras home is not writable, as Keras does): read for MNIST, Fashion-MNIST and CIFAR.
* The data folder ``$CNA_TF_DATA`` (or ``data_dir=...``): ``<name>.npz`` files placed by hand.
* The cache folder, where :mod:`cna_tf.data.fetch` writes what it fetches (the full MNIST):
  ``$CNA_TF_DATA`` when set, else ``$XDG_CACHE_HOME/cna_tf`` (``~/.cache/cna_tf``).

Every location is read from the environment at call time. A dataset whose files are in none of
them raises :class:`DatasetUnavailableError`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

__all__ = ["DatasetUnavailableError", "ENV_DATA_DIR", "keras_cache_dir", "keras_dataset_dirs",
           "data_dir", "cache_dir"]

#: The environment variable naming the folder of local ``<name>.npz`` datasets.
ENV_DATA_DIR = "CNA_TF_DATA"


class DatasetUnavailableError(RuntimeError):
    """A dataset's files are not on this machine (loading never downloads).

    The message names the exact file(s) to place and where, and the ``npz:PATH`` alternative.
    """


def keras_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """The folder where ``keras.datasets`` keeps downloads: ``$KERAS_HOME/datasets``.

    ``KERAS_HOME`` defaults to ``~/.keras``; read at call time (not at Keras import time).

    Examples:
        >>> keras_cache_dir()          # doctest: +SKIP
        PosixPath('/home/me/.keras/datasets')

    Args:
        cache_dir: a Keras home to use instead (its ``datasets`` subfolder is returned).
    """
    return keras_dataset_dirs(cache_dir)[0]


def keras_dataset_dirs(cache_dir: Optional[str]) -> List[Path]:
    """The folders to search for Keras downloads, most likely first.

    Args:
        cache_dir: a Keras home (or its ``datasets`` folder) to search instead of the default.
    """
    if cache_dir is not None:
        base = Path(cache_dir).expanduser()
        return [base / "datasets", base]  # a Keras home, or the datasets folder itself
    home = Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"))
    dirs = [home / "datasets"]
    if not os.access(home, os.W_OK):  # Keras then caches under <tmp>/.keras instead
        dirs.append(Path(tempfile.gettempdir()) / ".keras" / "datasets")
    return dirs


def data_dir(path: Optional[str] = None) -> Optional[Path]:
    """The folder of local ``<name>.npz`` datasets: ``path``, else ``$CNA_TF_DATA``, else None."""
    d = path if path is not None else os.environ.get(ENV_DATA_DIR)
    return Path(d).expanduser() if d else None


def cache_dir(path: Optional[str] = None) -> Path:
    """The folder of fetched datasets (see :mod:`cna_tf.data.fetch`).

    ``path`` when given, else ``$CNA_TF_DATA`` when set, else ``$XDG_CACHE_HOME/cna_tf``
    (``~/.cache/cna_tf``).
    """
    if path is not None:
        return Path(path).expanduser()
    local = data_dir(None)
    if local is not None:
        return local
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg).expanduser() / "cna_tf"
