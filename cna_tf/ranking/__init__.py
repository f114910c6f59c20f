"""How well a measure ranks networks by their generalization gap (SPEC §3, §8, §9, §10).

Works on a table of *network instances* (one run at one snapshot epoch): a list of dicts that
hold hyperparameters (the axes) and measured values, or per-network arrays. Knows nothing of
MLflow; the `compare` pipeline reads the instances from runs. One public surface, in files:

* ``correlations``: :func:`pearson`, :func:`kendall`, :func:`granulated_kendall`,
  :func:`correlate` (SPEC §3);
* ``cmi``: PGDL's :func:`conditional_mutual_information` and :func:`grid_codes` (SPEC §8);
* ``seed_bootstrap``: the seed :func:`bootstrap` of every score, :func:`replicate_indices`
  (SPEC §9);
* ``sign_error``: Dziugaite et al.'s robust :func:`sign_errors` per intervention (SPEC §10).

Examples:
    >>> rows = correlate(instances, metrics=["cna_margin", "l2"], targets=["gen_gap"],
    ...                  axes=["arch", "width", "seed", "epoch"], group_by=["arch"])
    >>> rows[0]["scope"], rows[0]["pearson"], rows[0]["granulated_kendall"]
    >>> conditional_mutual_information(measure, gap, {"depth": depths, "lr": lrs, "seed": seeds})
    >>> r = bootstrap({"cna_margin": cm, "l2": l2}, gap,
    ...               {"depth": depths, "width": widths, "lr": lrs, "seed": seeds})
    >>> r["cna_margin"]["kendall"], r.paired["cmi"][("cna_margin", "l2")], r.notes
    >>> s = sign_errors({"cna_margin": cm, "l2": l2}, gap,
    ...                 {"depth": depths, "width": widths, "lr": lrs, "seed": seeds})
    >>> s["cna_margin"]["width"]["max"], s["cna_margin"]["all"]["mean"], s.environments[0]
"""
from cna_tf.ranking.cmi import conditional_mutual_information, grid_codes
from cna_tf.ranking.correlations import (ALL_NETS, correlate, granulated_kendall, kendall,
                                         pearson)
from cna_tf.ranking.seed_bootstrap import (STATISTICS, BootstrapResult, bootstrap,
                                           replicate_indices)
from cna_tf.ranking.sign_error import SignErrorResult, sign_errors

__all__ = ["pearson", "kendall", "granulated_kendall", "correlate", "ALL_NETS",
           "conditional_mutual_information", "grid_codes", "bootstrap", "BootstrapResult",
           "replicate_indices", "STATISTICS", "sign_errors", "SignErrorResult"]
