"""PGDL 2020 task directories as datasets: ``load("pgdl:DIR")`` (the organizers' public layout).

A task directory holds ``dataset_1/train/shard_*.tfrecord``: `tf.train.Example` records whose
``inputs`` and ``output`` are serialized float32 image and int32 label tensors, the training
set every model of the task was trained on, already preprocessed as the models take it. The
public tasks ship no test inputs (the models' test accuracies are in ``model_configs.json``);
a ``dataset_1/test/`` folder in the same format, where present, is read as the test split.

Alpha (SPEC §1) needs the range of the raw values; these inputs are floats with no declared
range, so ``value_range`` is their observed minimum and maximum over the training set (every
value then lies inside it), unless given. TensorFlow reads the records
(:func:`cna_tf.data.tf_pipeline.read_pgdl_shards`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from cna_tf.data.locations import DatasetUnavailableError
from cna_tf.data.validation import ValueRange, check_value_range, positive_int

__all__ = ["DATA_FOLDER", "shards", "load_task_arrays", "observed_range"]

#: the folder of a task directory that holds the data, and the shard files' pattern
DATA_FOLDER = "dataset_1"
SHARDS = "shard_*.tfrecord"


def _natural(path: Path) -> Tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def shards(task_dir: str, split: str = "train") -> List[Path]:
    """The shard files of one split of a task, in numeric order (``shard_2`` before
    ``shard_10``): the order of the training set."""
    return sorted(Path(task_dir).expanduser().glob(f"{DATA_FOLDER}/{split}/{SHARDS}"),
                  key=_natural)


def observed_range(*arrays: np.ndarray) -> ValueRange:
    """``(min, max)`` over the arrays' values, as Python floats: alpha's range for float
    inputs (every value lies inside it)."""
    arrays = tuple(a for a in arrays if a.size)
    if not arrays:
        raise ValueError("no inputs: no value range to observe")
    lo, hi = min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("inputs contain NaN or infinite values")
    return check_value_range((lo, hi))


def load_task_arrays(task_dir: str, num_classes: Optional[int] = None,
                     value_range: Optional[ValueRange] = None):
    """A task's data as a loader returns it: ``((x_train, y_train, x_test, y_test),
    num_classes, value_range)``; the test split is empty unless ``dataset_1/test/`` exists.

    Args:
        task_dir: the task directory.
        num_classes: default the largest label + 1 (the importer passes the models' output
            width).
        value_range: default the inputs' observed ``(min, max)``.

    Raises:
        DatasetUnavailableError: no training shards in the directory.
        ValueError: records that are not in the organizers' format.
    """
    from cna_tf.data.tf_pipeline import read_pgdl_shards

    train = shards(task_dir, "train")
    if not train:
        raise DatasetUnavailableError(
            f"PGDL task {task_dir}: no training data: expected {DATA_FOLDER}/train/{SHARDS} "
            "in the task directory (the layout of the organizers' public_data.zip)")
    x_train, y_train = read_pgdl_shards([str(p) for p in train])
    test = shards(task_dir, "test")
    if test:
        x_test, y_test = read_pgdl_shards([str(p) for p in test])
    else:
        x_test = np.zeros((0,) + x_train.shape[1:], np.float32)
        y_test = np.zeros(0, np.int64)
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    value_range = observed_range(x_train, x_test) if value_range is None else value_range
    return ((x_train, y_train, x_test, y_test), positive_int(num_classes, "num_classes"),
            check_value_range(value_range))
