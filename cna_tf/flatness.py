"""Flatness measures of SPEC §8 (Jiang et al., ICLR 2020, "Fantastic Generalization Measures").

How far the trained weights w* can move before the training accuracy drops by 0.1:

* ``pacbayes_flatness`` = 1/σ′²: Gaussian noise of standard deviation σ on every trainable weight
  (Jiang et al. eq. 49, "PAC-Bayes flatness"); σ′ = ``pacbayes_sigma``.
* ``pacbayes_mag_flatness`` = 1/σ′²: magnitude-aware noise, standard deviation
  sqrt(σ²·w_i² + ε²) per weight (eq. 53); σ′ = ``pacbayes_mag_sigma``.
* ``sharpness_mag_flatness`` = 1/α′²: the worst accuracy found by gradient ascent inside the box
  |w_i − w_i*| ≤ α·|w_i*| + ε (eq. 52, magnitude-aware sharpness); α′ = ``sharpness_mag_alpha``.
* ``sharpness_flatness`` = 1/α′² (SPEC §12, only when named): the same search in the box
  |w_i − w_i*| ≤ α (no magnitude, no ε), started at w* + U(−α/2, α/2); α′ = ``sharpness_alpha``.
  ``measures=None`` runs the three of SPEC §8, not this one.

A flatter network tolerates a larger σ′ (α′) and so scores *lower*, like the gap it predicts.

The searches, exactly as SPEC §8 states them (the public re-implementations' constants):

* Everything runs on one seeded subset of ``samples`` training points (sorted indices drawn
  without replacement, all points when ``samples`` >= n), in inference mode (every layer is
  called with ``training=False``: BatchNormalization uses its moving statistics, Dropout is off).
  ``accuracy`` below is the accuracy on that subset, the unperturbed one computed once.
* Bisection on [0, 2]: at most 15 steps (σ) or 20 steps (α); each step tries the midpoint p and
  measures a deviation; it stops when |deviation − 0.1| < 0.01, else ``upper = p`` when the
  deviation exceeds 0.1 and ``lower = p`` otherwise. σ′ (α′) is the last p tried.
* σ: deviation = |accuracy − mean accuracy over 10 noise draws|, noise added to every trainable
  weight (biases included). Standard deviation σ (not σ², a public re-implementation's bug) or
  sqrt(σ²·w_i² + ε²), ε = 1e-3.
* α: up to 3 restarts, each from w* + U(−α/2, α/2)·|w*|, then 20 steps of gradient *ascent* on
  the training cross-entropy (plain SGD, learning rate 1e-3, batches of 64 from the subset),
  projected after every step onto the box |w_i − w_i*| ≤ α·|w_i*| + ε (ε = 1e-3, every trainable
  weight; the PGDL organizers' baseline descends, a bug). Deviation = accuracy − the lowest
  accuracy over the restarts.

Choices where SPEC §8 is silent (documented here once):

* **Seeds.** The k-th noise draw of a σ search is the standard-normal vector z_k of
  ``numpy.random.default_rng([seed, m, k])`` (m = 0 for the plain, 1 for the magnitude-aware
  search), scaled per weight by the standard deviation above; the r-th restart of the sharpness
  search takes its uniform start and its batch order from ``default_rng([seed, 2, r])`` (``[seed,
  3, r]`` for the plain box of ``sharpness_flatness``). The same
  draws are reused at every σ (α) of a search (common random numbers), so the deviation grows
  smoothly with σ (α) and the bisection does not chase sampling noise. Seeded runs repeat
  exactly (same backend, same machine).
* **Restarts stop early** once the deviation exceeds 0.1 + 0.01: a further restart can only
  lower the lowest accuracy, which would not change the bisection's decision (upper = α) nor
  the stop rule, so the result equals three restarts' at a third of the cost.
* **Batches** of the ascent walk through a seeded permutation of the subset (a fresh one when it
  runs out); the cross-entropy is the batch mean, ``from_logits`` decided from the model's
  outputs (rows that are non-negative and sum to 1 are probabilities,
  `cna_tf.measures.probabilities`).
* **Gradients, backend-agnostic.** The ascent is Keras' own ``train_on_batch`` on a thin wrapper
  model that calls the user's model with ``training=False`` and shares its variables, compiled
  with plain SGD and the *negated* cross-entropy: descending −CE is ascending CE. It runs
  unchanged on TensorFlow, JAX and PyTorch; no TensorFlow-only code is needed. (TensorFlow: not
  XLA-compiled, to spare the compile time of a function that runs a few hundred steps.)
* **Weights.** Every variable of the model (trainable or not) is saved before the searches and
  assigned back afterwards, also when a search raises: the model leaves bit-for-bit as it came.

Costs (forward passes): the unperturbed accuracy is one pass over the subset (n examples); each
σ step is 10 passes (10·n), so a σ search is at most 150·n; each α step runs at most 3 restarts
of 20 gradient steps on 64 examples (forward and backward) plus one pass over the subset, so an
α search is at most 60·n forward plus 76,800 forward-and-backward examples. `search` returns the
counts and the time of each search; docs/performance.md has measured figures.

Examples:
    >>> x, y = ds.preprocess(ds.x_train), ds.y_train
    >>> cna_tf.flatness.compute(model, x, y, samples=5000, seed=0)
    {'pacbayes_flatness': 41.2, 'pacbayes_sigma': 0.156, ...}
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from cna_tf.measures import class_indices, probabilities

__all__ = ["compute", "search", "SearchResult", "MEASURES", "PARAMETERS", "TARGET_DEVIATION",
           "SEARCHES", "TOLERANCE", "UPPER", "SIGMA_STEPS", "ALPHA_STEPS", "NOISE_DRAWS", "EPSILON",
           "RESTARTS", "ASCENT_STEPS", "ASCENT_LEARNING_RATE", "ASCENT_BATCH"]

# SPEC §8's constants.
TARGET_DEVIATION = 0.1      # accuracy drop searched for
TOLERANCE = 0.01            # stop when |deviation - 0.1| < 0.01
UPPER = 2.0                 # bisection on [0, 2]
SIGMA_STEPS = 15            # at most 15 bisection steps for σ
ALPHA_STEPS = 20            # at most 20 for α
NOISE_DRAWS = 10            # seeded noise draws per σ
EPSILON = 1e-3              # ε of the magnitude-aware noise and of the sharpness box
RESTARTS = 3                # at most 3 restarts per α
ASCENT_STEPS = 20           # gradient-ascent steps per restart
ASCENT_LEARNING_RATE = 1e-3
ASCENT_BATCH = 64

# measure -> the σ′ / α′ key it is computed from
PARAMETERS: Dict[str, str] = {
    "pacbayes_flatness": "pacbayes_sigma",
    "pacbayes_mag_flatness": "pacbayes_mag_sigma",
    "sharpness_mag_flatness": "sharpness_mag_alpha",
    "sharpness_flatness": "sharpness_alpha",
}
#: SPEC §8's three measures, what ``measures=None`` runs
MEASURES: Tuple[str, ...] = ("pacbayes_flatness", "pacbayes_mag_flatness",
                             "sharpness_mag_flatness")
#: every search that can be named (SPEC §12 adds the plain sharpness box)
SEARCHES: Tuple[str, ...] = tuple(PARAMETERS)

_EVAL_BATCH = 500           # examples per forward call when measuring accuracy


@dataclass
class SearchResult:
    """One bisection of SPEC §8, step by step.

    Attributes:
        measure: ``"pacbayes_flatness"``, ``"pacbayes_mag_flatness"``,
            ``"sharpness_mag_flatness"`` or ``"sharpness_flatness"``.
        value: σ′ (α′ for sharpness), the last midpoint tried.
        flatness: 1/value² (``inf`` for value 0, which bisection on [0, 2] never returns).
        accuracy: the unperturbed accuracy on the subset.
        steps: ``(p, deviation)`` of every bisection step, in order.
        converged: whether the last step met |deviation − 0.1| < 0.01 (else the step budget
            was used up).
        samples: size of the subset.
        forward_examples: examples forward-propagated to measure accuracy in this search
            (the shared unperturbed pass is counted by the first search only).
        gradient_examples: examples of the gradient-ascent steps (each a forward and a
            backward pass; 0 for the σ searches).
        seconds: wall time of this search.
    """

    measure: str
    value: float
    accuracy: float
    steps: List[Tuple[float, float]] = field(default_factory=list)
    converged: bool = False
    samples: int = 0
    forward_examples: int = 0
    gradient_examples: int = 0
    seconds: float = 0.0

    @property
    def flatness(self) -> float:
        return math.inf if self.value == 0 else 1.0 / self.value ** 2

    @property
    def parameter(self) -> str:
        """The key of σ′ / α′ in `compute`'s dict."""
        return PARAMETERS[self.measure]


