"""``llmops init``: create the embedded home folder.

No model hub is reachable from an air-gapped machine, so the demo's base model is built here: a
tiny Llama-architecture causal LM with random weights and a byte-level BPE tokenizer trained on
the sample data. It is saved with ``save_pretrained`` and loaded everywhere else with
``from_pretrained(path)`` — the same code that takes a hub id in production.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llmops_tasks.core import settings
from llmops_tasks.core.config import field
from llmops_tasks.local import samples

# Large enough to learn the help-desk templates in a few dozen CPU steps, small enough to train
# in seconds on two cores.
TINY_ARCHITECTURE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``texts`` (never falls back to unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    fast.model_max_length = TINY_ARCHITECTURE["max_position_embeddings"]
    return fast


def build_tiny_model(out_dir: Path, texts: list[str], seed: int = 0) -> Path:
    """Write a random-init tiny causal LM and its tokenizer to ``out_dir``; atomic."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **TINY_ARCHITECTURE,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "llmops_model.json").write_text(
            json.dumps({"origin": "llmops init", "architecture": TINY_ARCHITECTURE, "seed": seed}, indent=2)
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_tiny_model(out_dir: Path | None = None) -> Path:
    out_dir = out_dir or settings.tiny_model_dir()
    if not (out_dir / "config.json").exists():
        build_tiny_model(out_dir, samples.corpus_text())
    return out_dir


@dataclass
class InitConfig:
    home: str = field("", path="output", help="home folder to create (default: $LLMOPS_HOME or ./.llmops)")

    def __post_init__(self) -> None:
        self.home = self.home.strip()


def run(config: InitConfig) -> dict:
    import os

    if config.home:
        os.environ["LLMOPS_HOME"] = config.home
    data_path = samples.ensure_sample_data()
    model_dir = ensure_tiny_model()
    return {"home": str(settings.home()), "dataset": str(data_path), "base_model": str(model_dir)}


def command():
    from llmops_tasks.core.command import Command

    return Command(InitConfig, run, "create the embedded home: sample data and the tiny local base model")
