"""Figures of the paper drawn from arrays (matplotlib, Agg backend); each returns a Figure."""
from __future__ import annotations

from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cna_tf.measures import curves  # noqa: E402

__all__ = ["alpha_beta_curves"]


def alpha_beta_curves(alpha_train, beta_train, alpha_test, beta_test, window: int = 25,
                      points: int = 100, title: Optional[str] = None):
    """Paper Fig. 3: train vs test (alpha, beta) curves with the CNA-A region shaded.

    Args:
        alpha_train, beta_train, alpha_test, beta_test: per-sample values of each split.
        window, points: as in `cna_tf.cna_area`.
        title: figure title (default shows CNA-A).

    Returns:
        A matplotlib Figure with one axes ("normalized alpha", "normalized beta").
    """
    from cna_tf.measures import cna_area
    fig, ax = plt.subplots(figsize=(5, 4))
    c = curves(alpha_train, beta_train, alpha_test, beta_test, window=window, points=points)
    if c is None:
        ax.text(0.5, 0.5, "curves undefined (see warnings)", ha="center", va="center")
    else:
        grid, b_tr, b_te = c
        ax.plot(grid, b_tr, label="train", color="tab:blue")
        ax.plot(grid, b_te, label="test", color="tab:orange")
        ax.fill_between(grid, b_tr, b_te, color="tab:gray", alpha=0.3, label="CNA-A")
        ax.legend()
    area = cna_area(alpha_train, beta_train, alpha_test, beta_test, window=window,
                    points=points) if c is not None else float("nan")
    ax.set_xlabel("normalized alpha (input complexity)")
    ax.set_ylabel("normalized beta (use of depth)")
    ax.set_title(title or f"(alpha, beta) curves, CNA-A = {area:.4f}")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