class _InferenceModel(keras.Model):
    """Calls the wrapped model in inference mode; shares (does not copy) its variables."""

    def __init__(self, model: keras.Model):
        super().__init__(name=f"{model.name}_inference")
        self.inner = model

    def call(self, inputs):
        return self.inner(inputs, training=False)


def _negated_crossentropy(from_logits: bool) -> Callable:
    def loss(y_true, y_pred):
        return -keras.losses.sparse_categorical_crossentropy(y_true, y_pred,
                                                             from_logits=from_logits)
    return loss


class _BoxAscent(keras.optimizers.SGD):
    """Plain SGD whose every step ends with the projection onto a box, in the compiled step.

    The box ``low <= w <= high`` is one pair of optimizer variables per trainable weight, set
    once per α (`set_box`), so the train function is traced once and each ascent step is one
    call: no per-weight eager clip after it (~60 dispatches a step on a ResNet-18).
    """

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._lows = [self.add_variable_from_reference(v, "box_low") for v in variables]
        self._highs = [self.add_variable_from_reference(v, "box_high") for v in variables]

    def set_box(self, variables: Sequence, lows: Sequence[np.ndarray],
                highs: Sequence[np.ndarray]) -> None:
        for v, lo, hi in zip(variables, lows, highs):
            i = self._get_variable_index(v)
            self._lows[i].assign(lo)
            self._highs[i].assign(hi)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)
        i = self._get_variable_index(variable)
        self.assign(variable, ops.minimum(ops.maximum(variable, self._lows[i]), self._highs[i]))


