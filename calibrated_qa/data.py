"""BoolQ rows -> the environment's datasets: load (hub or local folder), balance, format.

A local folder is read like a hub dataset: split names come from the file names
(``train.jsonl``, ``validation.jsonl``, ``validation.jsonl.gz``, ``validation.parquet`` or
``[data/]validation-00000-of-00001.parquet``), and each row needs ``question``, ``passage`` and a
boolean ``answer``; other columns (``title``, ...) are ignored. From there on, hub and local rows go
through exactly the same balancing and formatting code.
"""

from __future__ import annotations

import functools
from pathlib import Path

from datasets import Dataset

from calibrated_qa.prompt import DEFAULT_MAX_PASSAGE_CHARS, build_prompt

DEFAULT_DATASET = "google/boolq"
DEFAULT_SEED = 42
REQUIRED_COLUMNS = ("question", "passage", "answer")
_SUFFIXES = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".parquet": "parquet"}


class DatasetError(ValueError):
    """The dataset cannot be used as asked; the message names the source and the problem."""


def _local_split_files(folder: Path) -> dict[str, tuple[str, list[Path]]]:
    """Map each split found in ``folder`` (or its ``data/``) to its loader and files."""
    found: dict[str, tuple[str, list[Path]]] = {}
    for directory in (folder, folder / "data"):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            for suffix, loader in _SUFFIXES.items():
                if path.name.endswith(suffix):
                    split = path.name[: -len(suffix)].split("-0")[0]
                    found.setdefault(split, (loader, []))[1].append(path)
                    break
    return found


def is_local(dataset_name: str) -> bool:
    """A dataset name is a local folder when it exists or looks like a path, else a hub id."""
    return Path(dataset_name).exists() or dataset_name.startswith(("/", ".", "~"))


@functools.cache
def load_split(dataset_name: str, split: str) -> Dataset:
    """Load one raw split from the hub or a local folder and check its columns.

    Cached per process: prime-rl's orchestrator builds the train and eval datasets of the
    training env and the eval dataset of the eval env, and each must not reach the hub again.
    """
    from datasets import load_dataset

    if is_local(dataset_name):
        folder = Path(dataset_name).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"dataset folder {folder} does not exist")
        splits = _local_split_files(folder)
        if split not in splits:
            available = ", ".join(sorted(splits)) or "none"
            raise DatasetError(
                f"split {split!r} not found in {folder} (splits found from file names: {available})"
            )
        loader, files = splits[split]
        source = ", ".join(str(f) for f in files)
        try:
            dataset = load_dataset(loader, data_files=[str(f) for f in files], split="train")
        except Exception as exc:
            raise DatasetError(f"could not read {source}: {exc}") from exc
    else:
        source = f"{dataset_name} (split {split})"
        try:
            dataset = load_dataset(dataset_name, split=split)
        except ValueError as exc:
            raise DatasetError(f"could not load {source}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"have {', '.join(dataset.column_names)}"
        )
    if len(dataset) == 0:
        raise DatasetError(f"{source}: no rows")
    bad = [i for i, a in enumerate(dataset["answer"]) if not isinstance(a, bool)]
    if bad:
        raise DatasetError(
            f"{source}: column 'answer' must be boolean, row {bad[0]} holds "
            f"{dataset[bad[0]]['answer']!r} ({len(bad)} such rows)"
        )
    return dataset


def balance(dataset: Dataset, seed: int) -> Dataset:
    """50/50 true/false: shuffle, keep ``min(n_true, n_false)`` of each, concatenate, shuffle.

    Balancing makes "always say YES with 62%" worthless, so the reward pays for reading the
    passage. The train split's 9,427 rows become 7,106; the validation split's 3,270 become 2,474.
    """
    from datasets import concatenate_datasets

    shuffled = dataset.shuffle(seed=seed)
    answers = shuffled["answer"]
    true_idx = [i for i, a in enumerate(answers) if a]
    false_idx = [i for i, a in enumerate(answers) if not a]
    n = min(len(true_idx), len(false_idx))
    if n == 0:
        only = "true" if true_idx else "false"
        raise DatasetError(f"cannot balance: every row's answer is {only} (one class only)")
    halves = [shuffled.select(true_idx[:n]), shuffled.select(false_idx[:n])]
    return concatenate_datasets(halves).shuffle(seed=seed)


def first_balanced(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` rows of a balanced dataset that keep it balanced: ``ceil(n/2)`` true rows
    and ``floor(n/2)`` false ones, in dataset order (a plain head of 16 rows can be 11 to 5)."""
    answers = dataset["answer"]
    true_idx = [i for i, a in enumerate(answers) if a][: (n + 1) // 2]
    false_idx = [i for i, a in enumerate(answers) if not a][: n // 2]
    return dataset.select(sorted(true_idx + false_idx))


def to_environment_rows(
    dataset: Dataset,
    *,
    split: str,
    include_passage: bool = True,
    max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
) -> Dataset:
    """Raw BoolQ rows -> ``prompt`` (one user message), ``answer`` ("true"/"false"), ``info``."""

    def row(example: dict) -> dict:
        return {
            "prompt": build_prompt(
                example["question"],
                example["passage"],
                include_passage=include_passage,
                max_passage_chars=max_passage_chars,
            ),
            "answer": "true" if example["answer"] else "false",
            "info": {"question": example["question"], "split": split},
            "task": "calibrated-qa",
        }

    # Built from a list rather than with ``Dataset.map``: map would keep the raw boolean feature
    # type of ``answer`` and silently turn "true"/"false" back into booleans.
    return Dataset.from_list([row(example) for example in dataset])


def build_split(
    dataset_name: str,
    split: str,
    *,
    log_split: str,
    seed: int,
    num_examples: int,
    include_passage: bool,
    max_passage_chars: int,
) -> Dataset:
    """Load, balance, cut to ``num_examples`` (-1 = all) and format one split."""
    balanced = balance(load_split(dataset_name, split), seed)
    if num_examples >= 0:
        balanced = first_balanced(balanced, num_examples)
    return to_environment_rows(
        balanced,
        split=log_split,
        include_passage=include_passage,
        max_passage_chars=max_passage_chars,
    )
