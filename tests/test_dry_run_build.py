"""The dry run's model builder: tiny, Gemma 2 shaped, a tokenizer that is lossless on real BoolQ
text, Gemma 2's chat template (system refused), and a cache that builds each recipe exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from calibrated_qa.prompt import build_prompt
from dryrun.build import DEFAULT_DATA_FILE, GEMMA2_CHAT_TEMPLATE, BuiltModel, build_model, cache_key
from tests.conftest import FIXTURES, read_boolq


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_model(tmp_path_factory.mktemp("dryrun-cache"))


@pytest.fixture(scope="module")
def tokenizer(built: BuiltModel):
    return AutoTokenizer.from_pretrained(built.path)


def test_model_is_a_tiny_gemma2(built: BuiltModel) -> None:
    assert built.built
    config = AutoConfig.from_pretrained(built.path)
    assert config.model_type == "gemma2"
    assert config.layer_types == ["sliding_attention", "full_attention"]
    model = AutoModelForCausalLM.from_pretrained(built.path)
    assert type(model).__name__ == "Gemma2ForCausalLM"
    count = sum(p.numel() for p in model.parameters())
    assert count == built.num_parameters < 1_000_000


def test_template_is_gemma2s_and_refuses_a_system_role(tokenizer) -> None:
    real = (FIXTURES / "gemma2_chat_template.jinja").read_text().strip()
    assert real == GEMMA2_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is it true?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos><start_of_turn>user\nIs it true?<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(TemplateError, match="System role not supported"):
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            tokenize=False,
        )


def test_special_tokens_are_single_tokens_with_gemma_ids(tokenizer) -> None:
    ids = tokenizer.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<unk>"])
    assert ids == [0, 1, 2, 3]  # Gemma's ids
    for token in ("<start_of_turn>", "<end_of_turn>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_tokenizer_round_trips_real_boolq_text(tokenizer) -> None:
    rows = read_boolq(300, start=1000)
    texts = [r["question"] for r in rows] + [r["passage"] for r in rows]
    texts += [build_prompt(r["question"], r["passage"])[0]["content"] for r in rows[:20]]
    texts += ["Café – naïve “quotes” 日本語 \U0001f600 \t tabs\nnew lines"]  # beyond the corpus
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    # It learned English: a BoolQ passage costs far fewer tokens than bytes.
    passage = rows[0]["passage"]
    assert len(tokenizer.encode(passage)) < len(passage.encode()) / 2.5


def test_cache_is_reused_not_rebuilt(built: BuiltModel) -> None:
    cache = built.path.parent
    before = (built.path / "model.safetensors").stat().st_mtime_ns
    again = build_model(cache)
    assert not again.built
    assert again.path == built.path
    assert (built.path / "model.safetensors").stat().st_mtime_ns == before
    assert again.num_parameters == built.num_parameters
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no leftovers


def test_key_depends_on_the_training_text(tmp_path: Path) -> None:
    rows = DEFAULT_DATA_FILE.read_text().splitlines()
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(rows[:-1]) + "\n")
    assert cache_key(data) != cache_key(DEFAULT_DATA_FILE)
