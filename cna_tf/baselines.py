"""Norm-based generalization measures (SPEC §2): the baselines L2, L2-path, spectral, 2018 bound.

Every measure runs over the model's weighted affine layers W_1..W_d in forward order, the
classifier included (`cna_tf.probe.affine_layers(model, include_output=True)`), and is divided
by the network margin gamma (SPEC §1, eq. 6):

* ``l2``       = Π_l ‖W_l‖_F / gamma                         (Neyshabur et al. 2015)
* ``spectral`` = Π_l σ_max(W_l) / gamma                      (Bartlett et al. 2017)
* ``l2_path``  = sqrt(Σ outputs of the squared-weight copy on an all-ones input) / gamma
  (Neyshabur et al. 2015, path-norm)
* ``bound_2018`` = sqrt( d² h ln(d h) Π_l σ_max(W_l)² Σ_l ‖W_l − W_l⁰‖_F² / σ_max(W_l)²
  / (gamma² m) )  (Neyshabur, Bhojanapalli & Srebro 2018, PAC-Bayes spectral bound, Theorem 1)

and the un-normalized products ``l2_raw``, ``spectral_raw``, ``l2_path_raw``; and, from SPEC §8
(Jiang et al. 2020, "Fantastic Generalization Measures", eqs. for dist. from init. and
sum-of-Frobenius), over the same matrices and not divided by the margin:

* ``dist_init``  = Σ_l ‖W_l − W_l⁰‖_F²  (NaN without the initial weights)
* ``sum_of_fro`` = d · (Π_l ‖W_l‖_F²)^(1/d)

Choices where SPEC §2 is silent (all documented here once):

* **The matrix of a layer** is the layer's patch matrix, shape (out_channels, k·in_channels): the
  linear map from one receptive field to the output channels at that position, i.e. the kernel
  reshaped to (out_channels, −1) (``Dense``: kernel (in, out) -> (out, in); ``ConvND``: kernel
  (k..., in, out) -> (out, k·in); ``Conv*Transpose``: kernel (k..., out, in) -> (out, k·in), the
  matrix of the equivalent stride-1 convolution). A layer that skips connections is given the
  matrix of the *equivalent ordinary convolution*, so that a model and its rewrite as plain Conv
  layers get the same measures: ``DepthwiseConv`` (kernel (k..., in, m)) is the block-sparse
  (in·m, k·in) matrix whose output channel c·m + j reads input channel c only, and a grouped
  ``ConvND`` (``groups`` = G) the block-diagonal one. Frobenius norms are those of the kernel
  either way; σ_max is the largest singular value over the diagonal blocks.
* **SeparableConv** is two matrices, its depthwise kernel (as a DepthwiseConv) and its pointwise
  kernel (a 1×1 conv): both enter every product and the depth d counts two. This matches the
  path norm, whose squared-weight copy squares both factors.
* **A layer called several times** (shared weights) contributes once per call, as it does to the
  function the network computes (its later calls are named ``name@1``, ``name@2``, ...).
* **h** (largest layer width) of the 2018 bound is the largest number of output units of a matrix
  (its number of rows, out_channels for a conv), as Neyshabur et al. 2018 define h ("number of
  output units") and as their reference code does (``weight.size(0)``); d is the number of
  matrices; ln is the natural logarithm; constants of the bound are left out, as in their code.
* **The squared-weight copy** of ``l2_path`` is ``keras.models.clone_model`` of the model (nested
  models included) in float64, with every variable created trainable squared (kernels, biases,
  BatchNormalization gamma and beta, ...) and every non-trainable state kept as it is (BN moving
  mean and variance, as the published PyTorch code squares parameters but not buffers). It runs
  in inference mode on a batch of one all-ones input (the model's input shape and dtype), and the
  sum is taken over the classifier's affine output (before any fused or following activation).
  Float64 keeps deep nets from overflowing float32. The user's model is never changed. A
  subclassed model is cloned through its traced functional twin (`cna_tf.probe.layer_graph`),
  which holds the same layers and variables, so it needs no ``get_config``.
* **Log space.** Products are sums of logs; the natural-scale float64 value is ``exp`` at the end,
  ``inf`` only where it exceeds float64 (~1.8e308), never an overflow warning.
* **Undefined values** are NaN with a `cna_tf.measures.CNAWarning` naming the reason (never an
  exception inside training): a margin <= 0 or non-finite (the network misclassifies the
  margin-percentile point, so the normalized measures are undefined; the raw products are still
  returned), missing ``initial_weights`` or ``train_size`` (the bound needs both), a squared-weight
  copy that cannot be built, or a negative path sum.

Examples:
    >>> w0 = cna_tf.baselines.capture_initial_weights(model)   # before training
    >>> model.fit(...)
    >>> gamma = cna_tf.margin(model.predict(x_train), y_train)
    >>> cna_tf.baselines.compute(model, gamma, initial_weights=w0, train_size=len(x_train))
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from keras import ops

from cna_tf.measures import CNAWarning
from cna_tf.probe import layer_graph, named_affine_layers, ones_inputs, replay

__all__ = ["compute", "l2", "spectral", "l2_path", "bound_2018", "l2_raw", "spectral_raw",
           "l2_path_raw", "capture_initial_weights", "initial_kernels", "kernel_matrices",
           "KernelMatrix", "BASELINE_KEYS", "dist_init", "sum_of_fro"]

BASELINE_KEYS: Tuple[str, ...] = ("l2", "spectral", "l2_path", "bound_2018", "l2_raw",
                                  "spectral_raw", "l2_path_raw", "dist_init", "sum_of_fro")

# What ``initial_weights`` may be (SPEC §6): capture_initial_weights' dict or get_weights()' list.
InitialWeights = Optional[Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]]

# Above this size a single matrix's largest eigenvalue is taken with a partial eigensolver.
_PARTIAL_EIGH_MIN = 512


def _warn(msg: str) -> None:
    warnings.warn(msg, CNAWarning, stacklevel=3)


# -- the matrices -----------------------------------------------------------------------------

def to_numpy(x) -> np.ndarray:
    """A variable's or tensor's value as numpy (``Variable.numpy()`` for a variable: on
    TensorFlow, ``ops.convert_to_numpy`` of a variable emits a NumPy-2 DeprecationWarning)."""
    if isinstance(x, keras.Variable):
        return np.asarray(x.numpy())
    return np.asarray(ops.convert_to_numpy(x))


def _to_float64(x) -> np.ndarray:
    return np.array(to_numpy(x), dtype=np.float64, copy=True)


def kernel_kind(layer) -> str:
    """The matrix kind of an affine layer: dense, conv, depthwise, separable or transpose."""
    L = keras.layers
    sep = tuple(getattr(L, n) for n in ("SeparableConv1D", "SeparableConv2D") if hasattr(L, n))
    dw = tuple(getattr(L, n) for n in ("DepthwiseConv1D", "DepthwiseConv2D") if hasattr(L, n))
    tr = tuple(getattr(L, n) for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
               if hasattr(L, n))
    if isinstance(layer, sep):
        return "separable"
    if isinstance(layer, dw):
        return "depthwise"
    if isinstance(layer, tr):
        return "transpose"
    if isinstance(layer, L.Dense):
        return "dense"
    return "conv"


def layer_kernels(layer) -> List[Tuple[str, str, object]]:
    """(role, matrix kind, kernel tensor) of each matrix of one affine layer."""
    kind = kernel_kind(layer)
    if kind == "separable":
        return [("depthwise_kernel", "depthwise", layer.depthwise_kernel),
                ("pointwise_kernel", "conv", layer.pointwise_kernel)]
    # ``layer.kernel`` is the effective kernel (LoRA included where enabled).
    return [("kernel", kind, layer.kernel)]


def _blocks(kind: str, kernel: np.ndarray, groups: int = 1) -> np.ndarray:
    """The diagonal blocks (G, rows, cols) of the layer's (out_channels, -1) patch matrix.

    Permuting columns does not change norms or singular values, so the blocks need not keep the
    column order of the dense matrix (see `KernelMatrix.dense`).
    """
    if kind == "dense":
        return kernel.T[None]
    if kind == "transpose":                            # (k..., out, in) -> (out, k*in)
        return np.moveaxis(kernel, -2, 0).reshape(1, kernel.shape[-2], -1)
    if kind == "depthwise":                            # (k..., in, m) -> in blocks (m, k)
        k = int(np.prod(kernel.shape[:-2], dtype=np.int64))
        c_in, mult = kernel.shape[-2:]
        return kernel.reshape(k, c_in, mult).transpose(1, 2, 0)
    # ordinary / grouped convolution: (k..., in/G, out) -> G blocks (out/G, k*in/G)
    k = int(np.prod(kernel.shape[:-2], dtype=np.int64))
    c_g, c_out = kernel.shape[-2:]
    g = max(int(groups), 1)
    return kernel.reshape(k, c_g, g, c_out // g).transpose(2, 3, 0, 1).reshape(
        g, c_out // g, k * c_g)


def _dense(kind: str, kernel: np.ndarray, groups: int = 1) -> np.ndarray:
    """The full (out_channels, k·in_channels) matrix, columns in (k..., in) order."""
    if kind == "dense":
        return kernel.T.copy()
    if kind == "transpose":
        return np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)
    if kind == "depthwise":                            # equivalent conv kernel (k..., in, in*m)
        c_in, mult = kernel.shape[-2:]
        full = np.zeros(kernel.shape[:-2] + (c_in, c_in * mult))
        for c in range(c_in):
            full[..., c, c * mult:(c + 1) * mult] = kernel[..., c, :]
    else:
        g = max(int(groups), 1)
        c_g, c_out = kernel.shape[-2:]
        o_g = c_out // g
        full = np.zeros(kernel.shape[:-2] + (c_g * g, c_out))
        for i in range(g):
            full[..., i * c_g:(i + 1) * c_g, i * o_g:(i + 1) * o_g] = \
                kernel[..., :, i * o_g:(i + 1) * o_g]
    return np.moveaxis(full, -1, 0).reshape(full.shape[-1], -1)


def _sigma_max(blocks: np.ndarray) -> float:
    """Largest singular value over a stack of blocks (float64, NaN/inf propagate)."""
    if blocks.size == 0:
        return 0.0
    if not np.all(np.isfinite(blocks)):
        return math.nan if np.any(np.isnan(blocks)) else math.inf
    scale = float(np.max(np.abs(blocks)))
    if scale == 0.0:
        return 0.0
    b = blocks / scale                                  # no overflow in the Gram matrix
    gram = b @ np.swapaxes(b, 1, 2) if b.shape[1] <= b.shape[2] else np.swapaxes(b, 1, 2) @ b
    n = gram.shape[-1]
    if gram.shape[0] == 1 and n >= _PARTIAL_EIGH_MIN:
        from scipy.linalg import eigh
        top = float(eigh(gram[0], eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])
    else:
        top = float(np.max(np.linalg.eigvalsh(gram)))
    return scale * math.sqrt(max(top, 0.0))


@dataclass(frozen=True)
class KernelMatrix:
    """One matrix W_l of SPEC §2: a kernel of an affine layer in its (out_channels, -1) form.

    Attributes:
        key: ``"<layer>/<role>"`` with the layer named as in ``ActivationProbe.layer_names``
            (``"block/conv/kernel"`` inside a nested model ``block``, ``"dense@1/kernel"`` for
            the second call of a shared layer). Keys of `capture_initial_weights`.
        layer: the Keras layer.
        role: ``"kernel"``, or ``"depthwise_kernel"`` / ``"pointwise_kernel"`` of a SeparableConv.
        kind: ``"dense"``, ``"conv"``, ``"depthwise"`` or ``"transpose"``.
        kernel: the kernel in Keras layout, float64 copy.
        groups: feature groups of a grouped convolution (1 otherwise).
    """

    key: str
    layer: keras.layers.Layer
    role: str
    kind: str
    kernel: np.ndarray
    groups: int = 1

    @property
    def blocks(self) -> np.ndarray:
        """Diagonal blocks (G, rows/G, cols/G) of the matrix (G = 1 for a full matrix)."""
        return _blocks(self.kind, self.kernel, self.groups)

    @property
    def shape(self) -> Tuple[int, int]:
        """(rows, cols) = (output channels/units, k·input channels) of the full matrix."""
        b = self.blocks
        return b.shape[0] * b.shape[1], b.shape[0] * b.shape[2]

    def dense(self) -> np.ndarray:
        """The full matrix (zeros outside the blocks), columns in the (k..., in) order."""
        return _dense(self.kind, self.kernel, self.groups)

    def frobenius(self) -> float:
        """‖W‖_F."""
        return float(np.linalg.norm(self.kernel.ravel()))

    def sigma_max(self) -> float:
        """σ_max(W), the spectral norm of the full matrix."""
        return _sigma_max(self.blocks)


def kernel_matrices(model: keras.Model) -> List[KernelMatrix]:
    """The matrices W_1..W_d of SPEC §2 in forward order, the classifier included.

    Args:
        model: a built Keras model: Functional, Sequential or subclassed (traced as
            `cna_tf.ActivationProbe` traces it); nested models and custom blocks are expanded.

    Returns:
        One `KernelMatrix` per kernel of every call of every weighted affine layer (two for a
        SeparableConv), with float64 copies of the kernels.

    Raises:
        cna_tf.UntraceableModelError: an unbuilt model or a ``call()`` that cannot be traced
            (see `ActivationProbe`).
    """
    out: List[KernelMatrix] = []
    for name, layer in named_affine_layers(model, include_output=True):
        groups = int(getattr(layer, "groups", 1) or 1)
        for role, kind, kernel in layer_kernels(layer):
            key = f"{name}/{role}"
            out.append(KernelMatrix(key, layer, role, kind, _to_float64(kernel),
                                    groups if kind == "conv" and role == "kernel" else 1))
    return out


def capture_initial_weights(model: keras.Model) -> Dict[str, np.ndarray]:
    """Float64 copies of the kernels W_l⁰ of every matrix, for `bound_2018` (SPEC §2).

    Call it before training: SPEC §2 (and §7, a defect of the published code) requires the run's
    own initial weights, not a fresh random initialization.

    Args:
        model: the built model, before training.

    Returns:
        An ordered dict ``key -> kernel`` (Keras layout, float64), keyed as `KernelMatrix.key`
        (``"<layer path>/<role>"``, e.g. ``"block/conv/kernel"``), in forward order. It is plain
        data (picklable) and matches the same model object later; for another model object
        whose keys differ (e.g. renamed layers), kernels are matched by position when every
        shape agrees.
    """
    return {m.key: m.kernel for m in kernel_matrices(model)}


def kernel_variable(layer, role: str):
    """The variable behind a layer's kernel (``layer.kernel`` is the effective kernel, a tensor
    when LoRA is enabled; its stored base variable is ``_kernel``)."""
    if role == "kernel":
        base = getattr(layer, "_kernel", None)
        return base if isinstance(base, keras.Variable) else layer.kernel
    return getattr(layer, role)


def initial_kernels(model: keras.Model, initial_weights: InitialWeights
                    ) -> Optional[Dict[str, np.ndarray]]:
    """Initial weights in any accepted form -> the dict `capture_initial_weights` returns.

    SPEC §6: ``initial_weights`` is either the dict ``capture_initial_weights(model)`` returns
    or the list ``model.get_weights()`` returns before training (the Keras habit). A list is
    matched by position and shape: against ``model.weights`` when it has one array per model
    weight (``get_weights()``), or against the kernels in forward order when it has one array per
    kernel matrix (``list(capture_initial_weights(model).values())``).

    Args:
        model: the model the weights belong to.
        initial_weights: None, a dict (returned as it is) or a list/tuple of arrays.

    Returns:
        None for None, else a dict ``kernel key -> float64 kernel`` (a dict is returned as given;
        its keys are matched when the measures are computed).

    Raises:
        ValueError: a list whose length or shapes do not match the model, naming the first
            mismatch and the fix; any other type.
    """
    if initial_weights is None or isinstance(initial_weights, Mapping):
        return initial_weights
    if not isinstance(initial_weights, (list, tuple)):
        raise ValueError(
            "initial_weights must be the dict cna_tf.baselines.capture_initial_weights(model) "
            "returns or the list model.get_weights() returns before training; got "
            f"{type(initial_weights).__name__}")
    arrays = [np.asarray(w) for w in initial_weights]
    mats = kernel_matrices(model)
    weights = model.weights
    fix = ("pass model.get_weights() (or cna_tf.baselines.capture_initial_weights(model)) taken "
           "from this model before training")
    if len(arrays) == len(weights):
        for i, (w, v) in enumerate(zip(arrays, weights)):
            if tuple(w.shape) != tuple(v.shape):
                raise ValueError(
                    f"initial_weights[{i}] has shape {tuple(w.shape)} but the model's weight "
                    f"{i} ('{v.path}') has shape {tuple(v.shape)}: the list does not come from "
                    f"this model's get_weights(); {fix}")
        position = {id(v): i for i, v in enumerate(weights)}
        out: Dict[str, np.ndarray] = {}
        for m in mats:
            i = position.get(id(kernel_variable(m.layer, m.role)))
            if i is None:
                raise ValueError(
                    f"the kernel of '{m.key}' is not one of model.weights, so a list cannot be "
                    "matched to it by position; pass "
                    "cna_tf.baselines.capture_initial_weights(model) instead")
            out[m.key] = arrays[i].astype(np.float64)
        return out
    if len(arrays) == len(mats) and all(tuple(w.shape) == m.kernel.shape
                                        for w, m in zip(arrays, mats)):
        return {m.key: w.astype(np.float64) for m, w in zip(mats, arrays)}
    raise ValueError(
        f"initial_weights is a list of {len(arrays)} arrays, but this model has "
        f"{len(weights)} weights (model.get_weights()) and {len(mats)} kernel matrices; {fix}")


# -- log-space helpers ------------------------------------------------------------------------

def _log(x) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(x, dtype=np.float64))


def _exp(x: float) -> float:
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return float(np.exp(np.float64(x)))


def _log_gamma(margin) -> Tuple[float, Optional[str]]:
    """log(gamma), or NaN and the reason the normalized measures are undefined."""
    try:
        gamma = float(margin)
    except (TypeError, ValueError):
        return math.nan, f"margin {margin!r} is not a number"
    if not math.isfinite(gamma):
        return math.nan, (f"margin is {gamma}: the normalized baselines (raw product / margin) "
                          "are undefined")
    if gamma <= 0:
        return math.nan, (f"margin is {gamma:.4g} <= 0: the network misclassifies the "
                          "margin-percentile training point, so the normalized baselines "
                          "(raw product / margin) are undefined; the raw products are kept")
    return math.log(gamma), None


def _normalized(log_raw: float, log_gamma: float) -> float:
    if math.isnan(log_gamma):
        return math.nan
    return _exp(log_raw - log_gamma)


def _log_products(mats: Sequence[KernelMatrix]) -> Tuple[float, float, np.ndarray]:
    """(log Π‖W‖_F, log Π σ_max, per-matrix log σ_max)."""
    log_fro = _log([m.frobenius() for m in mats])
    log_sig = _log([m.sigma_max() for m in mats])
    return float(np.sum(log_fro)), float(np.sum(log_sig)), log_sig


# -- the squared-weight copy (path norm) ------------------------------------------------------

def clone_float64(layer):
    """A float64 copy of a layer's configuration with zero initializers (its variables are
    assigned after); a keras.ops node of a traced graph is returned as it is."""
    if not isinstance(layer, keras.layers.Layer):  # a keras.ops node of a traced graph
        return layer
    config = layer.get_config()
    config["dtype"] = "float64"
    for key in config:  # every variable is overwritten: skip the random initialization
        if key.endswith("_initializer") and config[key] is not None:
            config[key] = "zeros"
    return layer.__class__.from_config(config)


def _keep_ops(layer):
    if not isinstance(layer, keras.layers.Layer):
        return layer
    return layer.__class__.from_config(layer.get_config())


def _squared_copy(model: keras.Model) -> keras.Model:
    """A float64 (where possible) clone whose trainable variables are squared.

    A subclassed model (which ``clone_model`` can only rebuild from a ``get_config``) is
    cloned through its traced functional twin, which holds the same layers and variables.
    """
    graph = layer_graph(model)
    if graph is not model and graph is not getattr(model, "_functional", None):
        model = graph
    try:
        copy = keras.models.clone_model(model, clone_function=clone_float64, recursive=True)
    except Exception:  # noqa: BLE001 - e.g. a custom layer without a dtype argument
        copy = keras.models.clone_model(model, clone_function=_keep_ops, recursive=True)
    src, dst = model.weights, copy.weights
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise ValueError("the clone of the model has different variables than the model")
    for a, b in zip(src, dst):
        value = to_numpy(a)
        if getattr(a, "trainable", False) and np.issubdtype(value.dtype, np.floating):
            value = np.square(value.astype(np.float64))
        b.assign(np.asarray(value).astype(b.dtype))
    return copy


def _path_sum(model: keras.Model) -> float:
    """Σ of the classifier's affine outputs of the squared-weight copy on an all-ones input."""
    copy = _squared_copy(model)
    values, _ = replay(copy, ones_inputs(copy), mode="pre", training=False)
    z = np.asarray(to_numpy(values[-1]), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sum(z))


