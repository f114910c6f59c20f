"""Grid cells: the `train` step's typed parameters, config expansion and deterministic cell keys.

One place defines what a cell is, so `train.py`, `grid.py`, `compare.py` and the MLproject file
agree. A config (YAML) is a mapping::

    name: demo
    defaults: {epochs: 8, batch_size: 64}       # any train parameter
    cells:                                        # blocks; a list value is a product axis
      - {arch: mlp, dataset: digits, width: [0.1, 0.5], seed: [0, 1]}
      - {arch: mlp, dataset: digits, label_shuffle: [0.1, 0.3], final_only: true}

A cell's key is a hash of all its parameters (defaults filled in, types normalized), so the same
network always has the same key, whichever config or order it came from.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

from params import parse_bool, parse_float, parse_int, parse_options

#: the levels of the `suite` parameter (SPEC §12), cheapest last
SUITE_LEVELS = ("all", "cheap", "none")


def parse_suite(v: Any) -> str:
    """A `suite` level: ``all``, ``cheap`` or ``none`` (any case)."""
    s = str(v).strip().lower()
    if s not in SUITE_LEVELS:
        raise ValueError(f"suite must be one of {', '.join(SUITE_LEVELS)}, got {v!r}")
    return s

__all__ = ["TRAIN_PARAMS", "CONFIG_DIR", "normalize", "cell_key", "expand", "load_config",
           "ConfigError", "cli_args"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


# name -> (type, default, help). The only definition of the `train` step's parameters.
TRAIN_PARAMS: Dict[str, Tuple[Callable[[Any], Any], Any, str]] = {
    "arch": (str, "mlp", "mlp, vgg18, resnet18 or resnet101"),
    "dataset": (str, "digits", "a cna_tf.data name (digits, mnist5k, gaussian, mnist, ...)"),
    "width": (parse_float, 1.0, "layer-width multiplier"),
    "depth": (parse_int, 5, "hidden layers of the MLP (ignored by the conv nets)"),
    "epochs": (parse_int, 10, "training epochs"),
    "lr": (parse_float, 0.05, "SGD learning rate"),
    "momentum": (parse_float, 0.8, "SGD momentum"),
    "batch_size": (parse_int, 512, "training batch size"),
    "label_shuffle": (parse_float, 0.0, "fraction of training labels permuted (SPEC §4)"),
    "seed": (parse_int, 0, "seed of data split, init, shuffling and measurement subsets"),
    "snapshot_every": (parse_int, 20, "epochs between full snapshots (0: init and final only)"),
    "final_only": (parse_bool, False, "only the final snapshot is a network instance (shuffled labels)"),
    "n_train": (parse_int, 0, "stratified training subsample (0: all)"),
    "n_test": (parse_int, 0, "stratified test subsample (0: all)"),
    "augment": (str, "auto", "auto (paper default per dataset), true or false"),
    "data_options": (parse_options, "", "JSON of extra cna_tf.data.load options, e.g. gaussian shape"),
    "max_samples": (parse_int, 2000, "samples per split of the per-epoch CNA"),
    "full_max_samples": (parse_int, 0, "samples per split of a full snapshot (0: all)"),
    "stop_loss": (parse_float, 0.0, "stop once an epoch's training cross-entropy is <= this "
                  "(Jiang et al. 2020's rule, e.g. 0.01; epochs is then the maximum; 0: off)"),
    "flatness": (parse_bool, False, "compute the SPEC §8 flatness measures at the final "
                 "snapshot (costly: minutes per network) and log them with their time"),
    "weight_decay": (parse_float, 0.0, "L2 penalty weight_decay * sum(W**2) on every Dense/Conv "
                     "kernel (Jiang et al. 2020's weight-decay axis; 0: none)"),
    "dropout": (parse_float, 0.0, "dropout rate after every hidden Dense layer (mlp, vgg18; "
                "0: none)"),
    "suite": (parse_suite, "all", "SPEC §12's measure suite at the final snapshot: all, cheap "
              "(all but the flatness searches) or none; with the optimization measures"),
}
# Train parameters added after cell keys were first recorded: hashed only when set to something
# other than their default, so the cells of existing grids keep their keys (and stay finished).
KEY_IF_SET = ("stop_loss", "flatness", "weight_decay", "dropout", "suite")
# Parameters that do not change the network or its metrics: not part of the cell key.
RUN_ONLY_PARAMS = {
    "save_model": (parse_bool, False, "log the trained model as a .keras artifact"),
    "trajectory": (parse_bool, False, "MLP only: record the weights every epoch and log the Fig-5 "
                   "CNA landscape (figures/fig5_trajectory_pca.png)"),
}
ALL_PARAMS = {**TRAIN_PARAMS, **RUN_ONLY_PARAMS}
# Hyperparameter axes of a network instance (granulated Kendall, compare tables).
AXES = ("arch", "dataset", "width", "depth", "epochs", "lr", "momentum", "batch_size",
        "label_shuffle", "seed", "n_train", "weight_decay", "dropout")


class ConfigError(ValueError):
    """A grid config or a cell's parameters are invalid; the message says how to fix it."""


