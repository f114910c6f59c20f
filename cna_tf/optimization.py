"""Optimization-based measures of SPEC §12 (Jiang et al. 2020, §"optimization"; exact
definitions SPEC §12's). They need the training run, so `train` logs them and `score` cannot:

* ``steps_to_ce_0.1`` = s × the first epoch whose training cross-entropy is <= 0.1;
* ``steps_ce_0.1_to_0.01`` = s × (the first epoch <= 0.01 − the first epoch <= 0.1);
* ``grad_noise_final`` = (1/k) Σ_b ‖g_b − ḡ‖² at the final weights: g_b the gradient of the
  training loss on batch b of the training set cut, in order, into k batches of the training
  batch size (the last one smaller when the size does not divide), ḡ their mean; the forward
  pass in inference mode (BatchNormalization's moving statistics, no Dropout).

s is the number of optimizer steps per epoch; an epoch's cross-entropy is the one
``stop_loss`` reads (Keras' epoch ``loss``, the mean over its batches, or the ``cross_entropy``
metric when weight decay adds a penalty to ``loss``). A threshold never reached gives NaN and
the reason (`steps_to_thresholds`). The three values are reported as they are (no √(·/m)).

The gradients come from Keras' own ``train_on_batch`` on a wrapper that calls the model with
``training=False`` and shares its variables, compiled with the model's own loss and an
optimizer (`_GradientNoise`) that moves no weight: its update step folds each batch's gradient
into a running mean and sum of squared deviations (Welford) on the device, so only one number
per variable leaves it. It runs unchanged on TensorFlow, JAX and PyTorch.

Example:
    >>> steps_to_thresholds([0.9, 0.2, 0.08, 0.03, 0.009], steps_per_epoch=10)
    ({'steps_to_ce_0.1': 30.0, 'steps_ce_0.1_to_0.01': 20.0}, {})
    >>> grad_noise(model, x, y, batch_size=64)
    0.0123
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from cna_tf.flatness import _InferenceModel
from cna_tf.measures import probabilities
from cna_tf.suite import OPTIMIZATION as MEASURES

__all__ = ["MEASURES", "THRESHOLDS", "CROSS_ENTROPY", "epoch_cross_entropy",
           "steps_to_thresholds", "CrossEntropyRecorder", "grad_noise"]

#: the two cross-entropy thresholds of SPEC §12
THRESHOLDS = (0.1, 0.01)
_EAGER_BATCHES = 30  # at most this many batches: no traced train function

#: the metric `train` compiles beside ``loss`` when weight decay adds a penalty to it
CROSS_ENTROPY = "cross_entropy"


def epoch_cross_entropy(logs: Optional[Mapping[str, Any]]) -> Optional[float]:
    """An epoch's training cross-entropy from Keras' epoch ``logs``, as ``stop_loss`` reads it:
    the ``cross_entropy`` metric when present (``loss`` then holds a weight-decay penalty too),
    else ``loss``; None when neither is logged."""
    logs = logs or {}
    value = logs.get(CROSS_ENTROPY, logs.get("loss"))
    return None if value is None else float(value)


def steps_to_thresholds(cross_entropy: Sequence[float] | Mapping[int, float],
                        steps_per_epoch: int) -> Tuple[Dict[str, float], Dict[str, str]]:
    """SPEC §12's ``steps_to_ce_0.1`` and ``steps_ce_0.1_to_0.01`` from a cross-entropy series.

    Args:
        cross_entropy: the training cross-entropy at the end of each epoch: a sequence (item i
            is epoch i + 1) or ``{epoch (1-based): value}``.
        steps_per_epoch: s, optimizer steps per epoch (ceil(n_train / batch_size)).

    Returns:
        ``(values, reasons)``: both measures (NaN where a threshold was not reached) and, per
        NaN measure, why (for the ``cna_nan.<metric>`` tag).

    Raises:
        ValueError: ``steps_per_epoch`` < 1 or an epoch number < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    series = (dict(cross_entropy) if isinstance(cross_entropy, Mapping)
              else {i + 1: v for i, v in enumerate(cross_entropy)})
    if any(int(e) < 1 for e in series):
        raise ValueError(f"epochs are numbered from 1; got {sorted(series)[:3]}")
    epochs = sorted(series)

    def first(threshold: float) -> Optional[int]:
        return next((e for e in epochs if float(series[e]) <= threshold), None)

    hi, lo = (first(t) for t in THRESHOLDS)
    last = (f"the lowest training cross-entropy in {len(epochs)} epochs was "
            f"{min(map(float, series.values())):.4g}" if epochs else "no epoch was trained")
    values = {"steps_to_ce_0.1": math.nan, "steps_ce_0.1_to_0.01": math.nan}
    reasons: Dict[str, str] = {}
    if hi is None:
        reasons["steps_to_ce_0.1"] = f"cross-entropy 0.1 not reached: {last}"
    else:
        values["steps_to_ce_0.1"] = float(steps_per_epoch * hi)
    if lo is None:
        reasons["steps_ce_0.1_to_0.01"] = f"cross-entropy 0.01 not reached: {last}"
    else:  # CE <= 0.01 implies <= 0.1, so hi <= lo
        values["steps_ce_0.1_to_0.01"] = float(steps_per_epoch * (lo - hi))
    return values, reasons