def _log_path(model: keras.Model) -> float:
    """0.5 · log Σ outputs (so exp gives sqrt(Σ outputs)), NaN with a warning if undefined."""
    try:
        total = _path_sum(model)
    except Exception as exc:  # noqa: BLE001 - never an exception inside training
        _warn(f"l2_path: the squared-weight copy of model '{model.name}' could not be run "
              f"({type(exc).__name__}: {exc}); l2_path is NaN")
        return math.nan
    if math.isnan(total):
        _warn("l2_path: the squared-weight network's output sum is NaN (non-finite weights?)")
        return math.nan
    if total < 0:
        _warn(f"l2_path: the squared-weight network's output sum is {total:.4g} < 0 (a "
              "BatchNormalization moving mean shifts it below zero); its square root is NaN")
        return math.nan
    return 0.5 * float(_log(total))


# -- the 2018 bound ---------------------------------------------------------------------------

def match_initial(mats: Sequence[KernelMatrix],
                  initial_weights: Mapping[str, np.ndarray]) -> List[np.ndarray]:
    """The initial kernel of each matrix, by key, else by position; ValueError naming the
    mismatch and the fix when they do not fit the model."""
    keys = [m.key for m in mats]
    if all(k in initial_weights for k in keys):
        init = [np.asarray(initial_weights[k], dtype=np.float64) for k in keys]
    else:
        init = [np.asarray(v, dtype=np.float64) for v in initial_weights.values()]
        if len(init) != len(mats):
            missing = [k for k in keys if k not in initial_weights]
            raise ValueError(
                f"initial_weights do not match the model: {len(initial_weights)} kernels for "
                f"{len(mats)} matrices, keys {missing[:5]} missing. Capture them with "
                "capture_initial_weights(model) on this model before training.")
    for m, w0 in zip(mats, init):
        if w0.shape != m.kernel.shape:
            raise ValueError(f"initial kernel for '{m.key}' has shape {w0.shape}, the model's "
                             f"has {m.kernel.shape}")
    return init


