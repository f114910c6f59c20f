"""BatchNormalization folded into the layer before it (SPEC §12), for the measure suite.

A BatchNormalization in inference mode is the per-channel affine map
``z ↦ s·(z − µ) + β`` with ``s = γ/√(running_var + ε)`` (the layer's own ε). When it directly
follows a weighted affine layer W (no fused nonlinearity between them), the pair computes the
same function as one affine layer with kernel ``W·s`` (per output channel) and bias
``s·(b − µ) + β``: Dziugaite et al.'s ``_reparam`` (after Neyshabur et al.'s code), which SPEC
§12 applies before every norm. A BatchNormalization anywhere else (after an activation, after a
pooling) is not folded and stays in the network as it is.

What the graph walk finds per weighted layer call (`layer_contexts`): its name as
`cna_tf.baselines.KernelMatrix` keys it, its input shape (the FFT spectral norm's input size)
and the BatchNormalization folded into it, if any. The initial model is folded with its own
initial statistics: `initial_scales` reads them from the ``initial_weights`` dict when
`capture_bn_state` put them there, else from the layer's initializers, which at construction
are the initial values (``ones`` for γ and the running variance in Keras' defaults).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import keras
import numpy as np

from cna_tf.probe import _Plan, ones_inputs, replay

__all__ = ["LayerContext", "layer_contexts", "scale", "initial_scale", "fold_kernel",
           "capture_bn_state", "folded_path_sum"]

_CONSTANT_INITIALIZERS = ("Ones", "Zeros", "Constant")


@dataclass
class LayerContext:
    """One call of a weighted affine layer, in forward order.

    Attributes:
        name: the call's name (``outer/inner``, ``name@k``), as in `KernelMatrix.key`.
        layer: the Keras layer.
        input_shape: its input's shape without the batch axis (None where unknown).
        bn: the BatchNormalization folded into it, or None.
        bn_name: that BatchNormalization's name (``outer/bn``), the key prefix of its state.
    """

    name: str
    layer: keras.layers.Layer
    input_shape: Optional[Tuple[Optional[int], ...]]
    bn: Optional[keras.layers.BatchNormalization] = None
    bn_name: str = ""


def _channel_axis(layer, rank: int) -> int:
    if getattr(layer, "data_format", "channels_last") == "channels_first" and rank > 2:
        return 1
    return rank - 1


def _foldable(layer, bn, out_rank: int) -> bool:
    """Whether ``bn`` normalizes exactly the output channels of ``layer``."""
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    axes = sorted(int(a) % out_rank for a in axes)
    return axes == [_channel_axis(layer, out_rank)]


def layer_contexts(model: keras.Model) -> List[LayerContext]:
    """Every weighted affine layer call of ``model`` in forward order (SPEC §1's probe
    layers, the classifier included) with its input shape and the BatchNormalization that
    directly follows it (none after a fused nonlinearity).

    Raises:
        cna_tf.UntraceableModelError: a subclassed or unbuilt model.
    """
    plan = _Plan(model, "pre")
    contexts: List[LayerContext] = []
    producer: Dict[Tuple[int, int], int] = {}
    prefix = {0: ""}
    bn_calls: Dict[int, int] = {}
    for step in plan.steps:
        node, scope = step.node, step.scope
        if step.kind == "enter":
            prefix[step.inner_scope] = f"{prefix[scope]}{step.op.name}/"
            for t, s in zip(step.inner_graph.inputs, node.input_tensors):
                if (scope, id(s)) in producer:
                    producer[(step.inner_scope, id(t))] = producer[(scope, id(s))]
            continue
        if step.kind == "exit":
            for t, o in zip(step.inner_graph.outputs, node.outputs):
                if (step.inner_scope, id(t)) in producer:
                    producer[(scope, id(o))] = producer[(step.inner_scope, id(t))]
            continue
        if step.probe is not None:
            probe = plan.probes[step.probe]
            shape = tuple(node.input_tensors[0].shape[1:]) if node.input_tensors else None
            contexts.append(LayerContext(probe.name, probe.layer, shape))
            if not probe.fused:
                producer[(scope, id(node.outputs[0]))] = step.probe
            continue
        op = step.op
        if isinstance(op, keras.layers.BatchNormalization) and node.input_tensors:
            k = bn_calls.get(id(op), 0)
            bn_calls[id(op)] = k + 1
            src = producer.get((scope, id(node.input_tensors[0])))
            if src is None or contexts[src].bn is not None:
                continue
            if _foldable(contexts[src].layer, op, len(node.input_tensors[0].shape)):
                contexts[src].bn = op
                contexts[src].bn_name = f"{prefix[scope]}{op.name}" + (f"@{k}" if k else "")
    return contexts


def _value(v) -> np.ndarray:
    from cna_tf.baselines import to_numpy
    return np.asarray(to_numpy(v), dtype=np.float64)


def scale(bn) -> np.ndarray:
    """s = γ/√(running_var + ε) of a trained BatchNormalization (γ = 1 without ``scale``)."""
    var = _value(bn.moving_variance)
    gamma = _value(bn.gamma) if bn.scale else np.ones_like(var)
    return gamma / np.sqrt(var + float(bn.epsilon))


def capture_bn_state(model: keras.Model) -> Dict[str, np.ndarray]:
    """``{"<bn name>/gamma": γ, "<bn name>/moving_variance": var}`` (float64) of every
    BatchNormalization folded into a layer: what `initial_scale` reads, taken before training."""
    out: Dict[str, np.ndarray] = {}
    for c in layer_contexts(model):
        if c.bn is not None:
            out[f"{c.bn_name}/moving_variance"] = _value(c.bn.moving_variance)
            if c.bn.scale:
                out[f"{c.bn_name}/gamma"] = _value(c.bn.gamma)
    return out


def _initializer_value(bn, attr: str, shape) -> Optional[np.ndarray]:
    init = keras.initializers.get(getattr(bn, attr))
    if type(init).__name__ not in _CONSTANT_INITIALIZERS:
        return None
    return np.asarray(keras.ops.convert_to_numpy(init(shape, dtype="float32")), np.float64)


def initial_scale(context: LayerContext, initial_weights: Optional[Mapping[str, np.ndarray]]
                  ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """s⁰ = γ⁰/√(running_var⁰ + ε) of the BatchNormalization folded into ``context``, from
    ``initial_weights`` (keys of `capture_bn_state`) or else the layer's constant
    initializers; ``(None, reason)`` where neither gives them."""
    bn = context.bn
    shape = tuple(bn.moving_variance.shape)
    given = initial_weights or {}
    var = given.get(f"{context.bn_name}/moving_variance")
    var = _initializer_value(bn, "moving_variance_initializer", shape) if var is None else var
    gamma = np.ones(shape)
    if bn.scale:
        g = given.get(f"{context.bn_name}/gamma")
        gamma = _initializer_value(bn, "gamma_initializer", shape) if g is None else g
    if var is None or gamma is None:
        return None, (f"the initial statistics of BatchNormalization '{context.bn_name}' are "
                      "unknown (a random initializer): pass "
                      "cna_tf.suite.capture_initial_weights(model) taken before training")
    return (np.asarray(gamma, np.float64)
            / np.sqrt(np.asarray(var, np.float64) + float(bn.epsilon))), None


def fold_kernel(kind: str, kernel: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The kernel of an affine layer times s per output channel (Keras layout).

    Args:
        kind: `cna_tf.baselines.KernelMatrix.kind` (``"dense"``, ``"conv"``, ``"depthwise"``,
            ``"transpose"``); a SeparableConv's pointwise kernel is a ``"conv"``.
        kernel: the kernel; s: one factor per output channel.
    """
    if kind == "transpose":                              # (k..., out, in)
        return kernel * s[:, None]
    if kind == "depthwise":                              # (k..., in, m): out = c·m + j
        return kernel * s.reshape(kernel.shape[-2], kernel.shape[-1])
    return kernel * s                                    # (..., out)