def normalize(params: Mapping[str, Any], defaults: Mapping[str, Any] = None) -> Dict[str, Any]:
    """Fills defaults and converts every value to its declared type.

    Raises:
        ConfigError: an unknown key (the valid ones are listed) or a value of the wrong type.
    """
    unknown = sorted(set(params) - set(ALL_PARAMS))
    if unknown:
        raise ConfigError(f"unknown train parameter(s) {unknown}; valid keys: "
                          f"{', '.join(ALL_PARAMS)}")
    out: Dict[str, Any] = {}
    for name, (typ, default, _) in ALL_PARAMS.items():
        value = params.get(name, (defaults or {}).get(name, default))
        try:
            out[name] = typ(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"parameter {name}={value!r}: {e} (expected {typ.__name__.replace('parse_', '')})") \
                from None
    _check_names(out)
    if out["augment"] not in ("auto", "true", "false"):
        raise ConfigError(f"augment must be auto, true or false, got {out['augment']!r}")
    if not out["stop_loss"] >= 0:
        raise ConfigError(f"stop_loss must be >= 0 (0: off), got {out['stop_loss']!r}")
    if not out["weight_decay"] >= 0:
        raise ConfigError(f"weight_decay must be >= 0 (0: none), got {out['weight_decay']!r}")
    if not 0 <= out["dropout"] < 1:
        raise ConfigError(f"dropout must be a rate in [0, 1) (0: none), got {out['dropout']!r}")
    from cna_tf.models import DROPOUT_ARCHITECTURES

    if out["dropout"] and out["arch"] not in DROPOUT_ARCHITECTURES:
        raise ConfigError(f"dropout={out['dropout']:g}: {out['arch']} has no place for dropout; "
                          f"it applies to {', '.join(DROPOUT_ARCHITECTURES)} only (set it to 0 "
                          "for this cell)")
    return out


def _check_names(p: Dict[str, Any]) -> None:
    """Unknown architectures and datasets fail when the config is read, not cells later."""
    from cna_tf import data, models

    try:
        arch = models.canonical_name(p["arch"])
    except ValueError:
        raise ConfigError(f"unknown arch {p['arch']!r}; valid: {', '.join(models.ARCHITECTURES)}"
                          ) from None
    try:
        dataset = data.canonical_name(p["dataset"])
    except ValueError:
        raise ConfigError(f"unknown dataset {p['dataset']!r}; valid: {', '.join(data.DATASETS)}, "
                          "or npz:PATH") from None
    p["arch"], p["dataset"] = arch, dataset