def _log_bound(mats: Sequence[KernelMatrix], log_sig: np.ndarray, log_gamma: float,
               initial_weights: Optional[Mapping[str, np.ndarray]],
               train_size: Optional[int]) -> float:
    if initial_weights is None:
        _warn("bound_2018 is NaN: no initial_weights were given (capture them with "
              "cna_tf.baselines.capture_initial_weights(model) before training)")
        return math.nan
    if train_size is None:
        _warn("bound_2018 is NaN: no train_size (training-set size m) was given")
        return math.nan
    m = int(train_size)
    if m <= 0 or m != train_size:
        raise ValueError(f"train_size must be a positive integer, got {train_size!r}")
    if math.isnan(log_gamma):
        return math.nan
    init = match_initial(mats, initial_weights)
    d = len(mats)
    h = max(mat.shape[0] for mat in mats)
    log_dist = _log([np.linalg.norm((mat.kernel - w0).ravel()) for mat, w0 in zip(mats, init)])
    with np.errstate(invalid="ignore", over="ignore"):
        log_ratio = float(np.logaddexp.reduce(2.0 * log_dist - 2.0 * log_sig))
        log_sum_sig = float(2.0 * np.sum(log_sig))
    log_ln_dh = float(_log(math.log(d * h)))
    total = (2.0 * math.log(d) + math.log(h) + log_ln_dh + log_sum_sig + log_ratio
             - 2.0 * log_gamma - math.log(m))
    if math.isnan(total):
        _warn("bound_2018 is NaN: a layer has a zero or non-finite kernel")
    return 0.5 * total


