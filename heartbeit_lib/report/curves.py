"""Learning curves of a fine-tuning run (03_finetune's ``learning_curves.png``), drawn on a
:class:`matplotlib.figure.Figure` directly (no pyplot state)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from heartbeit_lib.classify.data import EVAL_SPLITS


def plot_learning_curves(log: Sequence[Mapping[str, Any]], best_epoch: int | None = None,
                         path: str | os.PathLike | None = None, title: str = ""):
    """Train loss and per-split AUROC/AUPRC against epoch; the chosen epoch dashed. Saved to ``path``.

    Returns a ``matplotlib.figure.Figure`` (not registered with pyplot: nothing to close; a notebook
    displays it as the cell's value).
    """
    df = pd.DataFrame(list(log))
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.86 if title else 0.95, wspace=0.25)
    axes[0].plot(df["epoch"], df["train_loss"], marker="o", ms=3, color="k")
    axes[0].set(xlabel="epoch", ylabel="train loss (CE)")
    for ax, metric in zip(axes[1:], ("auroc", "auprc")):
        for s, c in zip(EVAL_SPLITS, ("C0", "C1", "C2")):
            col = f"{s}_{metric}"
            if col in df and df[col].notna().any():
                ax.plot(df["epoch"], df[col].astype(float), marker="o", ms=3, color=c, label=s)
        ax.set(xlabel="epoch", ylabel=metric.upper())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", color="grey", lw=1)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig
