"""Greedy generation with a causal LM: the one path evaluate scores and serving answers with.

Deterministic (no sampling), batched with left padding so every prompt ends at the last position,
prompts truncated from the left to leave room for ``max_new_tokens``, conversations rendered with
the model's chat template, answers cut at EOS / pad and decoded without special tokens.
"""

from __future__ import annotations

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


def generate(
    model_ref: str, prompts: list[Any], *, max_new_tokens: int, batch_size: int, seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, int]]:
    """Greedy answers to ``prompts``: (text of the new tokens, number of new tokens before EOS).

    ``progress(done, total)`` is called after each batch (prompts answered so far, all prompts).
    """
    import torch

    # Decoder-only models continue from the last position: pad on the left so every prompt ends there.
    model, tokenizer, device = load_model(model_ref, padding_side="left")
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    texts = [prompt_text(tokenizer, p) for p in prompts]
    stop_ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    torch.manual_seed(seed)
    answers: list[tuple[str, int]] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[start:start + batch_size], return_tensors="pt", padding=True,
                truncation=limit is not None, max_length=max(1, limit - max_new_tokens) if limit else None,
            ).to(device)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, encoded["input_ids"].shape[1]:].tolist():
                length = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
                answers.append((tokenizer.decode(row[:length], skip_special_tokens=True).strip(), length))
            if progress is not None:
                progress(len(answers), len(texts))
    del model
    return answers