# -- SPEC §8: distance from initialization, sum of Frobenius norms ----------------------------

def _log_dist_init(mats: Sequence[KernelMatrix],
                   initial_weights: Optional[Mapping[str, np.ndarray]]) -> float:
    """log Σ_l ‖W_l − W_l⁰‖_F² (log-sum-exp of the per-matrix logs), NaN without W⁰."""
    if initial_weights is None:
        return math.nan
    init = match_initial(mats, initial_weights)
    log_sq = 2.0 * _log([np.linalg.norm((m.kernel - w0).ravel()) for m, w0 in zip(mats, init)])
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.logaddexp.reduce(log_sq))


def _log_sum_of_fro(mats: Sequence[KernelMatrix], log_l2: float) -> float:
    """log( d · (Π_l ‖W_l‖_F²)^(1/d) ) = log d + (2/d) · Σ_l log ‖W_l‖_F."""
    d = len(mats)
    if d == 0:
        return math.nan
    return math.log(d) + 2.0 * log_l2 / d


# -- public API -------------------------------------------------------------------------------

def dist_init(model: keras.Model, initial_weights: InitialWeights) -> float:
    """Σ_l ‖W_l − W_l⁰‖_F² over the matrices of SPEC §2 (SPEC §8; Jiang et al. 2020).

    Args:
        model: the trained model.
        initial_weights: `capture_initial_weights(model)` or ``model.get_weights()`` taken
            before training (`initial_kernels`).

    Returns:
        The squared distance (float64, computed in log space), or NaN with a `CNAWarning`
        when ``initial_weights`` is None.

    Raises:
        ValueError: ``initial_weights`` that do not match the model.
    """
    initial_weights = initial_kernels(model, initial_weights)
    if initial_weights is None:
        _warn("dist_init is NaN: no initial_weights were given (capture them with "
              "cna_tf.baselines.capture_initial_weights(model) before training)")
    return _exp(_log_dist_init(kernel_matrices(model), initial_weights))


