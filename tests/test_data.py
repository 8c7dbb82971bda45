"""Datasets on real BoolQ rows, loaded from local files through the same code path as the hub."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from calibrated_qa.data import DatasetError, balance, build_split, load_split
from calibrated_qa.prompt import ELLIPSIS
from tests.conftest import BOOLQ_VALIDATION, read_boolq, write_jsonl

SHIPPED = str(BOOLQ_VALIDATION.parent)


def _build(folder: Path | str, split: str = "train", **kwargs):
    args = dict(
        log_split="train", seed=42, num_examples=-1, include_passage=True, max_passage_chars=1500
    )
    args.update(kwargs)
    return build_split(str(folder), split, **args)


def test_shipped_validation_split_balances_to_2474() -> None:
    raw = load_split(SHIPPED, "validation")
    assert len(raw) == 3270
    assert Counter(raw["answer"]) == {True: 2033, False: 1237}
    balanced = balance(raw, seed=42)
    assert len(balanced) == 2 * 1237
    assert Counter(balanced["answer"]) == {True: 1237, False: 1237}


def test_balance_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    raw = load_split(SHIPPED, "validation")
    a, b, c = balance(raw, 42), balance(raw, 42), balance(raw, 7)
    assert a["question"] == b["question"]
    assert a["question"] != c["question"]
    assert sorted(a["question"]) != sorted(c["question"])  # a different subset of the majority


def test_environment_rows(local_boolq: Path) -> None:
    rows = _build(local_boolq)
    raw = read_boolq(300)
    n_false = sum(not r["answer"] for r in raw)
    assert len(rows) == 2 * min(n_false, 300 - n_false)
    assert Counter(rows["answer"]) == {"true": len(rows) // 2, "false": len(rows) // 2}
    by_question = {r["question"]: r for r in raw}
    for row in rows:
        prompt = row["prompt"]
        assert [m["role"] for m in prompt] == ["user"]
        source = by_question[row["info"]["question"]]
        assert row["answer"] == ("true" if source["answer"] else "false")
        assert row["info"]["split"] == "train"
        question_line = prompt[0]["content"].rsplit("\n", 1)[-1]
        assert question_line.startswith("Question: ") and question_line.endswith("?")
        assert question_line[len("Question: ")].isupper()


def test_passage_cut_at_1500_characters_plus_ellipsis(local_boolq: Path) -> None:
    rows = _build(local_boolq)
    by_question = {r["question"]: r for r in read_boolq(300)}
    long_seen = short_seen = 0
    for row in rows:
        passage = by_question[row["info"]["question"]]["passage"]
        content = row["prompt"][0]["content"]
        if len(passage) > 1500:
            long_seen += 1
            assert f"Passage: {passage[:1500]}{ELLIPSIS}\n" in content
            assert passage[:1501] not in content
        else:
            short_seen += 1
            assert f"Passage: {passage}\n" in content
    assert long_seen > 0 and short_seen > 0  # the real rows exercise both branches


def test_no_passage_mode(local_boolq: Path) -> None:
    rows = _build(local_boolq, include_passage=False)
    by_question = {r["question"]: r for r in read_boolq(300)}
    for row in rows:
        passage = by_question[row["info"]["question"]]["passage"]
        assert passage[:200] not in row["prompt"][0]["content"]
        assert "\nPassage: " not in row["prompt"][0]["content"].split("Now your turn.")[1]


@pytest.mark.parametrize(("n", "n_true"), [(10, 5), (16, 8), (7, 4), (1, 1)])
def test_num_examples_stays_balanced(local_boolq: Path, n: int, n_true: int) -> None:
    rows = _build(local_boolq, split="validation", log_split="eval", num_examples=n)
    assert len(rows) == n
    assert rows["answer"].count("true") == n_true
    assert {r["info"]["split"] for r in rows} == {"eval"}


def test_splits_are_read_once_per_process(local_boolq: Path) -> None:
    """prime-rl builds train, eval and the eval env's eval dataset in one process: one read."""
    first = load_split(str(local_boolq), "validation")
    assert load_split(str(local_boolq), "validation") is first


def test_gzip_and_parquet_and_hub_layout(tmp_path: Path) -> None:
    rows = read_boolq(120)
    gz = tmp_path / "gz"
    gz.mkdir()
    with gzip.open(gz / "validation.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    from datasets import Dataset

    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(hub / "validation-00000-of-00001.parquet"))
    write_jsonl(tmp_path / "plain" / "validation.jsonl", rows)
    reference = _build(tmp_path / "plain", split="validation")
    assert len(reference) > 0
    for folder in (gz, tmp_path / "hub"):
        built = _build(folder, split="validation")
        assert built["prompt"] == reference["prompt"]
        assert built["answer"] == reference["answer"]


# --- bad input: each error names the problem -------------------------------------------------


def test_unknown_split_names_the_splits_found(local_boolq: Path) -> None:
    with pytest.raises(DatasetError, match=r"split 'tset' not found .*train, validation"):
        load_split(str(local_boolq), "tset")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(str(tmp_path / "nowhere"), "train")


def test_file_without_answer_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in read_boolq(20)]
    path = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(DatasetError, match=rf"{path}.*missing column\(s\) answer"):
        load_split(str(tmp_path / "d"), "train")


def test_non_boolean_answer(tmp_path: Path) -> None:
    rows = [dict(r, answer="yes") for r in read_boolq(5)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(DatasetError, match="column 'answer' must be boolean, row 0 holds 'yes'"):
        load_split(str(tmp_path / "d"), "train")


def test_one_class_only(tmp_path: Path) -> None:
    rows = [r for r in read_boolq(100) if r["answer"]]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    with pytest.raises(DatasetError, match="one class only"):
        _build(tmp_path / "d")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("")
    with pytest.raises(DatasetError, match="train.jsonl"):
        load_split(str(tmp_path / "d"), "train")
