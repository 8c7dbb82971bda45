"""The figures a reader trusts at a glance (issue 13): checked on the drawn matplotlib objects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from calibrated_qa.analysis import plots
from calibrated_qa.analysis.metrics import step_rows
from calibrated_qa.analysis.readers import read_rollouts
from calibrated_qa.analysis.steps import attribute_steps
from tests.conftest import alive, ctrl_c_as_in_a_terminal
from tests.fixtures.analysis.build import Rollout, run, write_project

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions save, drawn but kept open for inspection."""
    kept: list[Any] = []

    def keep(fig: Any, path: Any, dpi: int = 100) -> None:
        fig.canvas.draw()
        kept.append(fig)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def texts(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def test_one_step_run_of_unparseable_rollouts(tmp_path: Path, figures: list[Any]) -> None:
    rollouts = [Rollout(q, f"q{q}", True, None, words=30) for q in range(4) for _ in range(2)]
    r, _ = read_rollouts([write_project(tmp_path / "g.jsonl", rollouts)], progress=False)
    attribute_steps(r, 8)
    plots.metric_curves(step_rows(r), tmp_path / "m.png", max_tokens=512)
    fig = figures[-1]
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks  # no fractional steps
    empty = [ax for ax in fig.axes if any("no data: " in t.get_text() for t in ax.texts)]
    assert len(empty) == 3  # Brier, ECE, AUROC: nothing parseable
    assert all(ax.get_legend() is None for ax in empty)
    panel = plots.Panel("step 0", np.array([]), np.array([], bool), 8)
    plots.reliability_grid([[panel]], tmp_path / "r.png", "A long title " * 12, [("x", "y")])
    plots.pyes_histograms([panel], tmp_path / "h.png")
    for fig in figures[-2:]:
        words = " ".join(texts(fig))
        assert "no data: no parseable rollouts" in words and "nan" not in words
        assert all(ax.get_legend() is None for ax in fig.axes)
    title = figures[-2]._suptitle
    box = title.get_window_extent()
    width = figures[-2].bbox.width
    assert box.x0 >= 0 and box.x1 <= width  # the wrapped title is not clipped


def test_histogram_counts_start_at_zero_and_equal_values_stay_visible(
    tmp_path: Path, figures: list[Any]
) -> None:
    p = np.array([0.2, 0.2, 0.8, 0.9])
    plots.pyes_histograms([plots.Panel("step 0", p, p > 0.5, 4)], tmp_path / "h.png")
    assert figures[-1].axes[0].get_ylim()[0] == 0
    r, _ = read_rollouts([write_project(tmp_path / "g.jsonl", run(n_steps=2))], progress=False)
    attribute_steps(r, 16)
    rows = step_rows(r)
    for row in rows:
        row["parse_rate"] = row["accuracy"]  # equal values must not hide each other
    plots.metric_curves(rows, tmp_path / "m.png")
    rates = figures[-1].axes[3].get_lines()
    accuracy, parse_rate = rates[0], rates[1]
    assert accuracy.get_marker() != parse_rate.get_marker()
    assert list(accuracy.get_xdata()) != list(parse_rate.get_xdata())  # offset


def test_count_labels_do_not_overlap_and_legends_stay_off_the_data(
    tmp_path: Path, figures: list[Any]
) -> None:
    """A bin in every tenth (the densest labels) and a 50-step run (the longest curves)."""
    p = np.repeat(np.arange(10) / 10 + 0.05, 10_000)  # 5-digit counts in all ten bins
    panels = [plots.Panel(f"step {i}", p, p > 0.5, p.size) for i in range(4)]  # narrowest panels
    plots.reliability_grid([panels], tmp_path / "r.png", "t", [("x", "y")])
    for ax in figures[-1].axes:
        boxes = [t.get_window_extent() for t in ax.texts if t.get_text().isdigit()]
        assert len(boxes) == 10
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    r, _ = read_rollouts([write_project(tmp_path / "g.jsonl", run(n_steps=50))], progress=False)
    attribute_steps(r, 16)
    plots.metric_curves(step_rows(r), tmp_path / "m.png", orchestrator={0: 0.1, 49: 0.9})
    for ax in figures[-1].axes:
        legend = ax.get_legend()
        if legend is not None:
            assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_no_data_text_fits_the_narrowest_panel(tmp_path: Path, figures: list[Any]) -> None:
    why = "no question has a parseable rollout"  # the longest reason
    panels = [plots.Panel(f"step {i}", np.array([]), np.array([], bool), 4, why) for i in range(4)]
    plots.reliability_grid([panels], tmp_path / "r.png", "t", [("x", "y")])
    for ax in figures[-1].axes:
        (text,) = [t for t in ax.texts if "no data" in t.get_text()]
        box, frame = text.get_window_extent(), ax.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="without fork, draw draws in this process")
def test_draw_splits_figures_over_two_processes_and_reports_a_failed_one(tmp_path: Path) -> None:
    def figure(i: int) -> Callable[[], None]:
        return lambda: (tmp_path / f"{i}.pid").write_text(str(os.getpid()))

    plots.draw([figure(i) for i in range(4)])
    pids = [int((tmp_path / f"{i}.pid").read_text()) for i in range(4)]
    assert pids[0] == pids[2] == os.getpid() != pids[1] == pids[3]

    def fails() -> None:
        raise ValueError("cannot draw")

    with pytest.raises(RuntimeError, match="child process"):
        plots.draw([figure(4), fails])
    assert (tmp_path / "4.pid").read_text() == str(os.getpid())


@pytest.mark.skipif(
    sys.platform != "linux", reason="the drawing child dies with its parent on Linux"
)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_drawing_child_dies_with_its_parent(tmp_path: Path, signum: int) -> None:
    """However the analysis ends mid-draw, no drawing process is left writing into its output."""
    script = f"""
import os, sys, time
sys.path.insert(0, {str(REPO)!r})
from calibrated_qa.analysis import plots
def figure(name):
    def draw():
        open(os.path.join({str(tmp_path)!r}, name), "w").write(str(os.getpid()))
        time.sleep(60)
    return draw
plots.draw([figure("parent"), figure("child")])
"""
    process = subprocess.Popen([sys.executable, "-c", script], preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / name).is_file() for name in ("parent", "child")):
            assert process.poll() is None and time.monotonic() < deadline, "draw did not start"
            time.sleep(0.05)
        time.sleep(0.1)  # both pids written
        child = psutil.Process(int((tmp_path / "child").read_text()))
        assert child.pid != process.pid == int((tmp_path / "parent").read_text())
        process.send_signal(signum)
        assert process.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while alive([child]):
            assert time.monotonic() < deadline, f"drawing child {child} outlived its parent"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