def sum_of_fro(model: keras.Model) -> float:
    """d · (Π_l ‖W_l‖_F²)^(1/d) over the d matrices of SPEC §2 (SPEC §8; Jiang et al. 2020),
    float64, computed in log space."""
    mats = kernel_matrices(model)
    return _exp(_log_sum_of_fro(mats, _log_products(mats)[0]))


def l2_raw(model: keras.Model) -> float:
    """Π_l ‖W_l‖_F over all matrices (SPEC §2), float64, computed in log space."""
    return _exp(_log_products(kernel_matrices(model))[0])


def spectral_raw(model: keras.Model) -> float:
    """Π_l σ_max(W_l) over all matrices (SPEC §2), float64, computed in log space."""
    return _exp(_log_products(kernel_matrices(model))[1])


def l2_path_raw(model: keras.Model) -> float:
    """sqrt(Σ outputs) of the squared-weight copy on an all-ones input (SPEC §2).

    NaN with a `CNAWarning` if the copy cannot be built or run, or the sum is negative.
    """
    return _exp(_log_path(model))


def l2(model: keras.Model, margin: float) -> float:
    """Π_l ‖W_l‖_F / gamma (SPEC §2; Neyshabur et al. 2015). NaN (warning) if gamma <= 0."""
    log_gamma, reason = _log_gamma(margin)
    if reason:
        _warn(f"l2 is NaN: {reason}")
    return _normalized(_log_products(kernel_matrices(model))[0], log_gamma)


