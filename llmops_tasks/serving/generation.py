"""Greedy generation with a causal LM: the one path evaluate scores and serving answers with.

Deterministic (no sampling), batched with left padding so every prompt ends at the last position,
prompts truncated from the left to leave room for ``max_new_tokens``, conversations rendered with
the model's chat template, answers cut at EOS / pad and decoded without special tokens; on the
GPU when there is one, in the checkpoint's dtype there.

:class:`Generator` loads a model once and answers batches: evaluate (through :func:`generate`),
the served pyfunc (``model.py``) and so the server (``server.py``) all answer with it, so what is
served is what was gated. This file imports nothing of ``llmops_tasks``: the served model carries
a copy of it (``flavor.log_generator``), so a version also serves where the package is not installed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def load_model(model_ref: str, padding_side: str):
    """(model in eval mode, tokenizer with a pad token, device) for one model folder or hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    tokenizer.padding_side = padding_side
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_ref, **({"dtype": "auto"} if device == "cuda" else {}))
    model.to(device)
    model.eval()
    return model, tokenizer, device


def prompt_text(tokenizer, prompt: Any) -> str:
    """The text a model continues: a conversation through its chat template, a string as it is."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return str(prompt)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One greedy answer: its text, the prompt's tokens the model read (after truncation, no padding)
    and the new tokens before EOS."""

    text: str
    tokens_in: int
    tokens_out: int


class Generator:
    """A causal LM loaded once, answering batches of prompts greedily (:meth:`answer`)."""

    def __init__(self, model, tokenizer, device: str) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        # Beyond ~1M the tokenizer has no real limit configured: never truncate then.
        self.limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
        self.stop_ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}

    @classmethod
    def load(cls, model_ref: str) -> Generator:
        """Load ``model_ref`` (a model folder or hub id) for generation: left padding, so that every
        prompt of a batch ends at the last position, where a decoder-only model continues."""
        return cls(*load_model(model_ref, padding_side="left"))

    def answer(
        self, prompts: list[Any], *, max_new_tokens: int, batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Greedy answers to ``prompts`` (strings or message lists), ``batch_size`` at a time on the
        model (default: all at once); ``progress(done, total)`` is called after each batch."""
        import torch

        texts = [prompt_text(self.tokenizer, p) for p in prompts]
        size = max(1, batch_size or len(texts) or 1)
        limit = self.limit
        answers: list[Completion] = []
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                encoded = self.tokenizer(
                    texts[start:start + size], return_tensors="pt", padding=True,
                    truncation=limit is not None, max_length=max(1, limit - max_new_tokens) if limit else None,
                ).to(self.device)
                output = self.model.generate(
                    **encoded, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                read = encoded["attention_mask"].sum(dim=1).tolist()
                for row, tokens_in in zip(output[:, encoded["input_ids"].shape[1]:].tolist(), read):
                    length = next((i for i, token in enumerate(row) if token in self.stop_ids), len(row))
                    text = self.tokenizer.decode(row[:length], skip_special_tokens=True).strip()
                    answers.append(Completion(text, int(tokens_in), length))
                if progress is not None:
                    progress(len(answers), len(texts))
        return answers


def generate(
    model_ref: str, prompts: list[Any], *, max_new_tokens: int, batch_size: int, seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, int]]:
    """Greedy answers to ``prompts``: (text of the new tokens, number of new tokens before EOS).

    What evaluate calls: a :class:`Generator` loaded for these prompts and released after.
    ``progress(done, total)`` is called after each batch (prompts answered so far, all prompts).
    """
    import torch

    generator = Generator.load(model_ref)
    torch.manual_seed(seed)
    try:
        answers = generator.answer(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    finally:
        del generator
    return [(a.text, a.tokens_out) for a in answers]
