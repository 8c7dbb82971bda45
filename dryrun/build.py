"""Build, once, a tiny random Gemma 2 with a tokenizer trained on the shipped BoolQ rows: nothing
is downloaded (CI must not depend on the hub), yet the dry run exercises what a scripted client
cannot: Gemma 2's architecture, its chat template (a ``system`` role refused, as behind vLLM), real
tokenisation and token counts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

DEFAULT_DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "boolq" / "validation.jsonl"
# Gemma's special tokens, in Gemma's id order for the first four (pad 0, eos 1, bos 2, unk 3).
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
# Gemma 2 IT's chat template (google/gemma-2-2b-it), verbatim: a system message raises.
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
# Gemma 2's shape, scaled down to ~0.2M parameters: one sliding-window and one global layer, as
# Gemma 2 alternates. Prompts are 470-840 tokens with this tokenizer, plus the completion.
SHAPE = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
             sliding_window=512, max_position_embeddings=4096, tie_word_embeddings=True,
             seed=0)  # fmt: skip


@dataclass(frozen=True)
class BuiltModel:
    path: Path  # cache_dir/tiny-gemma2-<key>, an ordinary model folder
    built: bool  # False when the cached folder was reused
    seconds: float
    num_parameters: int


def cache_key(data_file: Path) -> str:
    """Hash of everything the build depends on (shape, template, training text, library
    versions): a change builds a new model, an unchanged one is never rebuilt."""
    data = hashlib.sha256(data_file.read_bytes()).hexdigest()
    versions = [version(name) for name in ("torch", "transformers", "tokenizers")]
    payload = json.dumps([SHAPE, GEMMA2_CHAT_TEMPLATE, data, versions], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_into(folder: Path, data_file: Path) -> int:
    """Write tokenizer, model and generation config to ``folder``; return the parameter count.
    The tokenizer: byte-level BPE (lossless on any text) on every row's question, title, passage."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig
    from transformers import PreTrainedTokenizerFast as FastTokenizer

    rows = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines()]
    texts = [str(row[k]) for row in rows for k in ("question", "title", "passage") if k in row]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=SHAPE["vocab_size"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS), show_progress=False))  # fmt: skip
    pad, eos, bos, unk, *turns = SPECIAL_TOKENS
    tokenizer = FastTokenizer(tokenizer_object=bpe, pad_token=pad, eos_token=eos, bos_token=bos,
                              unk_token=unk, additional_special_tokens=turns)  # fmt: skip
    tokenizer.chat_template = GEMMA2_CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    # Stops at <eos> or at the end of its turn, as Gemma 2 IT's generation config says.
    special = dict(pad_token_id=ids[pad], bos_token_id=ids[bos],
                   eos_token_id=[ids[eos], ids["<end_of_turn>"]])  # fmt: skip
    shape = {k: v for k, v in SHAPE.items() if k not in ("vocab_size", "seed")}
    torch.manual_seed(SHAPE["seed"])
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tokenizer), **shape, **special))
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def build_model(cache_dir: Path, data_file: Path = DEFAULT_DATA_FILE) -> BuiltModel:
    """The model folder: reused from ``cache_dir`` if present, else built there. It appears
    atomically (built under a temporary name, then renamed): an interrupted build leaves nothing
    a later run could mistake for a finished one."""
    start = time.perf_counter()
    target = Path(cache_dir) / f"tiny-gemma2-{cache_key(data_file)}"
    info = target / "dryrun_build.json"
    built = not info.exists()
    if built:
        scratch = target.parent / f".building-{target.name}-{os.getpid()}"
        try:
            count = build_into(scratch, data_file)
            (scratch / info.name).write_text(json.dumps({"num_parameters": count}) + "\n")
            try:
                scratch.rename(target)
            except OSError:
                if not info.exists():  # else a concurrent build finished first: keep that
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    count = json.loads(info.read_text())["num_parameters"]
    return BuiltModel(target, built, time.perf_counter() - start, count)