def spectral(model: keras.Model, margin: float) -> float:
    """Π_l σ_max(W_l) / gamma (SPEC §2; Bartlett et al. 2017). NaN (warning) if gamma <= 0."""
    log_gamma, reason = _log_gamma(margin)
    if reason:
        _warn(f"spectral is NaN: {reason}")
    return _normalized(_log_products(kernel_matrices(model))[1], log_gamma)


def l2_path(model: keras.Model, margin: float) -> float:
    """l2_path_raw / gamma (SPEC §2; Neyshabur et al. 2015). NaN (warning) if gamma <= 0."""
    log_gamma, reason = _log_gamma(margin)
    if reason:
        _warn(f"l2_path is NaN: {reason}")
        return math.nan
    return _normalized(_log_path(model), log_gamma)


def bound_2018(model: keras.Model, margin: float, initial_weights: InitialWeights,
               train_size: Optional[int]) -> float:
    """Neyshabur et al. 2018 PAC-Bayes spectral bound (SPEC §2), without constants.

    sqrt( d² · h · ln(d·h) · Π_l σ_max(W_l)² · Σ_l ‖W_l − W_l⁰‖_F² / σ_max(W_l)²
          / (gamma² · m) ),
    d = number of matrices, h = largest number of output units of a matrix, m = ``train_size``.

    Args:
        model: the trained model.
        margin: the network margin gamma.
        initial_weights: `capture_initial_weights(model)` or ``model.get_weights()`` taken
            before training (`initial_kernels`).
        train_size: training-set size m.

    Returns:
        The bound (0 at initialization, where W = W⁰), or NaN with a `CNAWarning` when the
        margin is <= 0 or ``initial_weights`` / ``train_size`` is missing.

    Raises:
        ValueError: ``initial_weights`` that do not match the model, or a bad ``train_size``.
    """
    initial_weights, log_gamma, _, mats, (_, _, log_sig) = _prepare(
        model, margin, initial_weights, "bound_2018 is")
    return _exp(_log_bound(mats, log_sig, log_gamma, initial_weights, train_size))


