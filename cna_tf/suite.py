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

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

__all__ = ["compute", "MEASURES", "Measure", "SuiteResult", "CHEAP", "SEARCH",
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


class SuiteResult(dict):
    """``{name: float}`` with ``reasons``, ``parameters`` and ``seconds`` (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reasons: Dict[str, str] = {}
        self.parameters: Dict[str, float] = {}
        self.seconds: Dict[str, float] = {}


def compute(model, x, y, *, initial_weights=None, names: Optional[Iterable[str]] = None,
            seed: int = 0, fft: bool = True, samples: int = 5000,
            train_size: Optional[int] = None) -> SuiteResult:
    """Every post-hoc measure of SPEC §12 (see the module docstring). Being filled in."""
    raise NotImplementedError("cna_tf.suite.compute is being written (issue 37)")


def capture_initial_weights(model):
    """Being filled in."""
    raise NotImplementedError("cna_tf.suite.capture_initial_weights is being written")
