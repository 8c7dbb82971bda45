"""Figures: reliability diagrams, metric curves over training, P(YES) histograms.

matplotlib is imported here only, lazily, with the Agg backend, so metrics-only runs never pay
for it and nothing needs a display. Every panel states its n; every reliability bar its count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis.metrics import N_BINS, expected_calibration_error, reliability_bins


@dataclass
class Panel:
    """One reliability diagram or histogram: probabilities, 0/1 outcomes, and what to say."""

    title: str
    p: NDArray[np.float64]  # parseable rollouts only
    y: NDArray[np.bool_]
    n_total: int  # all rollouts (or groups) of the panel, parseable or not


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def _reliability(ax: Any, panel: Panel, xlabel: str, ylabel: str) -> None:
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, alpha=0.5, label="perfect calibration")
    n = panel.p.size
    if n == 0:
        ax.text(0.5, 0.5, "no parseable rollouts", ha="center", va="center")
    else:
        count, mean_p, freq = reliability_bins(panel.p, panel.y)
        centers = (np.arange(N_BINS) + 0.5) / N_BINS
        filled = count > 0
        ax.bar(centers[filled], freq[filled], width=0.09, alpha=0.35, color="#2563eb")
        ax.plot(mean_p[filled], freq[filled], "o-", color="#1e40af", markersize=4)
        for x, f, c in zip(centers[filled], freq[filled], count[filled], strict=True):
            ax.text(x, min(f, 1.0) + 0.02, f"{int(c)}", ha="center", fontsize=7, color="#444")
    ece = expected_calibration_error(panel.p, panel.y) if n else float("nan")
    ax.set_title(f"{panel.title}\nn={n} parseable of {panel.n_total}, ECE={ece:.3f}", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.2)


def reliability_grid(
    panels: Sequence[Panel],
    path: str | os.PathLike[str],
    title: str,
    *,
    xlabel: str = "stated P(YES) (10 integer-percent bins)",
    ylabel: str = "observed fraction of true answers",
    rows_of: Sequence[Sequence[Panel]] | None = None,
    row_labels: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Reliability diagrams, one per panel (numbers above bars: rollouts in the bin).

    ``rows_of`` draws several rows of panels (e.g. P(YES) and confidence side by side), each
    with its own axis labels from ``row_labels``.
    """
    plt = _pyplot()
    rows = [list(r) for r in rows_of] if rows_of else None
    if rows is None:
        n_rows, n_cols = _grid(len(panels))
        flat: list[tuple[Panel, str, str]] = [(p, xlabel, ylabel) for p in panels]
    else:
        n_rows, n_cols = len(rows), max(len(r) for r in rows)
        labels = row_labels or [(xlabel, ylabel)] * n_rows
        flat = []
        for r, lab in zip(rows, labels, strict=True):
            flat += [(p, *lab) for p in r] + [None] * (n_cols - len(r))  # type: ignore[list-item]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.9 * n_rows), squeeze=False)
    for ax, item in zip(axes.flat, flat + [None] * (axes.size - len(flat)), strict=True):
        if item is None:
            ax.set_visible(False)
        else:
            _reliability(ax, *item)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def message_figure(path: str | os.PathLike[str], title: str, message: str) -> None:
    """A figure that says why there is nothing to plot (so no expected file is ever missing)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyes_histograms(panels: Sequence[Panel], path: str | os.PathLike[str]) -> None:
    """Histograms of stated P(YES) per panel, split by the true answer (1% bins)."""
    plt = _pyplot()
    n_rows, n_cols = _grid(len(panels))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.3 * n_rows), squeeze=False)
    edges = np.linspace(-0.005, 1.005, 102)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for truth, color, name in ((True, "#16a34a", "true: yes"), (False, "#dc2626", "true: no")):
            values = panel.p[panel.y == truth]
            ax.hist(values, bins=edges, color=color, alpha=0.6, label=f"{name} (n={values.size})")
        unparseable = panel.n_total - panel.p.size
        ax.set_title(f"{panel.title}\n{unparseable} unparseable of {panel.n_total}", fontsize=9)
        ax.set_xlabel("stated P(YES)", fontsize=8)
        ax.set_ylabel("rollouts", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Stated P(YES) by true answer", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metric_curves(
    rows: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    *,
    orchestrator: dict[int, float] | None = None,
    max_tokens: int | None = None,
    x_label: str = "training step",
) -> None:
    """Reward (split into its terms), Brier, both ECEs, accuracy, parse rate, length per step."""
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows], dtype=float)

    def col(name: str) -> NDArray[np.float64]:
        return np.array([r[name] for r in rows], dtype=float)

    marker = "o-" if len(rows) <= 60 else "-"
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax = axes[0][0]
    if orchestrator:
        keys = sorted(orchestrator)
        ax.plot(keys, [orchestrator[k] for k in keys], "-", color="#999", label="orchestrator log")
    ax.plot(steps, col("reward"), marker, label="reward (analysis)", color="#111")
    ax.plot(steps, col("calibration_reward"), marker, label="calibration term", color="#2563eb")
    ax.plot(steps, col("length_penalty"), marker, label="length penalty", color="#dc2626")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_title("Reward = calibration term + length penalty")
    ax.set_ylabel("mean over rollouts")
    ax.legend(fontsize=8)
    axes[0][1].plot(steps, col("brier"), marker, color="#2563eb", label="rollouts")
    if not np.all(np.isnan(col("ensemble_brier"))):
        axes[0][1].plot(
            steps, col("ensemble_brier"), marker, color="#7c3aed", label="self-ensemble"
        )
    axes[0][1].set_title("Brier score (parseable rollouts; lower is better)")
    axes[0][1].legend(fontsize=8)
    axes[0][2].plot(steps, col("ece_pyes"), marker, label="ECE on P(YES)", color="#2563eb")
    axes[0][2].plot(steps, col("ece_conf"), marker, label="ECE on confidence", color="#ea580c")
    axes[0][2].set_title("ECE, 10 integer-percent bins (lower is better)")
    axes[0][2].legend(fontsize=8)
    ax = axes[1][0]
    ax.plot(steps, col("accuracy"), marker, label="accuracy (unparseable = wrong)", color="#16a34a")
    ax.plot(steps, col("parse_rate"), marker, label="parse rate", color="#111")
    ax.plot(
        steps, col("penalized_frac"), marker, label="length-penalized fraction", color="#dc2626"
    )
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy, parse rate, penalized fraction")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    lengths = col("mean_length")
    if np.all(np.isnan(lengths)):
        ax.text(0.5, 0.5, "length not recorded in this input", ha="center", transform=ax.transAxes)
    else:
        ax.plot(steps, lengths, marker, color="#111")
        if max_tokens:
            for bound in (max_tokens / 5, 4 * max_tokens / 5):
                ax.axhline(bound, color="#dc2626", linestyle=":", linewidth=1)
    ax.set_title("Mean completion length L (penalty-free band dotted)")
    axes[1][2].plot(steps, col("auroc"), marker, color="#0891b2")
    axes[1][2].axhline(0.5, color="k", linestyle=":", linewidth=1)
    axes[1][2].set_title("AUROC: confidence separates correct from wrong")
    for ax in axes.flat:
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.25)
    n_per_step = int(np.median([r["n"] for r in rows])) if rows else 0
    fig.suptitle(f"Metrics per step ({len(rows)} steps, ~{n_per_step} rollouts each)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