def _prepare(model, margin: float, initial_weights: InitialWeights, nan_what: str):
    """What `bound_2018` and `compute` both start from: the initial kernels, log gamma (with a
    `CNAWarning` naming ``nan_what`` when the margin makes them NaN), the kernel matrices and
    their log products."""
    initial_weights = initial_kernels(model, initial_weights)
    log_gamma, reason = _log_gamma(margin)
    if reason:
        warnings.warn(f"{nan_what} NaN: {reason}", CNAWarning, stacklevel=3)  # the caller of compute/bound_2018
    mats = kernel_matrices(model)
    return initial_weights, log_gamma, reason, mats, _log_products(mats)


def compute(model: keras.Model, margin: float, initial_weights: InitialWeights = None,
            train_size: Optional[int] = None) -> Dict[str, float]:
    """All baselines of SPEC §2 for one network instance.

    Args:
        model: a built Keras model, Functional, Sequential or subclassed. It is not
            changed: the path norm runs on a squared-weight clone.
        margin: the network margin gamma_margin (SPEC §1, eq. 6), e.g. `cna_tf.margin`.
        initial_weights: the weights before training, as the dict
            `capture_initial_weights(model)` returns or the list ``model.get_weights()``
            returns (matched by position and shape, `initial_kernels`); without them
            ``bound_2018`` is NaN (with a `CNAWarning`), the other measures are unaffected.
        train_size: training-set size m of the bound; without it ``bound_2018`` is NaN.

    Returns:
        dict of Python floats (float64 natural scale, ``inf`` only beyond float64): ``l2``,
        ``spectral``, ``l2_path``, ``bound_2018``, ``l2_raw``, ``spectral_raw``,
        ``l2_path_raw``, and SPEC §8's ``dist_init`` and ``sum_of_fro`` (`BASELINE_KEYS`).
        The normalized measures are NaN, with a `CNAWarning` naming the reason, when the
        margin is <= 0 or not finite; the raw products, ``dist_init`` and ``sum_of_fro`` do not
        use the margin and are returned regardless. ``dist_init`` is NaN (with a `CNAWarning`)
        without ``initial_weights``.

    Raises:
        cna_tf.UntraceableModelError: an unbuilt model or an untraceable ``call()``.
        ValueError: ``initial_weights`` that do not match the model, or a bad ``train_size``.
    """
    initial_weights, log_gamma, reason, mats, (log_l2, log_spec, log_sig) = _prepare(
        model, margin, initial_weights, "l2, spectral, l2_path and bound_2018 are")
    log_path = _log_path(model)
    if initial_weights is None:
        _warn("dist_init is NaN: no initial_weights were given (capture them with "
              "cna_tf.baselines.capture_initial_weights(model) before training)")
    if reason is None:
        bound = _exp(_log_bound(mats, log_sig, log_gamma, initial_weights, train_size))
    else:
        bound = math.nan
    return {
        "l2": _normalized(log_l2, log_gamma),
        "spectral": _normalized(log_spec, log_gamma),
        "l2_path": _normalized(log_path, log_gamma),
        "bound_2018": bound,
        "l2_raw": _exp(log_l2),
        "spectral_raw": _exp(log_spec),
        "l2_path_raw": _exp(log_path),
        "dist_init": _exp(_log_dist_init(mats, initial_weights)),
        "sum_of_fro": _exp(_log_sum_of_fro(mats, log_l2)),
    }
