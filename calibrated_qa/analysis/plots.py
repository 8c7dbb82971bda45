"""Figures: reliability diagrams, metric curves over training, P(YES) histograms.

matplotlib is imported lazily (Agg): metrics-only runs never pay for it. Few artists per panel:
drawing, not computing, is what plots cost.
"""

from __future__ import annotations

import math
import os
import textwrap
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
    empty: str = "no parseable rollouts"  # what "no data" means here


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(
    rows: int, cols: int, width: float, height: float, title: str, **share: Any
) -> tuple[Any, Any]:
    """A grid with room for a title wrapped to the figure's width (never clipped)."""
    plt = _pyplot()
    total = max(width * cols, 6.0)  # a single panel still has room for its figure title
    fig, axes = plt.subplots(rows, cols, figsize=(total, height * rows), squeeze=False, **share)
    lines = textwrap.wrap(title, int(total * 11))
    fig.suptitle("\n".join(lines), fontsize=12, y=1 - 0.1 / (height * rows), va="top")
    top = 1 - (0.75 + 0.22 * len(lines)) / (height * rows)  # room for two-line panel titles
    fig.subplots_adjust(
        left=0.7 / total, right=1 - 0.3 / total, bottom=0.8 / (height * rows), top=top
    )
    fig.subplots_adjust(hspace=0.55, wspace=0.28)
    return fig, axes


def _save(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> None:
    fig.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})  # zlib level 6 costs 3x
    _pyplot().close(fig)


TICKS = [0, 0.25, 0.5, 0.75, 1]  # few fixed ticks: tick layout is most of a figure's cost


def _no_data(ax: Any, why: str) -> None:
    ax.set(xticks=[], yticks=[])
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", transform=ax.transAxes)


def _reliability(ax: Any, panel: Panel, xlabel: str, ylabel: str) -> None:
    n = panel.p.size
    ece = ""
    if n == 0:
        _no_data(ax, panel.empty)
    else:
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, alpha=0.5)
        count, mean_p, freq = reliability_bins(panel.p, panel.y)
        centers = (np.arange(N_BINS) + 0.5) / N_BINS
        filled = count > 0
        ax.bar(centers[filled], freq[filled], width=0.09, alpha=0.35, color="#2563eb")
        ax.plot(mean_p[filled], freq[filled], "o-", color="#1e40af", markersize=4)
        for x, c in zip(centers[filled], count[filled], strict=True):  # counts at the foot
            ax.text(x, 0.02, f"{int(c)}", ha="center", va="bottom", rotation=90, fontsize=6.5)
        ece = f", ECE={expected_calibration_error(panel.p, panel.y):.3f}"
    ax.set_title(f"{panel.title}\nn={n} parseable of {panel.n_total}{ece}", fontsize=9, y=1.01)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xticks=TICKS, yticks=TICKS)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.2)


def reliability_grid(
    rows: Sequence[Sequence[Panel]],
    path: str | os.PathLike[str],
    title: str,
    labels: Sequence[tuple[str, str]],
) -> None:
    """Reliability diagrams: one row of panels per entry of ``rows``, axis labels per row."""
    if len(rows) == 1:
        cols = max(1, min(4, len(rows[0])))
        items = [(p, *labels[0]) for p in rows[0]]
        n_rows = math.ceil(len(items) / cols)
    else:
        cols, n_rows, items = max(len(r) for r in rows), len(rows), []
        for r, lab in zip(rows, labels, strict=True):
            items += [(p, *lab) for p in r] + [None] * (cols - len(r))
    fig, axes = _figure(n_rows, cols, 3.6, 3.3, title, sharex=True, sharey=True)
    for ax, item in zip(axes.flat, items + [None] * (axes.size - len(items)), strict=True):
        if item is None:
            ax.set_visible(False)
        else:
            _reliability(ax, *item)
            _outer(ax, axes, items, cols, same_row_labels=len(rows) == 1)
    _save(fig, path)


def _outer(ax: Any, axes: Any, items: Sequence[Any], cols: int, same_row_labels: bool) -> None:
    """Tick and axis labels on the outer panels only (text is most of a figure's cost); rows of
    different meaning keep their x labels."""
    i = list(axes.flat).index(ax)
    below = i + cols
    inner = below < len(items) and items[below] is not None
    if same_row_labels and inner:
        ax.set_xlabel("")
    ax.tick_params(labelbottom=not (same_row_labels and inner))
    if i % cols:
        ax.set_ylabel("")
        ax.tick_params(labelleft=False)


def message_figure(path: str | os.PathLike[str], title: str, message: str) -> None:
    """A figure that says why there is nothing to plot (so no expected file is ever missing)."""
    fig, axes = _figure(1, 1, 7.5, 2.5, title)
    axes[0, 0].axis("off")
    _no_data(axes[0, 0], message)
    _save(fig, path)


