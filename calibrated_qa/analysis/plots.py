"""Figures: reliability diagrams, metric curves over training, P(YES) histograms.

matplotlib is imported lazily and without pyplot: metrics-only runs never pay for it. Drawing is
nearly all of the plots' cost and a tick or a text costs as much as a whole curve, so in a grid
only the outer panels carry ticks, bars and gridlines are one collection per panel, and ``draw``
splits the figures over two processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from calibrated_qa.analysis.metrics import N_BINS, expected_calibration_error, reliability_bins

PathLike = str | os.PathLike[str]
TICKS = [0, 0.25, 0.5, 0.75, 1]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
GRID = {"color": "#b0b0b0", "alpha": 0.2, "linewidth": 0.8, "zorder": 1.5}  # as matplotlib's


@dataclass
class Panel:
    """One reliability diagram or histogram: probabilities, 0/1 outcomes, and what to say."""

    title: str
    p: NDArray[np.float64]  # parseable rollouts only
    y: NDArray[np.bool_]
    n_total: int  # all rollouts (or groups) of the panel, parseable or not
    empty: str = "no parseable rollouts"  # what "no data" means here


def draw(figures: Sequence[Callable[[], None]]) -> None:
    """Draw independent figures, every other one in a forked child: matplotlib draws on one core,
    so two halve the time (docs/analysis.md, "Two cores or one"). The child only draws (no lock
    of another thread's, e.g. tqdm's monitor, is touched) and dies with its parent, however the
    parent ends; without ``os.fork``, or if it fails, all are drawn here."""
    import matplotlib.figure  # noqa: F401  (once, before the fork)

    parent, child = os.getpid(), None
    if hasattr(os, "fork") and len(figures) > 1:
        with contextlib.suppress(OSError):
            child = os.fork()
    if child == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
        if sys.platform == "linux":  # the kernel kills the child when the parent dies
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        code = 1
        try:
            if os.getppid() == parent:  # else the parent died before prctl took effect
                for figure in figures[1::2]:
                    figure()
                code = 0
        except BaseException:
            traceback.print_exc()
        os._exit(code)
    try:
        for figure in figures if child is None else figures[::2]:
            figure()
    except BaseException:
        if child:
            os.kill(child, signal.SIGKILL)  # its figures are not wanted either
        raise
    finally:
        status = os.waitpid(child, 0)[1] if child else 0
    if status:
        raise RuntimeError("a figure failed in the drawing child process (traceback above)")


def _grid(slots: Sequence[Any], cols: int, size: tuple[float, float], title: str, **space: Any):
    """A figure titled above its panels (wrapped to its width, never clipped) with an axes per
    filled slot: (axes, item, lowest of its column, starts a row); only those carry ticks."""
    from matplotlib.figure import Figure

    rows = math.ceil(len(slots) / cols)
    width, height = max(size[0] * cols, 6.0), size[1] * rows  # room for the title on one panel
    fig = Figure(figsize=(width, height))
    lines = textwrap.wrap(title, int(width * 11))
    fig.suptitle("\n".join(lines), fontsize=12, y=1 - 0.1 / height, va="top")
    top = 1 - (0.75 + 0.22 * len(lines)) / height  # room for two-line panel titles
    margins = dict(left=0.7 / width, right=1 - 0.3 / width, bottom=0.8 / height, top=top)
    fig.subplots_adjust(**{**margins, "hspace": 0.55, "wspace": 0.28, **space})
    axes = []
    for i, item in enumerate(slots):
        if item is not None:
            lowest = i + cols >= len(slots) or slots[i + cols] is None
            axes.append((fig.add_subplot(rows, cols, i + 1), item, lowest, i % cols == 0))
    return fig, axes


def _save(fig: Any, path: PathLike) -> None:
    from matplotlib import rc_context

    with rc_context({"text.hinting": "no_hinting"}):  # hinting is a third of the text's cost
        fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})  # zlib level 6 costs 3x


def _no_data(ax: Any, why: str, width: int = 30) -> None:
    """The reason a panel is empty, each line wrapped to ``width`` (30 fits the narrowest)."""
    ax.set(xticks=[], yticks=[])
    text = "\n".join(textwrap.fill(line, width) for line in f"no data: {why}".splitlines())
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def reliability_grid(
    rows: Sequence[Sequence[Panel]], path: PathLike, title: str, labels: Sequence[tuple[str, str]]
) -> None:
    """Reliability diagrams: a row of panels per entry of ``rows`` (one row wraps after four),
    with that row's axis labels; rows of different meaning keep their x ticks and labels."""
    from matplotlib.collections import PolyCollection

    cols = max(1, min(4, len(rows[0])) if len(rows) == 1 else max(map(len, rows)))
    slots: list[Any] = []
    for row, row_labels in zip(rows, labels, strict=True):
        slots += [(p, row_labels) for p in row] + [None] * (-len(row) % cols)
    fig, axes = _grid(slots, cols, (3.6, 3.3), title)
    for ax, (panel, (xlabel, ylabel)), lowest, first in axes:
        n, ece, x_ticks = panel.p.size, "", lowest or len(rows) > 1
        if n:
            ax.vlines(TICKS, 0, 1.05, **GRID)
            ax.hlines(TICKS, 0, 1, **GRID)
            count, mean_p, freq = reliability_bins(panel.p, panel.y)
            filled = count > 0
            x0, top = np.flatnonzero(filled) / N_BINS + 0.005, freq[filled]
            x1, zero = x0 + 0.09, 0 * top  # each bar's four corners:
            bars = np.stack([x0, zero, x0, top, x1, top, x1, zero], axis=1).reshape(-1, 4, 2)
            ax.add_collection(PolyCollection(bars, color="#2563eb", alpha=0.35, linewidth=0))
            ax.plot([0, 1], [0, 1], "k--", linewidth=1, alpha=0.5)
            ax.plot(mean_p[filled], top, "o-", color="#1e40af", markersize=4)
            for x, c in zip(x0 + 0.045, count[filled], strict=True):  # counts at the foot
                ax.text(x, 0.02, f"{int(c)}", ha="center", va="bottom", rotation=90, fontsize=6.5)
            ece = f", ECE={expected_calibration_error(panel.p, panel.y):.3f}"
        else:
            _no_data(ax, panel.empty)
        ax.set_title(f"{panel.title}\nn={n} parseable of {panel.n_total}{ece}", fontsize=9, y=1.01)
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xticks=TICKS if x_ticks else [])
        ax.set(yticks=TICKS if first else [])
        ax.set_xlabel(xlabel if x_ticks else "", fontsize=8)
        ax.set_ylabel(ylabel if first else "", fontsize=8)
    _save(fig, path)


