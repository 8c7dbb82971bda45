"""Build, once, a tiny random Gemma 2 and a tokenizer trained on the shipped BoolQ rows.

Why a random model rather than a small real one: nothing can be downloaded here (and CI should
not depend on the Hugging Face hub), yet the dry run must exercise what a scripted client cannot:
Gemma 2's architecture as ``transformers`` loads and serves it, Gemma 2's chat template (which
refuses a ``system`` role, as the real one does behind vLLM), real tokenisation and token usage.

Everything that shapes the output is a field of ``Recipe``; the cache folder is named after a hash
of the recipe, the data file and the library versions, so changing any of them builds a new model
and an unchanged recipe is never rebuilt. The result is an ordinary Hugging Face model folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO / ".cache" / "dryrun"
DEFAULT_DATA_FILE = REPO / "data" / "boolq" / "validation.jsonl"

# Gemma's special tokens, in Gemma's id order for the first four (pad 0, eos 1, bos 2, unk 3).
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

# Gemma 2 IT's chat template (google/gemma-2-2b-it), verbatim: turns are
# "<start_of_turn>{user|model}\n...<end_of_turn>\n" and a system message raises.
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


@dataclass(frozen=True)
class Recipe:
    """Every knob of the build. Defaults give ~0.2M parameters: Gemma 2's shape, scaled down."""

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2  # one sliding-window layer, one global layer, as Gemma 2 alternates
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    sliding_window: int = 512
    # Prompts are 470-840 tokens with this tokenizer, plus up to max_tokens of completion.
    max_position_embeddings: int = 4096
    seed: int = 0
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    chat_template: str = GEMMA2_CHAT_TEMPLATE
    # Sampling defaults served with the model: vLLM's (plain temperature sampling, no top-k/top-p),
    # so requests that only set a temperature sample the way prime-rl's inference server does.
    do_sample: bool = True
    top_k: int = 0
    top_p: float = 1.0
    # No stop token as the very first token: verifiers' client rejects an empty answer
    # (EmptyModelResponseError), which a near-uniform random model would give ~0.1% of the time.
    min_new_tokens: int = 1


LINK_NAME = "tiny-gemma2"  # cache_dir/tiny-gemma2 -> the folder of the last recipe built or reused


@dataclass(frozen=True)
class BuiltModel:
    path: Path  # cache_dir/tiny-gemma2-<key>
    link: Path  # cache_dir/tiny-gemma2, a stable name to serve it under (see point_link)
    built: bool  # False when the cached folder was reused
    seconds: float
    num_parameters: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(recipe: Recipe, data_file: Path) -> str:
    """Hash of everything the build depends on: recipe, training text, library versions."""
    payload = {
        "recipe": dataclasses.asdict(recipe),
        "data_sha256": _sha256_file(data_file),
        "versions": {name: version(name) for name in ("torch", "transformers", "tokenizers")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def training_texts(data_file: Path) -> list[str]:
    """Question, title and passage of every BoolQ row, in file order (the tokenizer's corpus)."""
    texts: list[str] = []
    with data_file.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.extend(str(row[key]) for key in ("question", "title", "passage") if key in row)
    return texts


def train_tokenizer(texts: list[str], recipe: Recipe):  # -> PreTrainedTokenizerFast
    """Byte-level BPE (lossless on any text) with Gemma's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=list(recipe.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    pad, eos, bos, unk, *turn_tokens = recipe.special_tokens
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        eos_token=eos,
        bos_token=bos,
        unk_token=unk,
        additional_special_tokens=turn_tokens,
    )
    fast.chat_template = recipe.chat_template
    return fast


def build_into(folder: Path, data_file: Path, recipe: Recipe) -> int:
    """Write tokenizer, model and generation config to ``folder``; return the parameter count."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    tokenizer = train_tokenizer(training_texts(data_file), recipe)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in recipe.special_tokens}
    # The model stops at <eos> or at the end of its turn, as Gemma 2 IT's generation config says.
    stop_ids = [ids["<eos>"], ids["<end_of_turn>"]]
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        head_dim=recipe.head_dim,
        query_pre_attn_scalar=recipe.head_dim,
        sliding_window=recipe.sliding_window,
        max_position_embeddings=recipe.max_position_embeddings,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=stop_ids,
        tie_word_embeddings=True,
    )
    torch.manual_seed(recipe.seed)
    model = Gemma2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=recipe.do_sample,
        temperature=1.0,
        top_k=recipe.top_k,
        top_p=recipe.top_p,
        min_new_tokens=recipe.min_new_tokens,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=stop_ids,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def build_model(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    data_file: Path = DEFAULT_DATA_FILE,
    recipe: Recipe | None = None,
) -> BuiltModel:
    """The model folder for ``recipe``: reused from ``cache_dir`` if present, else built there.

    The folder appears atomically (built under a temporary name, then renamed), so an interrupted
    build never leaves a half-written model that a later run would mistake for a finished one.
    """
    recipe = recipe or Recipe()
    start = time.perf_counter()
    key = cache_key(recipe, data_file)
    target = Path(cache_dir) / f"tiny-gemma2-{key}"
    info_file = target / "dryrun_build.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        link = point_link(target)
        return BuiltModel(target, link, False, time.perf_counter() - start, info["num_parameters"])

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".building-{key}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        num_parameters = build_into(scratch, data_file, recipe)
        info = {
            "cache_key": key,
            "num_parameters": num_parameters,
            "data_file": str(data_file),
            "recipe": dataclasses.asdict(recipe),
        }
        (scratch / "dryrun_build.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            scratch.rename(target)
        except OSError:
            if not info_file.exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    link = point_link(target)
    return BuiltModel(target, link, True, time.perf_counter() - start, num_parameters)


def point_link(target: Path) -> Path:
    """Point ``<cache>/tiny-gemma2`` at ``target`` (atomically) and return the link.

    The server is started on the link, so the model name that clients send (the path the server
    was given) stays the same across rebuilds and can be written down in the docs.
    """
    link = target.parent / LINK_NAME
    temporary = target.parent / f".{LINK_NAME}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)
    os.replace(temporary, link)
    return link