def pyes_histograms(panels: Sequence[Panel], path: str | os.PathLike[str]) -> None:
    """Histograms of stated P(YES) per panel, split by the true answer (1% bins)."""
    from matplotlib.ticker import MaxNLocator

    cols = max(1, min(4, len(panels)))
    fig, axes = _figure(
        math.ceil(len(panels) / cols), cols, 3.6, 3.1, "Stated P(YES) by true answer", sharex=True
    )
    fig.subplots_adjust(hspace=0.5)
    edges = np.linspace(-0.005, 1.005, 102)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unparseable = panel.n_total - panel.p.size
        title = f"{panel.title}\n{unparseable} unparseable of {panel.n_total}"
        ax.set_title(title, fontsize=9, y=1.01)
        ax.set_xlabel("stated P(YES)", fontsize=8)
        ax.set_ylabel("rollouts", fontsize=8)
        ax.set(xlim=(0, 1), xticks=TICKS)
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
        if panel.p.size == 0:
            _no_data(ax, panel.empty)
            continue
        for truth, color, name in ((True, "#16a34a", "true: yes"), (False, "#dc2626", "true: no")):
            values = panel.p[panel.y == truth]
            counts, _ = np.histogram(values, bins=edges)
            ax.stairs(
                counts, edges, fill=True, color=color, alpha=0.55, label=f"{name} (n={values.size})"
            )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper center")
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
        elif i + cols < len(panels):  # x ticks and label on the lowest panel of each column
            ax.set_xlabel("")
        else:
            ax.tick_params(labelbottom=True)
    _save(fig, path)


# panel: title, then (column, label, color, marker) per line; markers and a small x offset per
# line keep equal values visible
_CURVES = {
    "reward": ("Reward = calibration term + length penalty", [
        ("reward", "reward (analysis)", "#111", "o"),
        ("calibration_reward", "calibration term", "#2563eb", "s"),
        ("length_penalty", "length penalty", "#dc2626", "^"),
    ]),
    "brier": ("Brier score (parseable rollouts; lower is better)", [
        ("brier", "rollouts", "#2563eb", "o"),
        ("ensemble_brier", "self-ensemble", "#7c3aed", "s"),
    ]),
    "ece": ("ECE, 10 integer-percent bins (lower is better)", [
        ("ece_pyes", "ECE on P(YES)", "#2563eb", "o"),
        ("ece_conf", "ECE on confidence", "#ea580c", "s"),
    ]),
    "rates": ("Accuracy, parse rate, penalized fraction", [
        ("accuracy", "accuracy (unparseable = wrong)", "#16a34a", "o"),
        ("parse_rate", "parse rate", "#111", "s"),
        ("penalized_frac", "length-penalized fraction", "#dc2626", "^"),
    ]),
    "length": ("Mean completion length L (penalty-free band dotted)", [
        ("mean_length", "mean length L", "#111", "o"),
    ]),
    "auroc": ("AUROC: confidence separates correct from wrong", [
        ("auroc", "AUROC", "#0891b2", "o"),
    ]),
}  # fmt: skip


def metric_curves(
    rows: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    *,
    orchestrator: dict[int, float] | None = None,
    max_tokens: int | None = None,
    x_label: str = "training step",
) -> None:
    """Reward (split into its terms), Brier, both ECEs, accuracy, parse rate, length per step."""
    from matplotlib.ticker import MaxNLocator

    steps = np.array([r["step"] for r in rows], dtype=float)
    n_per_step = int(np.median([r["n"] for r in rows])) if rows else 0
    title = (
        f"Metrics per step ({len(rows)} step{'s' * (len(rows) != 1)}, ~{n_per_step} rollouts each)"
    )
    fig, axes = _figure(2, 3, 5.2, 3.9, title)
    fig.subplots_adjust(bottom=0.17, hspace=0.7)
    span = max(1.0, float(np.ptp(steps)) if steps.size else 1.0)
    for ax, (panel, (panel_title, curves)) in zip(axes.flat, _CURVES.items(), strict=True):
        ax.set_title(panel_title, fontsize=10, y=1.01)
        ax.set_xlabel(x_label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.25)
        if panel == "reward" and orchestrator:
            keys = sorted(orchestrator)
            ax.plot(
                keys, [orchestrator[k] for k in keys], "-", color="#999", label="orchestrator log"
            )
        drawn = 0
        for k, (column, label, color, marker) in enumerate(curves):
            values = np.array([r[column] for r in rows], dtype=float)
            if np.all(np.isnan(values)):
                continue
            offset = (k - (len(curves) - 1) / 2) * 0.012 * span
            style = dict(color=color, marker=marker, markersize=6 - k, linewidth=1.2, label=label)
            ax.plot(steps + offset, values, markerfacecolor="none" if k else color, **style)
            drawn += 1
        if not drawn:
            why = (
                "length not recorded in this input"
                if panel == "length"
                else "no parseable rollouts"
            )
            _no_data(ax, why)
            continue
        if panel == "length" and max_tokens:
            for bound in (max_tokens / 5, 4 * max_tokens / 5):
                ax.axhline(bound, color="#dc2626", linestyle=":", linewidth=1)
        if panel == "auroc":
            ax.axhline(0.5, color="k", linestyle=":", linewidth=1)
        if panel == "rates":
            ax.set_ylim(-0.02, 1.02)
        if len(curves) > 1 or panel == "reward":
            ax.legend(
                fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False
            )
    if steps.size == 1:
        for ax in axes.flat:
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
    _save(fig, path)
