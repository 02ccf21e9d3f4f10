"""Record cells as text, and the one normalized form two texts share.

A cell is a string or a conversation (a list of ``{role, content}`` messages, content possibly in
the multimodal ``[{"type": "text", "text": ...}]`` form). :func:`flatten_text` is how validate and
eda read a cell. A prompt's identity is :func:`prompt_cell`, its last turn (validate's prompt
duplication and exact contamination rule, eda's prompt statistics); :func:`prompt_key` is that turn
normalized up to case, spacing, punctuation and Unicode form (the split's assignment, and so its
disjointness, and the normalized contamination rule).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from llmops_tasks.core import data

# Columns holding text (a string, or a list of {role, content} messages) that the rules check.
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion", "reference", "messages")
# C0 controls except tab, newline and carriage return, DEL, and C1 controls.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates (JSON \ud800 escapes) cannot be encoded as UTF-8; U+FFFD marks text that was
# already decoded with errors upstream.
BAD_UTF8 = re.compile("[\ud800-\udfff\ufffd]")
_NON_WORD = re.compile(r"[\W_]+")




def message_text(messages: list) -> str | None:
    """Content of a conversation joined by newlines, or None when it is not a message list."""
    parts = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            return None
        content = message.get("content")
        if isinstance(content, list):  # multimodal chat format: [{"type": "text", "text": ...}]
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                return None
            content = "".join(texts)
        if not isinstance(content, str):
            return None
        parts.append(content)
    return "\n".join(parts)


def flatten_text(value: Any) -> tuple[str | None, str | None]:
    """(text, type) of one cell: strings stay, message lists become their content, others are named.

    A value of the wrong type keeps a printable text so that only the type rule fires on it.
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, "text"
    if isinstance(value, (list, tuple)):
        text = message_text(list(value))
        if text is not None:  # an empty conversation is a message list with no text: not_blank fires
            return text, "messages"
        return printable(value), "list (not a list of role/content messages)"
    if isinstance(value, float) and math.isnan(value):  # NaN from Parquet/pandas is a null
        return None, None
    return printable(value), type(value).__name__


def printable(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def row_id(record: dict[str, Any], label: str = "line") -> str:
    """A row's own ``id``, else ``line N`` (its line in a JSONL file; ``row N`` in Parquet)."""
    value = record.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{label} {record.get('_line', '?')}"
    return str(value)


def normalize(text: str) -> str:
    """The form two texts share when they differ only in case, spacing, punctuation or Unicode form."""
    if not text.isascii():  # NFKC leaves ASCII as it is; skipping it halves the cost on most text
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub(" ", text.casefold()).strip()



def prompt_cell(value: Any) -> tuple[str | None, str | None]:
    """(text, type) of a prompt cell as its identity: a string as it is, a conversation by its last
    message (the turn the model answers; a system prompt or earlier turns do not make it another
    prompt). Other values as :func:`flatten_text` reads them."""
    if isinstance(value, (list, tuple)) and value and message_text(list(value)) is not None:
        return flatten_text([value[-1]])
    return flatten_text(value)


def prompt_key(value: Any) -> str:
    r"""What "the same prompt, up to case, spacing and punctuation" means (the split's assignment,
    the normalized contamination rule): the :func:`normalize`\ d text of :func:`prompt_cell`."""
    text, _ = prompt_cell(value)
    return normalize(text or "")


def answer_text(value: Any) -> str:
    """An answer cell as text: a string, or a conversation whose last message is the answer."""
    if isinstance(value, (list, tuple)):
        if not value:
            return ""
        last = value[-1]
        if isinstance(last, dict):
            text, _ = flatten_text([last])
            return text if text is not None else str(last.get("content", ""))
        return str(last)
    return "" if value is None else str(value)


def checked_columns(kind: str, columns: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional text) columns for a kind; SFT data may carry ``messages`` instead."""
    required = data.REQUIRED_COLUMNS[kind]
    if kind == "sft" and "messages" in columns and not set(required) & columns:
        required = ("messages",)
    optional = tuple(c for c in TEXT_COLUMNS if c in columns and c not in required)
    return required, optional


def _calls_tools_without_content(message: Any) -> bool:
    return (isinstance(message, dict) and message.get("role") == "assistant" and message.get("content") is None
            and isinstance(message.get("tool_calls"), list) and bool(message["tool_calls"]))


def message_cell(value: Any) -> tuple[str | None, str | None]:
    """:func:`flatten_text`, except that an assistant message calling tools (``tool_calls``) may
    leave out its content or make it null, as TRL and the chat templates allow: it reads as empty
    text. What validate reads a text cell as."""
    if isinstance(value, (list, tuple)) and any(_calls_tools_without_content(m) for m in value):
        value = [{**m, "content": ""} if _calls_tools_without_content(m) else m for m in value]
    return flatten_text(value)
