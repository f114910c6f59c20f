"""cna_tf: abstraction-mechanism metrics (CNA, CNA-A, CNA-M) for Keras 3, tracked with MLflow.

Implements Gain & Siegelmann, ICML 2020, "Abstraction Mechanisms Predict Generalization in Deep
Neural Networks". Data flows one way: images -> alpha; model -> probe -> layer sums -> beta;
(alpha, beta) -> CNA.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, List

# Keras-free: numpy, scipy and shapely only
from cna_tf.complexity import alpha, compression_alpha
from cna_tf.measures import beta, cna, cna_area, cna_margin, curves, margin, margins

if TYPE_CHECKING:  # for type checkers and the API reference; at run time `__getattr__` below
    from cna_tf.callback import CNACallback
    from cna_tf.evaluation import evaluate
    from cna_tf.probe import ActivationProbe, UntraceableModelError
    from cna_tf.regularizer import CNARegularizer

__version__ = "0.1.0"

__all__ = [
    "alpha", "compression_alpha", "ActivationProbe", "UntraceableModelError", "beta", "cna",
    "cna_area", "curves", "margins", "margin", "cna_margin", "evaluate",
    "baselines", "models", "data", "CNACallback",
]

# Everything that imports Keras (and so its backend: TensorFlow by default, ~5 s of CPU) loads on
# first use, so that a step that never runs a model (`compare`, the grid's parent, `tracking url`)
# starts without it.
_LAZY_MODULES = {"baselines", "models", "data", "plots", "analysis", "tracking", "callback",
                 "regularizer", "flatness", "ranking", "probe", "evaluation", "suite",
                 "optimization", "folding", "conv_spectrum", "scoring", "report", "demo"}
_LAZY_NAMES = {"ActivationProbe": "probe", "UntraceableModelError": "probe",
               "evaluate": "evaluation", "CNACallback": "callback",
               "CNARegularizer": "regularizer"}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"cna_tf.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"cna_tf.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'cna_tf' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | _LAZY_MODULES | set(_LAZY_NAMES))