def cell_key(params: Mapping[str, Any]) -> str:
    """Deterministic 16-hex key of a cell: a hash of its normalized network parameters."""
    p = normalize(params)
    keyed = {k: p[k] for k in TRAIN_PARAMS
             if k not in KEY_IF_SET or p[k] != TRAIN_PARAMS[k][1]}
    blob = json.dumps(keyed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(block: Mapping[str, Any], defaults: Mapping[str, Any] = None) -> List[Dict[str, Any]]:
    """The cells of one config block: the product of its list-valued entries."""
    keys = list(block)
    values = [v if isinstance(v, list) else [v] for v in block.values()]
    unknown = sorted(set(keys) - set(ALL_PARAMS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config block {dict(block)}; valid keys: "
                          f"{', '.join(ALL_PARAMS)}")
    return [normalize(dict(zip(keys, combo)), defaults) for combo in itertools.product(*values)]


def load_config(config: Union[str, os.PathLike, Mapping[str, Any]]) -> Tuple[str, List[Dict]]:
    """Reads a config (a name in ``configs/``, a YAML path, or a mapping) into its cells.

    Returns:
        ``(name, cells)``; cells are normalized parameter dicts, duplicates removed, in order.

    Raises:
        ConfigError: a missing file, unknown top-level or cell keys, or no cells.
    """
    import yaml

    if isinstance(config, Mapping):
        data, default_name = dict(config), "custom"
    else:
        path = Path(str(config))
        if not path.suffix and not path.exists():
            path = CONFIG_DIR / f"{config}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"grid config {str(config)!r} not found: give one of {names} or "
                              "a path to a YAML file")
        data, default_name = yaml.safe_load(path.read_text()) or {}, path.stem
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping with keys name, defaults, cells")
    top = sorted(set(data) - {"name", "description", "defaults", "cells"})
    if top:
        raise ConfigError(f"unknown config key(s) {top}; valid keys: name, description, "
                          "defaults, cells")
    defaults = data.get("defaults") or {}
    bad = sorted(set(defaults) - set(ALL_PARAMS))
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in defaults; valid keys: {', '.join(ALL_PARAMS)}")
    blocks = data.get("cells") or []
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError("a config needs a non-empty list 'cells' of parameter blocks")
    cells: Dict[str, Dict[str, Any]] = {}
    for block in blocks:
        if not isinstance(block, Mapping):
            raise ConfigError(f"each entry of 'cells' must be a mapping, got {block!r}")
        for cell in expand(block, defaults):
            cells.setdefault(cell_key(cell), cell)
    return str(data.get("name") or default_name), list(cells.values())


def select(cells: List[Dict[str, Any]], datasets: str, config: str = "the config"
           ) -> List[Dict[str, Any]]:
    """The cells of the given datasets (comma-separated, any spelling), in config order.

    An empty ``datasets`` keeps every cell. E.g. ``select(cells, "mnist")`` on the ``paper``
    config keeps its MNIST rows (the paper's grid where the data exists offline).

    Raises:
        ConfigError: an unknown dataset name, or one the config has no cell for.
    """
    from cna_tf.data.names import canonical_name

    wanted = [w.strip() for w in str(datasets or "").split(",") if w.strip()]
    if not wanted:
        return list(cells)
    try:
        names = [canonical_name(w) for w in wanted]
    except ValueError as e:
        raise ConfigError(f"datasets={datasets!r}: {e}") from None
    present = list(dict.fromkeys(c["dataset"] for c in cells))
    absent = [n for n in names if n not in present]
    if absent:
        raise ConfigError(f"{config} has no cells for dataset(s) {absent}; its datasets are "
                          f"{present}: give some of those in datasets=")
    return [c for c in cells if c["dataset"] in names]


def cli_args(params: Mapping[str, Any]) -> List[str]:
    """``--name value`` arguments of ``train.py`` for a cell."""
    out: List[str] = []
    for name, value in normalize(params).items():
        out += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out