def message_figure(path: PathLike, title: str, message: str) -> None:
    """A figure that says why there is nothing to plot (so no expected file is ever missing)."""
    fig, [(ax, *_)] = _grid([message], 1, (7.5, 2.5), title)
    ax.axis("off")
    _no_data(ax, message, width=100)
    _save(fig, path)


def pyes_histograms(panels: Sequence[Panel], path: PathLike) -> None:
    """Histograms of stated P(YES) per panel, split by the true answer (1% bins). The colour key is
    in the figure's title and the counts in each panel's: a legend per panel costs as much as the
    panel, and covers data."""
    from matplotlib.ticker import MaxNLocator

    title = "Stated P(YES) by true answer (green: true yes, red: true no)"
    fig, axes = _grid(panels, max(1, min(4, len(panels))), (3.6, 3.1), title, hspace=0.5)
    edges = np.linspace(-0.005, 1.005, 102)
    for ax, panel, lowest, first in axes:
        yes, no = panel.p[panel.y], panel.p[~panel.y]
        head = f"{panel.title} ({panel.n_total - panel.p.size} unparseable of {panel.n_total})"
        split = f"\ntrue yes n={yes.size}, true no n={no.size}" if panel.p.size else ""
        ax.set_title(head + split, fontsize=9, y=1.01)
        ax.set(xlim=(0, 1), xticks=TICKS if lowest else [])
        ax.set_xlabel("stated P(YES)" if lowest else "", fontsize=8)
        if not panel.p.size:
            _no_data(ax, panel.empty)
            continue
        ax.set_ylabel("rollouts" if first else "", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
        for values, color in ((yes, "#16a34a"), (no, "#dc2626")):
            counts = np.append(np.histogram(values, edges)[0], 0)  # a fill: stairs costs 3x
            ax.fill_between(edges, counts, step="post", color=color, alpha=0.55, linewidth=0)
        ax.set_ylim(bottom=0)
    _save(fig, path)


# panel: title, (column, label, color) per line; a marker and x offset per line show equal values
_CURVES = {
    "reward": ("Reward = calibration term + length penalty", [
        ("reward", "reward (analysis)", "#111"),
        ("calibration_reward", "calibration term", "#2563eb"),
        ("length_penalty", "length penalty", "#dc2626")]),
    "brier": ("Brier score (parseable rollouts; lower is better)", [
        ("brier", "rollouts", "#2563eb"), ("ensemble_brier", "self-ensemble", "#7c3aed")]),
    "ece": ("ECE, 10 integer-percent bins (lower is better)", [
        ("ece_pyes", "ECE on P(YES)", "#2563eb"), ("ece_conf", "ECE on confidence", "#ea580c")]),
    "rates": ("Accuracy, parse rate, penalized fraction", [
        ("accuracy", "accuracy (unparseable = wrong)", "#16a34a"),
        ("parse_rate", "parse rate", "#111"),
        ("penalized_frac", "length-penalized fraction", "#dc2626")]),
    "length": ("Mean completion length L (penalty-free band dotted)", [
        ("mean_length", "mean length L", "#111")]),
    "auroc": ("AUROC: confidence separates correct from wrong", [("auroc", "AUROC", "#0891b2")]),
}  # fmt: skip


def metric_curves(
    rows: Sequence[dict[str, float]],
    path: PathLike,
    *,
    orchestrator: dict[int, float] | None = None,
    max_tokens: int | None = None,
    x_label: str = "training step",
) -> None:
    """Reward (split into its terms), Brier, both ECEs, accuracy, parse rate, length per step."""
    from matplotlib.ticker import MaxNLocator

    steps = np.array([r["step"] for r in rows], dtype=float)
    n = int(np.median([r["n"] for r in rows])) if rows else 0
    title = f"Metrics per step ({len(rows)} step{'s' * (len(rows) != 1)}, ~{n} rollouts each)"
    fig, axes = _grid(list(_CURVES.items()), 3, (5.2, 3.9), title, bottom=0.17, hspace=0.7)
    span = max(1.0, float(np.ptp(steps)) if steps.size else 1.0)
    bounds = {"length": (max_tokens / 5, 4 * max_tokens / 5) if max_tokens else (), "auroc": (0.5,)}
    for ax, (panel, (panel_title, curves)), _, _ in axes:
        ax.set_title(panel_title, fontsize=10, y=1.01)
        ax.set_xlabel(x_label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.25)
        if steps.size == 1:
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
        if panel == "reward" and orchestrator:
            keys = sorted(orchestrator)
            ax.plot(keys, [orchestrator[k] for k in keys], color="#999", label="orchestrator log")
        drawn = 0
        for k, (column, label, color) in enumerate(curves):
            values = np.array([r[column] for r in rows], dtype=float)
            if np.all(np.isnan(values)):
                continue
            x = steps + (k - (len(curves) - 1) / 2) * 0.012 * span
            style = dict(color=color, marker="os^"[k], markersize=6 - k, linewidth=1.2, label=label)
            ax.plot(x, values, markerfacecolor="none" if k else color, **style)
            drawn += 1
        if not drawn:
            why = "length not recorded in this input" if panel == "length" else ""
            _no_data(ax, why or "no parseable rollouts")
            continue
        for bound in bounds.get(panel, ()):  # penalty-free band, chance
            ax.axhline(bound, color="#dc2626" if panel == "length" else "k", ls=":", lw=1)
        if panel == "rates":
            ax.set_ylim(-0.02, 1.02)
        if len(curves) > 1 or panel == "reward":
            ax.legend(
                fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False
            )
    _save(fig, path)
