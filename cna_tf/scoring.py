"""A user's own generalization measure (SPEC §11): PGDL 2020's ``complexity(model, dataset)``.

A measure is any Python callable ``f(model, dataset) -> float``: ``model`` is a trained
``keras.Model``, ``dataset`` a ``tf.data.Dataset`` of ``(inputs, labels)`` batches of that
network's training set (preprocessed inputs, integer labels, shuffled labels included, no
augmentation, a fixed order). A larger value must mean a larger predicted generalization gap.

It is named as ``package.module:function`` or ``path/to/file.py:function``; :func:`resolve`
imports it and fingerprints its source file, so a score can say exactly what computed it.
`pipelines/score.py` (the ``score`` step) calls it on every saved network of an experiment.

Examples:
    >>> m = resolve("examples/pgdl_measure.py:input_grad_norm")       # doctest: +SKIP
    >>> ds = cna_tf.data.load("digits", n_train=300)
    >>> value = m(keras.saving.load_model("model.keras"), training_dataset(ds, 64))  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple

from cna_tf.tracking import TAG_PREFIX

__all__ = ["MeasureSpecError", "Measure", "resolve", "as_score", "training_dataset",
           "load_model", "SCORED_TAG", "ERROR_TAG", "scored_tag", "scored_measures"]

SPEC_FORM = "package.module:function or path/to/file.py:function"
#: tag ``cna_tf.score.<metric>`` on a training run: the measure (spec, sha256) that logged it
SCORED_TAG = TAG_PREFIX + "score."
#: tag ``cna_tf.score_error.<metric>`` on a training run: why the measure failed on it
ERROR_TAG = TAG_PREFIX + "score_error."


class MeasureSpecError(ValueError):
    """A measure spec does not resolve to a callable; the message names what is missing."""


@dataclass(frozen=True)
class Measure:
    """A resolved measure.

    Attributes:
        spec: the spec in canonical form (a file path normalized: ``./a/../b.py`` is ``b.py``).
        name: the function's name as the spec gives it (the default metric name).
        function: the callable.
        file: the source file of the function (else of its module); None for a built-in.
        sha256: hex sha256 of that file's bytes ("" without a file).
    """

    spec: str
    name: str
    function: Callable[..., Any]
    file: Optional[str]
    sha256: str

    def __call__(self, model, dataset) -> float:
        """Calls the function and checks its value (:func:`as_score`)."""
        return as_score(self.function(model, dataset))

    def same_as(self, tag_value: str) -> bool:
        """Whether a ``cna_tf.score.<metric>`` tag value records this spec and file."""
        try:
            got = json.loads(tag_value)
        except (TypeError, ValueError):
            return False
        return isinstance(got, dict) and (got.get("spec"), got.get("sha256")) == \
            (self.spec, self.sha256)


def _sha256(path: Optional[str]) -> str:
    if not path:
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _import_file(path: Path, spec: str):
    """Executes a .py file as a fresh module (its folder first on sys.path, for its imports)."""
    resolved = path.resolve()
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = "cna_tf_measure_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise MeasureSpecError(f"measure file {str(path)!r} cannot be imported as Python "
                               f"(from measure {spec!r}): give a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise MeasureSpecError(f"measure file {str(path)!r} failed to import: "
                               f"{type(e).__name__}: {e}") from e
    return module


def _import_module(target: str, attr: str, spec: str):
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        missing = e.name or target
        if target == missing or target.startswith(missing + "."):
            raise MeasureSpecError(
                f"no module named {missing!r} (from measure {spec!r}): install it or put its "
                f"folder on PYTHONPATH, or name a file instead: path/to/file.py:{attr}"
            ) from None
        raise MeasureSpecError(f"module {target!r} failed to import: {type(e).__name__}: "
                               f"{e}") from e
    except Exception as e:
        raise MeasureSpecError(f"module {target!r} failed to import: {type(e).__name__}: "
                               f"{e}") from e


def resolve(spec: str) -> Measure:
    """Imports the measure a spec names and fingerprints its source file.

    Args:
        spec: ``package.module:function`` or ``path/to/file.py:function`` (a path relative
            to the working directory, or absolute). A target ending in ``.py`` or containing a
            path separator is a file; anything else a module.

    Returns:
        The :class:`Measure`.

    Raises:
        MeasureSpecError: no ``:function`` part, a missing file or module, one that fails to
            import, no such attribute (the message lists the functions it has), an attribute
            that is not callable, or one that cannot take ``(model, dataset)``.
    """
    text = str(spec or "").strip()
    target, _, attr = text.rpartition(":")
    if not target or not attr:
        raise MeasureSpecError(f"measure {text!r} names no function: give {SPEC_FORM}, e.g. "
                               "examples/pgdl_measure.py:input_grad_norm")
    if not attr.isidentifier():
        raise MeasureSpecError(f"{attr!r} (after the last ':' of measure {text!r}) is not a "
                               f"Python name: give {SPEC_FORM}")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise MeasureSpecError(
                f"measure file {target!r} not found (looked for {path.resolve()}): give the "
                f"path of a .py file, relative to {Path.cwd()} or absolute")
        module, where = _import_file(path, text), f"measure file {target!r}"
        canonical = f"{os.path.normpath(target)}:{attr}"
    else:
        module, where = _import_module(target, attr, text), f"module {target!r}"
        canonical = f"{target}:{attr}"
    if not hasattr(module, attr):
        defined = sorted(n for n, v in vars(module).items()
                         if inspect.isfunction(v) and not n.startswith("_")
                         and v.__module__ == module.__name__)
        raise MeasureSpecError(f"{where} has no function {attr!r}; it defines "
                               + (", ".join(defined) if defined else "no public functions"))
    function = getattr(module, attr)
    if not callable(function):
        raise MeasureSpecError(f"{canonical} is a {type(function).__name__}, not a function: "
                               "name a callable complexity(model, dataset) -> float")
    try:
        inspect.signature(function).bind(None, None)
    except TypeError as e:
        raise MeasureSpecError(f"{canonical} cannot be called as f(model, dataset): {e}; a "
                               "measure takes the model and the dataset") from None
    except ValueError:  # no signature to inspect (some built-ins): let the call decide
        pass
    source = None
    try:
        source = inspect.getsourcefile(inspect.unwrap(function))
    except TypeError:
        pass
    source = source or getattr(module, "__file__", None)
    return Measure(spec=canonical, name=attr, function=function,
                   file=str(source) if source else None, sha256=_sha256(source))


def as_score(value: Any) -> float:
    """A measure's return value as a float.

    Raises:
        ValueError: not a real number (e.g. a string, a bool), not a scalar (an array or
            tensor with any dimension), or not finite (NaN, inf); the message says which.
    """
    import numpy as np

    try:
        arr = np.asarray(value)
    except Exception:
        arr = np.asarray(None, dtype=object)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"returned {type(value).__name__} {str(value)[:80]!r}, not a number: "
                         "return one float")
    if arr.ndim != 0:
        raise ValueError(f"returned an array of shape {arr.shape}, not a scalar: return one "
                         "float (e.g. float(x.mean()))")
    out = float(arr)
    if not math.isfinite(out):
        raise ValueError(f"returned {out}, not a finite number")
    return out


def training_dataset(ds, batch_size: int):
    """A network's training set as the measure gets it: a ``tf.data.Dataset`` of float32
    ``(inputs, labels)`` batches of ``ds``'s training images, preprocessed as the network saw
    them (``ds.preprocess``), with their int64 labels (shuffled labels included), in order,
    without augmentation.

    Args:
        ds: a ``cna_tf.data.Dataset`` (the run's, from its parameters).
        batch_size: images per batch (``score`` passes the run's training batch size).
    """
    return ds.pipeline("train", batch_size=batch_size, augment=False, shuffle=False)


def load_model(path: str):
    """A model saved as ``.keras`` (``keras.saving.load_model``, safe mode).

    Raises:
        ValueError: the file cannot be rebuilt into a model, e.g. a subclassed model whose class
            is not registered or has no ``get_config``, naming the file, the cause and the fix.
    """
    import keras

    try:
        return keras.saving.load_model(path)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"the model saved at {path} cannot be reloaded: {type(exc).__name__}: {exc}\n"
            "A subclassed keras.Model reloads only when its class is decorated with "
            "@keras.saving.register_keras_serializable(), has a get_config() returning its "
            "constructor arguments, and its module is imported where the model is loaded "
            "(for score: in the measure's file). Otherwise save a functional twin of it "
            "(keras.Model(inputs, outputs) reusing its layers), which needs none of this."
        ) from exc


def scored_tag(measure: Measure, **extra: Any) -> str:
    """The value of tag ``cna_tf.score.<metric>``: JSON of the spec, sha256 and ``extra``."""
    return json.dumps({"spec": measure.spec, "sha256": measure.sha256, **extra},
                      sort_keys=True)


def scored_measures(runs: Iterable[Any]) -> Tuple[str, ...]:
    """The metrics a user's measure logged on these runs (``score``), sorted: the names of
    their ``cna_tf.score.<metric>`` tags where the run has that metric."""
    names = set()
    for run in runs:
        tags: Mapping[str, str] = run.data.tags
        names.update(k[len(SCORED_TAG):] for k in tags
                     if k.startswith(SCORED_TAG) and k[len(SCORED_TAG):] in run.data.metrics)
    return tuple(sorted(names))
