"""CNA as a training term: add -lambda * CNA(batch) to a classifier's loss (beyond the paper).

CNA is differentiable in the weights through beta (SPEC §1 "CNA gradient", supplement §1):
grad CNA is proportional to (1/n) sum_x (alpha(x) - mean alpha) grad beta(x). The wrapper runs the
model and its probe in one forward pass and adds the term with ``add_loss``, so the usual
``compile``/``fit`` work unchanged, with keras.ops only (any Keras backend).
"""
from __future__ import annotations

from typing import Any, Dict

import keras
import numpy as np
from keras import ops

from cna_tf.probe import ActivationProbe

__all__ = ["CNARegularizer", "batch_cna"]


def batch_cna(alpha, layer_sums, eps: float = 1e-12):
    """In-graph Pearson CNA of a batch: corr(alpha, beta(layer_sums)) with keras.ops.

    Args:
        alpha: (batch,) input complexities.
        layer_sums: (batch, L) probe sums (differentiable).
        eps: keeps the division finite for a batch with zero variance (the term is then 0).

    Returns:
        A scalar tensor.
    """
    n_layers = layer_sums.shape[-1]
    d = np.arange(1, n_layers + 1, dtype="float32")
    dc = ops.convert_to_tensor(d - d.mean())
    b = ops.sum(ops.cast(layer_sums, "float32") * dc, axis=-1) / float(np.sum((d - d.mean()) ** 2))
    a = ops.cast(ops.reshape(alpha, (-1,)), "float32")
    a = a - ops.mean(a)
    b = b - ops.mean(b)
    return ops.sum(a * b) / ops.sqrt(ops.sum(a * a) * ops.sum(b * b) + eps)


class CNARegularizer(keras.Model):
    """Wraps a classifier so that training minimizes ``loss - weight * CNA(batch)``.

    Feed inputs as a dict ``{"inputs": model_inputs, "alpha": per_sample_alpha}``; the alpha of
    each batch travels with its images (compute it once with `cna_tf.alpha` on the raw images).
    Without ``"alpha"`` the wrapper is the plain model. Save ``wrapper.model``, not the wrapper.

    Examples:
        >>> reg = cna_tf.CNARegularizer(model, weight=0.5)
        >>> reg.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> reg.fit(reg.inputs(x_train, cna_tf.alpha(raw_train, value_range=(0, 16))), y_train)

    Args:
        model: a Functional or Sequential classifier (its weights are trained in place).
        weight: lambda, the weight of the CNA term (0 disables it).
        mode: as in `cna_tf.ActivationProbe`.
        reduce: as in `cna_tf.ActivationProbe`.
        include_output: as in `cna_tf.ActivationProbe`.
    """

    def __init__(self, model: keras.Model, weight: float = 0.1, mode: str = "pre",
                 reduce: str = "sum", include_output: bool = False, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{model.name}_cna_reg"), **kwargs)
        self.model = model
        self.weight = float(weight)
        self._probe = ActivationProbe(model, mode=mode, reduce=reduce,
                                      include_output=include_output)
        self.probe_layer = self._probe.layer

    @staticmethod
    def inputs(x, alpha) -> Dict[str, Any]:
        """The input dict the wrapper trains on."""
        return {"inputs": x, "alpha": np.asarray(alpha, dtype="float32")}

    def call(self, data, training=False):
        if isinstance(data, dict) and "alpha" in data:
            sums, outputs = self.probe_layer(data["inputs"], training=training)
            if self.weight:
                self.add_loss(-self.weight * batch_cna(data["alpha"], sums))
            return outputs
        x = data["inputs"] if isinstance(data, dict) else data
        return self.model(x, training=training)