def clone_float64(layer):
    from cna_tf.baselines import clone_float64 as clone
    return clone(layer)


def folded_path_sum(model: keras.Model, contexts: List[LayerContext]) -> float:
    """Σ of the logits of a copy of ``model`` with every BatchNormalization of ``contexts``
    folded into its layer and then every parameter squared (kernels, biases, unfolded BN γ and
    β), fed an all-ones input in inference mode (SPEC §12, eq. 44).

    The copy is float64 (``keras.models.clone_model``, as `cna_tf.baselines` builds the
    squared-weight copy); a folded BatchNormalization becomes the identity plus the squared
    folded bias (its running mean set to −c², variance 1 and γ = √(1 + ε), or variance 1 − ε
    without γ; β = 0), or the layer's own bias holds c² where it has one. The logits are the
    classifier's affine output.
    """
    try:
        copy = keras.models.clone_model(model, clone_function=clone_float64, recursive=True)
    except Exception:  # noqa: BLE001 - e.g. a custom layer without a dtype argument
        copy = keras.models.clone_model(model, recursive=True)
    src, dst = model.weights, copy.weights
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError("the clone of the model has different variables than the model")
    where = {id(v): i for i, v in enumerate(src)}
    values = []
    for v in src:
        value = _value(v) if np.issubdtype(np.dtype(v.dtype), np.floating) else \
            np.asarray(keras.ops.convert_to_numpy(v))
        if getattr(v, "trainable", False) and np.issubdtype(value.dtype, np.floating):
            value = np.square(value.astype(np.float64))
        values.append(value)
    from cna_tf.baselines import kernel_variable, layer_kernels, kernel_kind
    for c in contexts:
        if c.bn is None:
            continue
        layer, bn = c.layer, c.bn
        s = scale(bn)
        role, kind, _ = layer_kernels(layer)[-1]  # a SeparableConv: its pointwise kernel
        kernel = kernel_variable(layer, role)
        values[where[id(kernel)]] = np.square(fold_kernel(kind, _value(kernel), s))
        mean = _value(bn.moving_mean)
        beta = _value(bn.beta) if bn.center else np.zeros_like(mean)
        bias = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
        b = _value(bias) if bias is not None else np.zeros_like(mean)
        c2 = np.square(s * (b - mean) + beta)
        if bias is not None:
            values[where[id(bias)]] = c2
            c2 = np.zeros_like(c2)
        values[where[id(bn.moving_mean)]] = -c2
        eps = float(bn.epsilon)
        if bn.scale:    # γ'(z − µ')/√(1 + ε) = z − µ'
            values[where[id(bn.moving_variance)]] = np.ones_like(mean)
            values[where[id(bn.gamma)]] = np.full_like(mean, math.sqrt(1.0 + eps))
        else:           # (z − µ')/√((1 − ε) + ε)
            values[where[id(bn.moving_variance)]] = np.full_like(mean, max(1 - eps, 0.0))
        if bn.center:
            values[where[id(bn.beta)]] = np.zeros_like(mean)
    for b, value in zip(dst, values):
        b.assign(np.asarray(value).astype(b.dtype))
    out, _ = replay(copy, ones_inputs(copy), mode="pre", training=False)
    z = np.asarray(keras.ops.convert_to_numpy(out[-1]), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sum(z))
