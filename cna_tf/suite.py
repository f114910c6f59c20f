"""The field's measure suite (SPEC §12): Jiang et al. 2020's measures as Dziugaite et al. 2020
compute them, BN folded, γ₁₀, reshaped and FFT spectral norms, reported as √(µ/m) or
½(log µ − log m).

API (fixed; the pipelines import it):

* ``compute(model, x, y, *, initial_weights=None, names=None, seed=0, fft=True) -> SuiteResult``
  returns ``{name: float}`` for every post-hoc measure of `MEASURES` (or those in ``names``).
  The result is a ``dict`` with three attributes:

  - ``result.reasons``: ``{name: reason}`` for every measure that is NaN (γ₁₀ ≤ 0, no
    initial weights, a layer the FFT norm cannot take, ...). Log it as a tag; the other
    measures are still there.
  - ``result.parameters``: what the measures were computed from: ``m`` (training-set size),
    ``gamma_10``, ``depth`` (d), ``num_params`` (ω), and the σ′ / α′ of each search run
    (``pacbayes_sigma``, ``pacbayes_mag_sigma``, ``sharpness_alpha``, ``sharpness_mag_alpha``).
  - ``result.seconds``: wall time by part: ``"cheap"`` (everything but the searches) and one
    entry per search run (``"pacbayes_flatness"``, ``"pacbayes_mag_flatness"``,
    ``"sharpness_flatness"``, ``"sharpness_mag_flatness"``).

* ``MEASURES``: ``{name: Measure(equation, formula, inputs, cost, reported)}``, cost
  ``"cheap"`` or ``"search"``; `CHEAP` and `SEARCH` list the names of each class.
* Every name of `MEASURES` is also a module-level PGDL callable ``complexity(model, dataset)``
  (SPEC §11): ``mlflow run . -e score -P measure=cna_tf.suite:pacbayes_orig``. A score callable
  gets no initial weights, so the measures whose inputs include ``"initial_weights"`` raise a
  ValueError naming why (score records it on the run); an undefined value raises likewise.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["compute", "MEASURES", "Measure", "SuiteResult", "CHEAP", "SEARCH", "OPTIMIZATION",
           "capture_initial_weights"]


@dataclass(frozen=True)
class Measure:
    """One row of SPEC §12's table.

    Attributes:
        equation: Jiang et al. 2020's equation number ("–" for Dziugaite's extras).
        formula: µ in words, before the report form.
        inputs: what it needs: ``"weights"``, ``"initial_weights"``, ``"margin"`` (γ₁₀, one
            forward pass over the training set), ``"data"`` (the training set), ``"search"``.
        cost: ``"cheap"`` or ``"search"`` (a σ′ / α′ bisection of `cna_tf.flatness`).
        reported: ``"sqrt"`` (√(µ/m)) or ``"log"`` (½(log µ − log m)).
    """

    equation: str
    formula: str
    inputs: Tuple[str, ...]
    cost: str
    reported: str


_W, _W0, _G, _S = "weights", "initial_weights", "margin", "search"

_BASE: Dict[str, Measure] = {
    "num_params": Measure("20", "ω (kernel entries, biases excluded)", (_W,), "cheap", "sqrt"),
    "inverse_margin": Measure("22", "1/γ₁₀²", (_G,), "cheap", "sqrt"),
    "spec_init_main": Measure("29", "Π‖W_i‖₂²/γ₁₀² · Σ‖W_i − W_i⁰‖_F²/‖W_i‖₂²",
                              (_W, _W0, _G), "cheap", "log"),
    "spec_orig_main": Measure("30", "Π‖W_i‖₂²/γ₁₀² · Σ‖W_i‖_F²/‖W_i‖₂²", (_W, _G), "cheap",
                              "log"),
    "prod_of_spec_over_margin": Measure("31", "Π‖W_i‖₂²/γ₁₀²", (_W, _G), "cheap", "log"),
    "prod_of_spec": Measure("32", "Π‖W_i‖₂²", (_W,), "cheap", "log"),
    "fro_over_spec": Measure("33", "Σ‖W_i‖_F²/‖W_i‖₂²", (_W,), "cheap", "sqrt"),
    "sum_of_spec_over_margin": Measure("34", "d·(Π‖W_i‖₂²/γ₁₀²)^(1/d)", (_W, _G), "cheap",
                                       "log"),
    "sum_of_spec": Measure("35", "d·(Π‖W_i‖₂²)^(1/d)", (_W,), "cheap", "log"),
    "prod_of_fro_over_margin": Measure("36", "Π‖W_i‖_F²/γ₁₀²", (_W, _G), "cheap", "log"),
    "prod_of_fro": Measure("37", "Π‖W_i‖_F²", (_W,), "cheap", "log"),
    "sum_of_fro_over_margin": Measure("38", "d·(Π‖W_i‖_F²/γ₁₀²)^(1/d)", (_W, _G), "cheap",
                                      "log"),
    "sum_of_fro": Measure("39", "d·(Π‖W_i‖_F²)^(1/d)", (_W,), "cheap", "log"),
    "fro_dist": Measure("40", "Σ‖W_i − W_i⁰‖_F²", (_W, _W0), "cheap", "sqrt"),
    "dist_spec_init": Measure("41", "Σ‖W_i − W_i⁰‖₂²", (_W, _W0), "cheap", "sqrt"),
    "param_norm": Measure("42", "Σ‖W_i‖_F²", (_W,), "cheap", "sqrt"),
    "path_norm_over_margin": Measure("43", "path_norm/γ₁₀²", (_W, _G), "cheap", "sqrt"),
    "path_norm": Measure("44", "Σ logits of the squared-parameter copy (BN folded) on an "
                         "all-ones input", (_W,), "cheap", "sqrt"),
    "pacbayes_init": Measure("48", "‖w − w⁰‖²/(4σ′²) + log(m/σ′) + 10", (_W, _W0, _S),
                             "search", "sqrt"),
    "pacbayes_orig": Measure("49", "‖w‖²/(4σ′²) + log(m/σ′) + 10", (_W, _S), "search", "sqrt"),
    "pacbayes_flatness": Measure("53", "1/σ′²", (_S,), "search", "sqrt"),
    "pacbayes_mag_init": Measure(
        "56", "¼Σ_i log((ε² + (σ′²+1)‖w − w⁰‖²/ω)/(ε² + σ′²(w_i − w_i⁰)²)) + log(m/σ′) + 10",
        (_W, _W0, _S), "search", "sqrt"),
    "pacbayes_mag_orig": Measure(
        "57", "¼Σ_i log((ε² + (σ′²+1)‖w‖²/ω)/(ε² + σ′²(w_i − w_i⁰)²)) + log(m/σ′) + 10",
        (_W, _W0, _S), "search", "sqrt"),
    "pacbayes_mag_flatness": Measure("61", "1/σ′_mag²", (_S,), "search", "sqrt"),
    "sharpness_flatness": Measure("–", "1/α′², box |w_i − w_i*| ≤ α", (_S,), "search", "sqrt"),
    "sharpness_mag_flatness": Measure("–", "1/α′_mag², box |w_i − w_i*| ≤ α|w_i*| + ε", (_S,),
                                      "search", "sqrt"),
    "l2_norm": Measure("–", "‖w‖", (_W,), "cheap", "sqrt"),
    "l2_dist": Measure("–", "‖w − w⁰‖", (_W, _W0), "cheap", "sqrt"),
}

#: the measures that exist with the FFT spectral norm too, as ``<name>_fft`` (SPEC §12)
FFT_FORMS: Tuple[str, ...] = ("spec_init_main", "spec_orig_main", "prod_of_spec_over_margin",
                              "prod_of_spec", "fro_over_spec", "sum_of_spec_over_margin",
                              "sum_of_spec", "dist_spec_init")


def _with_fft(base: Dict[str, Measure]) -> Dict[str, Measure]:
    out: Dict[str, Measure] = {}
    for name, m in base.items():
        out[name] = m
        if name in FFT_FORMS:
            out[name + "_fft"] = Measure(m.equation, m.formula.replace("‖₂", "‖₂ (FFT)"),
                                         m.inputs, m.cost, m.reported)
    return out


#: name -> `Measure`, in SPEC §12's order (FFT forms after their reshaped form)
MEASURES: Dict[str, Measure] = _with_fft(_BASE)
CHEAP: Tuple[str, ...] = tuple(n for n, m in MEASURES.items() if m.cost == "cheap")
SEARCH: Tuple[str, ...] = tuple(n for n, m in MEASURES.items() if m.cost == "search")
#: SPEC §12's optimization-based measures: they need the training run, so `cna_tf.optimization`
#: computes them during `train`, not here. Named here, Keras-free, for the steps that only read
#: them (`compare` never imports Keras).
OPTIMIZATION: Tuple[str, ...] = ("steps_to_ce_0.1", "steps_ce_0.1_to_0.01", "grad_noise_final")


class SuiteResult(dict):
    """``{name: float}`` with ``reasons``, ``parameters`` and ``seconds`` (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reasons: Dict[str, str] = {}
        self.parameters: Dict[str, float] = {}
        self.seconds: Dict[str, float] = {}


EPSILON = 1e-3  # ε of the magnitude-aware PAC-Bayes sums (SPEC §12: the same as §8's)

_SEARCH_OF: Dict[str, str] = {  # measure -> the `cna_tf.flatness` search it reads
    "pacbayes_init": "pacbayes_flatness", "pacbayes_orig": "pacbayes_flatness",
    "pacbayes_flatness": "pacbayes_flatness", "pacbayes_mag_init": "pacbayes_mag_flatness",
    "pacbayes_mag_orig": "pacbayes_mag_flatness",
    "pacbayes_mag_flatness": "pacbayes_mag_flatness",
    "sharpness_flatness": "sharpness_flatness",
    "sharpness_mag_flatness": "sharpness_mag_flatness",
}


def _wanted(names, fft: bool) -> List[str]:
    if names is None:
        return [n for n in MEASURES if fft or not n.endswith("_fft")]
    picked = [names] if isinstance(names, str) else list(names)
    bad = [n for n in picked if n not in MEASURES]
    if bad or not picked:
        raise ValueError(f"unknown suite measure(s) {bad or picked}; choose from "
                         f"{', '.join(MEASURES)} (or names=None for all)")
    if not fft and any(n.endswith("_fft") for n in picked):
        raise ValueError(f"{[n for n in picked if n.endswith('_fft')]} asked for with fft=False; "
                         "drop them or pass fft=True")
    return list(dict.fromkeys(picked))


# -- the kernels, BN folded -------------------------------------------------------------------

@dataclass
class _Layer:
    """One kernel matrix W_i with BN folded, its initial W_i⁰ (folded likewise) and norms."""

    mat: object                       # cna_tf.baselines.KernelMatrix, folded
    context: object                   # cna_tf.folding.LayerContext
    init: Optional[np.ndarray] = None  # folded initial kernel


def _folded_layers(model, initial) -> Tuple[List[_Layer], Optional[str]]:
    """The folded matrices in forward order, with their folded initial kernels (None, and the
    reason, when the initial weights or the initial BN statistics are missing)."""
    from cna_tf import baselines, folding

    contexts = {c.name: c for c in folding.layer_contexts(model)}
    mats = baselines.kernel_matrices(model)
    init_kernels = None
    reason = None
    if initial is None:
        reason = ("no initial weights: pass initial_weights=cna_tf.suite.capture_initial_weights"
                  "(model) (or cna_tf.baselines.capture_initial_weights(model)) taken before "
                  "training")
    else:
        init_kernels = baselines.match_initial(mats, initial)
    out: List[_Layer] = []
    for i, mat in enumerate(mats):
        ctx = contexts[mat.key.rsplit("/", 1)[0]]
        last = baselines.layer_kernels(mat.layer)[-1][0] == mat.role
        kernel = mat.kernel
        w0 = None if init_kernels is None else init_kernels[i]
        if ctx.bn is not None and last:
            kernel = folding.fold_kernel(mat.kind, kernel, folding.scale(ctx.bn))
            if w0 is not None:
                s0, why = folding.initial_scale(ctx, initial)
                if s0 is None:
                    reason, init_kernels, w0 = why, None, None
                else:
                    w0 = folding.fold_kernel(mat.kind, w0, s0)
        out.append(_Layer(dataclasses.replace(mat, kernel=kernel), ctx, w0))
    if init_kernels is None:
        for layer in out:
            layer.init = None
    return out, reason


_LANCZOS_MIN = 64  # a matrix whose smaller side is at least this: σ_max by Lanczos


def _sigma(mat, kernel: Optional[np.ndarray] = None) -> float:
    """‖W‖₂ (reshaped) of a matrix, or of ``kernel`` in its place: `KernelMatrix.sigma_max`,
    with a single large block's top singular value taken by Lanczos iteration on WᵀW
    (``scipy.sparse.linalg.eigsh``, converged to machine precision, deterministic start):
    ~2 ms for a 500×500 layer where a full ``eigvalsh`` took 0.06 s alone and ~1 s with
    OpenBLAS threads fighting other processes for 2 cores."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    if kernel is not None:
        mat = dataclasses.replace(mat, kernel=kernel)
    blocks = mat.blocks
    if blocks.shape[0] != 1 or min(blocks.shape[1:]) < _LANCZOS_MIN \
            or not np.all(np.isfinite(blocks)):
        return mat.sigma_max()
    b = blocks[0]
    top = float(np.max(np.abs(b)))
    if top == 0.0:
        return 0.0
    b = b / top
    n = b.shape[1]
    gram = LinearOperator((n, n), matvec=lambda v: b.T @ (b @ v), dtype=np.float64)
    try:
        value = float(eigsh(gram, k=1, which="LA", return_eigenvectors=False,
                            v0=np.ones(n))[0])
    except ArpackNoConvergence:
        return mat.sigma_max()
    return top * math.sqrt(max(value, 0.0))


def _full_kernel(mat) -> np.ndarray:
    """An ordinary (k..., c_in, c_out) convolution kernel with the same operator norm."""
    if mat.kind == "transpose" or (mat.kind == "conv" and mat.groups == 1):
        return mat.kernel
    dense = mat.dense()                                               # (out, k·in)
    spatial = mat.kernel.shape[:-2]
    full = dense.reshape((dense.shape[0],) + spatial + (-1,))
    return np.moveaxis(full, 0, -1)


def _fft_norm(mat, context, kernel: np.ndarray) -> Tuple[float, Optional[str]]:
    """‖W‖₂ (FFT) of one matrix: the convolution's norm on its layer's input, σ_max for Dense."""
    from cna_tf.conv_spectrum import conv_spectral_norm

    if mat.kind == "dense":
        return _sigma(mat, kernel), None
    shape = context.input_shape
    layer = mat.layer
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    spatial = None if shape is None else (shape[1:] if first else shape[:-1])
    if spatial is None or len(spatial) != kernel.ndim - 2 or any(n is None for n in spatial):
        return math.nan, (f"layer '{context.name}' has input shape {shape}: the FFT spectral "
                          "norm needs the layer's spatial input size (build the model with a "
                          "fixed input shape)")
    full = _full_kernel(dataclasses.replace(mat, kernel=kernel))
    return conv_spectral_norm(full, spatial, getattr(layer, "dilation_rate", 1)), None


# -- γ₁₀ --------------------------------------------------------------------------------------

def _logits(model, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """The classifier's affine output (the logits, any final softmax undone) for ``x``.

    The layer graph runs eagerly (`cna_tf.probe`'s replay plan, inference mode): one pass per
    network, where tracing a predict function first took longer than the pass itself."""
    import keras

    from cna_tf.probe import _Plan

    plan = _Plan(model, "pre")
    dtype = plan.graph.inputs[0].dtype
    out = []
    for i in range(0, len(x), batch):
        values, _ = plan.run([keras.ops.convert_to_tensor(x[i:i + batch], dtype=dtype)],
                             training=False)
        out.append(np.asarray(keras.ops.convert_to_numpy(values[-1]), dtype=np.float64))
    z = np.concatenate(out)
    return z.reshape(len(z), -1)


def gamma_10(logits: np.ndarray, y: np.ndarray) -> float:
    """The ⌊m/10⌋-th smallest margin f(x)[y] − max_{k≠y} f(x)[k] over the m points (SPEC §12;
    the smallest for m < 10), on logits."""
    from cna_tf.measures import margins

    g = np.sort(margins(logits, y, on="logits", from_logits=True))
    return float(g[max(len(g) // 10, 1) - 1])


# -- the measures -----------------------------------------------------------------------------

def _log(v) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(v, dtype=np.float64))


def _logsumexp(v) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.logaddexp.reduce(np.asarray(v, dtype=np.float64)))


class _Report:
    """Puts each µ into the result in its reported form (SPEC §12), or NaN with the reason."""

    def __init__(self, result: SuiteResult, wanted: List[str], m: int):
        self.result, self.wanted, self.log_m = result, set(wanted), math.log(m)

    def nan(self, name: str, reason: str) -> None:
        if name in self.wanted:
            self.result[name] = math.nan
            self.result.reasons[name] = reason

    def log_mu(self, name: str, log_mu: float) -> None:
        """µ given as log µ (products, sums of positive terms)."""
        if name not in self.wanted:
            return
        log_mu = float(log_mu)
        if math.isnan(log_mu):
            return self.nan(name, "a kernel norm is zero or not finite")
        half = 0.5 * (log_mu - self.log_m)
        if MEASURES[name].reported == "log":
            self.result[name] = half
        else:
            with np.errstate(over="ignore"):
                self.result[name] = float(np.exp(np.float64(half)))

    def mu(self, name: str, mu: float) -> None:
        """µ given on its natural scale (the PAC-Bayes bounds, the path sum)."""
        if name not in self.wanted:
            return
        if not math.isfinite(mu) or mu < 0:
            return self.nan(name, f"µ = {mu:.6g} (before √(µ/m)) is negative or not finite")
        self.log_mu(name, math.log(mu) if mu > 0 else -math.inf)


def _one_blas_thread():
    """At most one BLAS thread: the kernels' products and eigensolvers are small, and with
    OpenBLAS threads competing with other processes for the cores each took ~10x longer."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn's dependency, in the lock
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _cheap(model, x, y, initial_weights, wanted, fft, report, result):
    """Every measure but the searches into ``result`` (`compute`); returns what the searches
    need: (γ₁₀'s reason or None, log γ₁₀, W⁰ known, w, w⁰, ω, W⁰'s reason)."""
    from cna_tf import baselines

    need = {k for n in wanted for k in MEASURES[n].inputs}
    initial = baselines.initial_kernels(model, initial_weights)
    layers, init_reason = _folded_layers(model, initial)
    d = len(layers)
    w = np.concatenate([lay.mat.kernel.ravel() for lay in layers])
    omega = w.size
    have_init = init_reason is None
    w0 = np.concatenate([lay.init.ravel() for lay in layers]) if have_init else None
    result.parameters.update(depth=float(d), num_params=float(omega))

    # γ₁₀
    log_g = math.nan
    g_reason = None
    if _G in need:
        g = gamma_10(_logits(model, x), y)
        result.parameters["gamma_10"] = g
        if not math.isfinite(g) or g <= 0:
            g_reason = (f"γ₁₀ = {g:.4g} <= 0: the 10th-percentile training point is "
                        "misclassified, so every measure divided by the margin is undefined "
                        "(|γ| is not taken)")
        else:
            log_g = math.log(g)

    log_fro = _log([np.linalg.norm(lay.mat.kernel.ravel()) for lay in layers])
    log_sq_fro = 2 * log_fro
    if have_init:
        diffs = [lay.mat.kernel - lay.init for lay in layers]
        log_sq_dist = 2 * _log([np.linalg.norm(df.ravel()) for df in diffs])

    def spectral_family(suffix: str, log_sig: np.ndarray, log_dist_sig) -> None:
        log_prod = float(2 * np.sum(log_sig))
        report.log_mu("prod_of_spec" + suffix, log_prod)
        report.log_mu("sum_of_spec" + suffix, math.log(d) + log_prod / d)
        log_fro_over = _logsumexp(log_sq_fro - 2 * log_sig)
        report.log_mu("fro_over_spec" + suffix, log_fro_over)
        if g_reason is None:
            over = log_prod - 2 * log_g
            report.log_mu("prod_of_spec_over_margin" + suffix, over)
            report.log_mu("sum_of_spec_over_margin" + suffix, math.log(d) + over / d)
            report.log_mu("spec_orig_main" + suffix, over + log_fro_over)
            if have_init:
                report.log_mu("spec_init_main" + suffix,
                              over + _logsumexp(log_sq_dist - 2 * log_sig))
        if have_init:
            report.log_mu("dist_spec_init" + suffix, _logsumexp(2 * log_dist_sig))

    sig = _log([_sigma(lay.mat) for lay in layers])
    sig_d = (_log([_sigma(lay.mat, df) for lay, df in zip(layers, diffs)]) if have_init
             else None)
    spectral_family("", sig, sig_d)
    if fft and any(n.endswith("_fft") for n in wanted):
        norms, dist_norms, fft_reason = [], [], None
        for i, lay in enumerate(layers):
            if lay.mat.kind == "dense":  # the plain σ_max, computed above
                norms.append(math.exp(sig[i]))
                if have_init:
                    dist_norms.append(math.exp(sig_d[i]))
                continue
            v, why = _fft_norm(lay.mat, lay.context, lay.mat.kernel)
            fft_reason = fft_reason or why
            norms.append(v)
            if have_init:
                dist_norms.append(_fft_norm(lay.mat, lay.context, diffs[i])[0])
        if fft_reason:
            for n in wanted:
                if n.endswith("_fft"):
                    report.nan(n, fft_reason)
        else:
            spectral_family("_fft", _log(norms), _log(dist_norms) if have_init else None)

    log_prod_fro = float(np.sum(log_sq_fro))
    report.log_mu("num_params", math.log(omega) if omega else -math.inf)
    report.log_mu("prod_of_fro", log_prod_fro)
    report.log_mu("sum_of_fro", math.log(d) + log_prod_fro / d)
    report.log_mu("param_norm", _logsumexp(log_sq_fro))
    report.log_mu("l2_norm", 0.5 * _logsumexp(log_sq_fro))
    if g_reason is None and _G in need:
        report.log_mu("inverse_margin", -2 * log_g)
        report.log_mu("prod_of_fro_over_margin", log_prod_fro - 2 * log_g)
        report.log_mu("sum_of_fro_over_margin", math.log(d) + (log_prod_fro - 2 * log_g) / d)
    if have_init:
        report.log_mu("fro_dist", _logsumexp(log_sq_dist))
        report.log_mu("l2_dist", 0.5 * _logsumexp(log_sq_dist))

    if {"path_norm", "path_norm_over_margin"} & set(wanted):
        from cna_tf import folding
        try:
            path = folding.folded_path_sum(model, [lay.context for lay in layers])
            report.mu("path_norm", path)
            if g_reason is None:
                report.mu("path_norm_over_margin", path / math.exp(2 * log_g))
        except Exception as exc:  # noqa: BLE001 - one measure fails, the rest go on
            why = (f"the squared-parameter copy could not be run ({type(exc).__name__}: "
                   f"{exc})")
            report.nan("path_norm", why)
            report.nan("path_norm_over_margin", why)
    return g_reason, log_g, have_init, w, w0, omega, init_reason


def compute(model, x, y, *, initial_weights=None, names: Optional[Iterable[str]] = None,
            seed: int = 0, fft: bool = True, samples: int = 5000,
            train_size: Optional[int] = None) -> SuiteResult:
    """Every post-hoc measure of SPEC §12 for one trained network.

    Args:
        model: a built Keras classifier: Functional, Sequential or subclassed (nested models
            allowed). Its weights are restored exactly after the searches.
        x: its training inputs as it takes them (preprocessed), shape (m, ...): γ₁₀ runs over
            all of them, the searches over a seeded subset of ``samples``.
        y: their labels, integer class indices (m,) or one-hot rows.
        initial_weights: the weights before training: `capture_initial_weights` (kernels and
            the initial BN statistics), `cna_tf.baselines.capture_initial_weights` or
            ``model.get_weights()`` taken before training (initial BN statistics then come from
            the BN layers' constant initializers). Without them the measures whose `MEASURES`
            inputs include ``"initial_weights"`` are NaN with the reason.
        names: a subset of `MEASURES` (default: all; the searches run only when one of their
            measures is named).
        seed: seed of the searches (`cna_tf.flatness.search`).
        fft: also compute the ``<name>_fft`` measures (False: left out).
        samples: size of the searches' seeded training subset (SPEC §8: 5,000).
        train_size: the training-set size m of the report form (default: len(x)).

    Returns:
        `SuiteResult`: ``{name: float}`` in `MEASURES` order, with ``reasons`` (name -> why it
        is NaN), ``parameters`` and ``seconds`` (see the module docstring).

    Raises:
        ValueError: an unknown name, an ``_fft`` name with ``fft=False``, bad labels, or
            initial weights that do not match the model.
        cna_tf.UntraceableModelError: a subclassed or unbuilt model.
    """
    import keras

    from cna_tf import flatness
    from cna_tf.measures import class_indices

    wanted = _wanted(names, fft)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("cna_tf.suite.compute needs a built keras.Model with trained weights")
    x = np.asarray(x)
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    y = class_indices(y, n=len(x), num_classes=units)
    m = int(train_size) if train_size is not None else len(x)
    if m < 1:
        raise ValueError(f"the training set is empty (m = {m}); pass the training inputs")
    t0 = time.perf_counter()
    result = SuiteResult()
    report = _Report(result, wanted, m)
    result.parameters["m"] = float(m)
    with _one_blas_thread():
        g_reason, log_g, have_init, w, w0, omega, init_reason = _cheap(
            model, x, y, initial_weights, wanted, fft, report, result)
    result.seconds["cheap"] = time.perf_counter() - t0


    searches = list(dict.fromkeys(_SEARCH_OF[n] for n in wanted if n in _SEARCH_OF))
    if searches:
        found = flatness.search(model, x, y, samples=samples, seed=seed, measures=searches)
        for name, r in found.items():
            result.parameters[r.parameter] = float(r.value)
            result.seconds[name] = float(r.seconds)
        log_m = math.log(m)
        if "pacbayes_flatness" in found:
            s = found["pacbayes_flatness"].value
            report.log_mu("pacbayes_flatness", -2 * math.log(s))
            tail = math.log(m / s) + 10
            report.mu("pacbayes_orig", float(w @ w) / (4 * s * s) + tail)
            if have_init:
                report.mu("pacbayes_init", float((w - w0) @ (w - w0)) / (4 * s * s) + tail)
        if "pacbayes_mag_flatness" in found:
            s = found["pacbayes_mag_flatness"].value
            report.log_mu("pacbayes_mag_flatness", -2 * math.log(s))
            if have_init:
                dw = w - w0
                log_den = float(np.sum(np.log(EPSILON ** 2 + s * s * dw * dw)))
                tail = log_m - math.log(s) + 10
                for name, ref in (("pacbayes_mag_init", dw), ("pacbayes_mag_orig", w)):
                    num = EPSILON ** 2 + (s * s + 1) * float(ref @ ref) / omega
                    report.mu(name, 0.25 * (omega * math.log(num) - log_den) + tail)
        for name in ("sharpness_flatness", "sharpness_mag_flatness"):
            if name in found:
                report.log_mu(name, -2 * math.log(found[name].value))

    if not have_init:
        for n in wanted:
            if _W0 in MEASURES[n].inputs:
                report.nan(n, init_reason)
    if g_reason is not None:
        for n in wanted:
            if _G in MEASURES[n].inputs:
                report.nan(n, g_reason)
    ordered = SuiteResult((n, result[n]) for n in wanted if n in result)
    ordered.reasons = {n: result.reasons[n] for n in wanted if n in result.reasons}
    ordered.parameters, ordered.seconds = result.parameters, result.seconds
    missing = [n for n in wanted if n not in ordered]
    if missing:  # every named measure gets a value or a reason
        raise AssertionError(f"suite measures not computed: {missing}")
    return ordered


def capture_initial_weights(model) -> Dict[str, np.ndarray]:
    """The initial state the suite needs, taken before training: the kernels
    (`cna_tf.baselines.capture_initial_weights`, same keys) and the γ and running variance of
    every BatchNormalization folded into a layer (keys ``"<bn name>/gamma"``,
    ``"<bn name>/moving_variance"``). Plain float64 data; `cna_tf.baselines` accepts it too."""
    from cna_tf import baselines, folding

    out = baselines.capture_initial_weights(model)
    out.update(folding.capture_bn_state(model))
    return out


# -- PGDL callables (SPEC §11): cna_tf.suite:<name> -------------------------------------------

def _arrays(dataset) -> Tuple[np.ndarray, np.ndarray]:
    """A dataset of (inputs, labels) batches (or one (x, y) pair of arrays) as two arrays."""
    if isinstance(dataset, tuple) and len(dataset) == 2:
        return np.asarray(dataset[0]), np.asarray(dataset[1])
    xs, ys = [], []
    for xb, yb in dataset:
        xs.append(np.asarray(xb))
        ys.append(np.asarray(yb))
    if not xs:
        raise ValueError("the dataset is empty: a suite measure needs the training set")
    return np.concatenate(xs), np.concatenate(ys)


def _complexity(name: str):
    measure = MEASURES[name]

    def complexity(model, dataset) -> float:
        x, y = _arrays(dataset)
        result = compute(model, x, y, names=[name])
        if not math.isfinite(result[name]):
            raise ValueError(f"{name} is undefined for this network: "
                             f"{result.reasons.get(name, 'not finite')}")
        return result[name]

    complexity.__name__ = complexity.__qualname__ = name
    form = "√(µ/m)" if measure.reported == "sqrt" else "½(log µ − log m)"
    complexity.__doc__ = (f"{name} (Jiang et al. eq. {measure.equation}): µ = "
                          f"{measure.formula}, reported as {form} (SPEC §12), as a PGDL "
                          "complexity(model, dataset) (SPEC §11).")
    return complexity


for _name in MEASURES:
    globals()[_name] = _complexity(_name)
__all__ += list(MEASURES)