class CrossEntropyRecorder(keras.callbacks.Callback):
    """Records each epoch's training cross-entropy (`epoch_cross_entropy`) as
    ``{epoch (1-based): value}`` in ``self.cross_entropy``."""

    def __init__(self):
        super().__init__()
        self.cross_entropy: Dict[int, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        value = epoch_cross_entropy(logs)
        if value is not None:
            self.cross_entropy[epoch + 1] = value


class _GradientNoise(keras.optimizers.Optimizer):
    """An optimizer that moves no weight: each update step folds the batch's gradient g_b of
    every variable into a running mean and the running sum of ‖g_b − mean‖² (Welford's update,
    on the device)."""

    def __init__(self, **kwargs):
        super().__init__(learning_rate=0.0, name="gradient_noise", **kwargs)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.means = [self.add_variable_from_reference(v, name="gradient_mean")
                      for v in variables]
        self.squares = [self.add_variable(shape=(), dtype="float32", name="gradient_m2")
                        for _ in variables]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        mean, m2 = self.means[i], self.squares[i]
        g = ops.cast(gradient, mean.dtype)
        b = ops.cast(self.iterations + 1, mean.dtype)  # this is batch b = 1, 2, ...
        delta = ops.subtract(g, mean)
        new_mean = ops.add(mean, ops.divide(delta, b))
        self.assign(mean, new_mean)
        self.assign_add(m2, ops.cast(ops.sum(ops.multiply(delta, ops.subtract(g, new_mean))),
                                     "float32"))


def grad_noise(model: keras.Model, x, y, batch_size: int) -> float:
    """SPEC §12's ``grad_noise_final``: (1/k) Σ_b ‖g_b − ḡ‖² over the training set in k batches.

    Args:
        model: the trained model; its weights are not changed.
        x: the training inputs as the model takes them (preprocessed, not augmented), in order.
        y: integer labels.
        batch_size: the training batch size.

    Returns:
        The mean squared distance of the per-batch gradients (all trainable variables, biases
        and BatchNormalization's γ/β included) from their mean; 0.0 for a single batch.

    Raises:
        ValueError: no training points, mismatched x and y, batch_size < 1, or no trainable
            weights.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"grad_noise needs as many labels as inputs (> 0); got {len(x)} "
                         f"inputs and {len(y)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not model.trainable_variables:
        raise ValueError(f"model '{model.name}' has no trainable weights: no gradient noise")
    loss = getattr(model, "loss", None)
    if loss is None:  # not compiled: the cross-entropy of its outputs, logits or probabilities
        _, from_logits = probabilities(np.asarray(ops.convert_to_numpy(
            model(x[:batch_size], training=False))).reshape(min(batch_size, len(x)), -1))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    wrapper = _InferenceModel(model)
    optimizer = _GradientNoise()
    jit = False if keras.backend.backend() == "tensorflow" else "auto"
    batches = math.ceil(len(x) / batch_size)
    # tracing a train function costs seconds on a CPU: for a few batches eager steps are cheaper
    wrapper.compile(optimizer=optimizer, loss=loss, jit_compile=jit,
                    run_eagerly=batches <= _EAGER_BATCHES)
    before = [np.array(ops.convert_to_numpy(v), copy=True) for v in model.variables]
    k = 0
    for start in range(0, len(x), batch_size):
        wrapper.train_on_batch(x[start:start + batch_size], y[start:start + batch_size])
        k += 1
    noise = sum(float(ops.convert_to_numpy(m2)) for m2 in optimizer.squares) / k
    for v, w in zip(model.variables, before):  # the optimizer moves nothing; BN/metrics might
        v.assign(w)
    return noise