def _value(v) -> np.ndarray:
    return np.array(v.numpy(), copy=True)


class _Searcher:
    """The subset, the saved weights and the counters shared by the three searches."""

    def __init__(self, model: keras.Model, x, y, samples: int, seed: int):
        self.model, self.seed = model, int(seed)
        n = len(x)
        if n == 0:
            raise ValueError("flatness needs training points; got an empty x")
        if samples >= n:
            idx = np.arange(n)
        else:
            idx = np.sort(np.random.default_rng(self.seed).choice(n, size=samples, replace=False))
        self.x = np.asarray(x)[idx]
        self.y = np.asarray(y)[idx]
        self.n = len(idx)
        self.wrapper = _InferenceModel(model)
        self.trainable = list(model.trainable_variables)
        if not self.trainable:
            raise ValueError(f"model '{model.name}' has no trainable weights to perturb; "
                             "flatness measures need them (set layer.trainable = True)")
        self.w_star = [_value(v) for v in self.trainable]
        self.forward_examples = 0
        self.gradient_examples = 0
        outputs = self._outputs(self.x)
        self.accuracy = float(np.mean(outputs.argmax(axis=1) == self.y))
        _, self.from_logits = probabilities(outputs)
        self._compiled = False

    # -- forward passes -------------------------------------------------------------------
    def _outputs(self, x) -> np.ndarray:
        out = [np.asarray(ops.convert_to_numpy(self.wrapper.predict_on_batch(x[i:i + _EVAL_BATCH])))
               for i in range(0, len(x), _EVAL_BATCH)]
        self.forward_examples += len(x)
        return np.concatenate(out).reshape(len(x), -1)

    def accuracy_now(self) -> float:
        """Accuracy of the model's current weights on the subset (one forward pass)."""
        return float(np.mean(self._outputs(self.x).argmax(axis=1) == self.y))

    def assign(self, values: Sequence[np.ndarray]) -> None:
        for v, w in zip(self.trainable, values):
            v.assign(w)

    # -- σ: Gaussian noise ------------------------------------------------------------------
    def sigma_deviation(self, sigma: float, magnitude: bool) -> float:
        stream = 1 if magnitude else 0
        if magnitude:  # sqrt(σ²·w_i² + ε²) per weight
            stds = [np.sqrt(sigma ** 2 * np.square(w.astype(np.float64)) + EPSILON ** 2)
                    for w in self.w_star]
        else:
            stds = [sigma] * len(self.w_star)
        accs = []
        for k in range(NOISE_DRAWS):
            rng = np.random.default_rng([self.seed, stream, k])
            perturbed = [(w + std * rng.standard_normal(w.shape)).astype(w.dtype)
                         for w, std in zip(self.w_star, stds)]
            self.assign(perturbed)
            accs.append(self.accuracy_now())
        self.assign(self.w_star)
        return abs(self.accuracy - float(np.mean(accs)))

    # -- α: gradient ascent in a box --------------------------------------------------------
    def _compile(self) -> None:
        if self._compiled:
            return
        jit = False if keras.backend.backend() == "tensorflow" else "auto"
        self.optimizer = _BoxAscent(learning_rate=ASCENT_LEARNING_RATE, name="box_ascent")
        self.wrapper.compile(optimizer=self.optimizer,
                             loss=_negated_crossentropy(self.from_logits), jit_compile=jit)
        self.optimizer.build(self.wrapper.trainable_variables)
        self._compiled = True

    def _batches(self, rng: np.random.Generator) -> List[np.ndarray]:
        need = ASCENT_STEPS * ASCENT_BATCH
        order = rng.permutation(self.n)
        while len(order) < need:
            order = np.concatenate([order, rng.permutation(self.n)])
        return [order[i * ASCENT_BATCH:(i + 1) * ASCENT_BATCH] for i in range(ASCENT_STEPS)]

    def alpha_deviation(self, alpha: float, magnitude: bool = True) -> float:
        self._compile()
        if magnitude:  # |w_i - w_i*| <= α·|w_i*| + ε
            radius = [alpha * np.abs(w) + EPSILON for w in self.w_star]
        else:          # |w_i - w_i*| <= α
            radius = [np.full(w.shape, alpha) for w in self.w_star]
        self.optimizer.set_box(self.trainable,
                               [(w - r).astype(w.dtype) for w, r in zip(self.w_star, radius)],
                               [(w + r).astype(w.dtype) for w, r in zip(self.w_star, radius)])
        lowest = math.inf
        deviation = -math.inf
        for r in range(RESTARTS):
            rng = np.random.default_rng([self.seed, 2 if magnitude else 3, r])
            start = [(w + alpha * rng.uniform(-0.5, 0.5, size=w.shape)
                      * (np.abs(w) if magnitude else 1.0)).astype(w.dtype) for w in self.w_star]
            self.assign(start)
            for batch in self._batches(rng):
                # one SGD step on −CE, projected onto the box inside the step (_BoxAscent)
                self.wrapper.train_on_batch(self.x[batch], self.y[batch])
                self.gradient_examples += len(batch)
            lowest = min(lowest, self.accuracy_now())
            deviation = self.accuracy - lowest
            if deviation > TARGET_DEVIATION + TOLERANCE:
                break  # more restarts cannot change the bisection's decision
        self.assign(self.w_star)
        return deviation


