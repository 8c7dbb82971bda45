"""Figures in the README come from the project's own outputs, not from hand edits; the
environment reference (docs/environment.md) matches the code."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text()
ENVIRONMENT = (REPO / "docs" / "environment.md").read_text()


def test_results_section_is_the_generated_one() -> None:
    generated = (REPO / "results" / "reference" / "RESULTS.md").read_text().strip()
    assert generated.startswith("## Results")
    assert generated.replace("## Results", "#### Step 0 vs step 49", 1) in README


def test_benchmark_figures_are_the_recorded_ones() -> None:
    recorded = (REPO / "benchmarks" / "RESULTS.md").read_text()
    section = README.split("### Performance", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d", line)]
    assert len(rows) == 4
    for row in rows:
        for figure in re.findall(r"\d+\.\d+x?", row):
            assert figure in recorded, f"README figure {figure} is not in benchmarks/RESULTS.md"


def test_environment_arguments_table_matches_the_signature() -> None:
    import inspect

    from calibrated_qa.environment import load_environment

    section = ENVIRONMENT.split("## Arguments", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)`(?: / `(\w+)`)? \|", section, re.M))
    names = {name for pair in documented for name in pair if name}
    assert names == set(inspect.signature(load_environment).parameters)


def test_record_schema_table_matches_the_code() -> None:
    from calibrated_qa.records import RECORD_FIELDS

    section = ENVIRONMENT.split("## The generation log", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", section, re.M):
        documented.update(re.findall(r"`(\w+)`", cell))
    assert documented == set(RECORD_FIELDS)


def test_dry_run_line_counts_are_the_files() -> None:
    """docs/dry_run.md's table and total were edited by hand once and disagreed (686 vs 700)."""
    doc = (REPO / "docs" / "dry_run.md").read_text()
    section = doc.split("## The code", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| `([\w/.]+)` \| (\d+) \|", section, re.M))
    files = [REPO / "dry_run.py", *sorted(REPO.glob("dryrun/*.py"))]
    counts = {f.relative_to(REPO).as_posix(): len(f.read_text().splitlines()) for f in files}
    assert {name: int(n) for name, n in table.items()} == counts
    assert f"{sum(counts.values())} lines in all" in section