def _bisect(deviation: Callable[[float], float], max_steps: int
            ) -> Tuple[float, List[Tuple[float, float]], bool]:
    """SPEC §8's bisection on [0, 2]; returns (last midpoint, steps, converged)."""
    lower, upper = 0.0, UPPER
    steps: List[Tuple[float, float]] = []
    p = (lower + upper) / 2
    for _ in range(max_steps):
        p = (lower + upper) / 2
        d = float(deviation(p))
        steps.append((p, d))
        if abs(d - TARGET_DEVIATION) < TOLERANCE:
            return p, steps, True
        if d > TARGET_DEVIATION:
            upper = p
        else:
            lower = p
    return p, steps, False


def _check(model, x, y, samples, measures) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("flatness needs a built keras.Model (call it on data or give it an "
                         "Input) with trained weights")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples must be a positive integer (training points of the subset), "
                         f"got {samples!r}")
    if measures is None:
        names = list(MEASURES)
    else:
        names = [measures] if isinstance(measures, str) else list(measures)
        bad = [m for m in names if m not in PARAMETERS]
        if bad or not names:
            raise ValueError(f"unknown flatness measure(s) {bad or names}; choose from "
                             f"{', '.join(SEARCHES)} (or measures=None for the first three)")
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"x must be an array of model inputs (n, ...): {e}") from None
    if x.ndim < 1:
        raise ValueError(f"x must be an array of model inputs (n, ...), got shape {x.shape}")
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    y = class_indices(y, n=len(x), num_classes=units)
    return x, y, list(dict.fromkeys(names))


def search(model: keras.Model, x, y, samples: int = 5000, seed: int = 0,
           measures: Optional[Iterable[str]] = None) -> Dict[str, SearchResult]:
    """Runs SPEC §8's searches and returns each one step by step (see the module docstring).

    Args:
        model: a built classifier (any Keras model; Functional, Sequential or subclassed),
            trained. Its weights are restored exactly before this returns or raises.
        x: training inputs as the model takes them (preprocessed), shape (n, ...).
        y: their labels, integer class indices (n,) or one-hot rows (n, classes)
            (`cna_tf.measures.class_indices`).
        samples: size of the seeded training subset every search runs on (SPEC §8: 5,000).
        seed: seed of the subset, the noise draws, the restarts and the batch order.
        measures: names from `SEARCHES` (default: the three of `MEASURES`).

    Returns:
        ``{measure: SearchResult}`` in the order of ``measures``.

    Raises:
        ValueError: an unbuilt model, bad labels, an unknown measure or a bad ``samples``.
    """
    x, y, names = _check(model, x, y, samples, measures)
    saved = [_value(v) for v in model.variables]
    try:
        t0 = time.perf_counter()
        s = _Searcher(model, x, y, int(samples), seed)
        shared_seconds = time.perf_counter() - t0
        out: Dict[str, SearchResult] = {}
        for i, name in enumerate(names):
            f0, g0, t0 = s.forward_examples, s.gradient_examples, time.perf_counter()
            if i == 0:  # the unperturbed pass belongs to the first search's cost
                f0, t0 = 0, t0 - shared_seconds
            if name in ("sharpness_mag_flatness", "sharpness_flatness"):
                magnitude = name == "sharpness_mag_flatness"
                value, steps, ok = _bisect(lambda p: s.alpha_deviation(p, magnitude), ALPHA_STEPS)
            else:
                magnitude = name == "pacbayes_mag_flatness"
                value, steps, ok = _bisect(lambda p: s.sigma_deviation(p, magnitude),
                                           SIGMA_STEPS)
            out[name] = SearchResult(
                measure=name, value=value, accuracy=s.accuracy, steps=steps, converged=ok,
                samples=s.n, forward_examples=s.forward_examples - f0,
                gradient_examples=s.gradient_examples - g0, seconds=time.perf_counter() - t0)
        return out
    finally:
        for v, w in zip(model.variables, saved):
            v.assign(w)


def compute(model: keras.Model, x, y, samples: int = 5000, seed: int = 0,
            measures: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """SPEC §8's flatness measures of a trained classifier, and the σ′ / α′ found.

    Costly (up to 150 forward passes over the subset per σ search, see the module docstring):
    the grid computes them at the final snapshot only.

    Args:
        model: a built, trained classifier; its weights are restored exactly afterwards.
        x: training inputs as the model takes them (preprocessed), shape (n, ...).
        y: their labels, integer class indices (n,) or one-hot rows (n, classes).
        samples: size of the seeded training subset (SPEC §8: 5,000).
        seed: seed of the subset and of every random draw; seeded runs repeat exactly.
        measures: names from `SEARCHES` (default: the three of `MEASURES`).

    Returns:
        dict of floats: for each measure, the measure (``pacbayes_flatness``,
        ``pacbayes_mag_flatness``, ``sharpness_mag_flatness``: 1/σ′², 1/σ′², 1/α′²) and its
        parameter (``pacbayes_sigma``, ``pacbayes_mag_sigma``, ``sharpness_mag_alpha``), and
        ``sharpness_flatness`` / ``sharpness_alpha`` when named.

    Raises:
        ValueError: an unbuilt model, bad labels, an unknown measure or a bad ``samples``.
    """
    out: Dict[str, float] = {}
    for name, r in search(model, x, y, samples, seed, measures).items():
        out[name] = float(r.flatness)
        out[r.parameter] = float(r.value)
    return out
