"""What an answer says about the model that wrote it: empty, repetitive, a refusal, an echo of the
prompt, personal data or a secret. One definition, used by monitoring (production answers against
the version's own evaluation answers) and by the gate (a candidate's eval answers against the
champion's), so "refusal rate" means the same thing before and after promotion.

Measured a column at a time: lengths, blanks, refusals and the PII pre-scan with
``pyarrow.compute`` (RE2), confirmation of PII hits with the project's detectors
(:mod:`llmops_tasks.text.pii`); only repetition and echo look at each answer in Python.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from llmops_tasks.text import pii

# Kinds of hit that are secrets (credentials), as opposed to personal data.
SECRET_KINDS = ("aws_access_key", "github_token", "slack_token", "openai_key", "private_key", "jwt")
PII_KINDS = tuple(k for k in pii.KINDS if k not in SECRET_KINDS)

# Refusal phrases (RE2 syntax, case-insensitive); a deployment's monitor / gate policy may replace them.
DEFAULT_REFUSAL_PATTERNS = (
    r"\bI(?:'m| am) (?:sorry|afraid|unable|not able)\b",
    r"\bI (?:can(?:no|')t|won't|will not|must decline to) (?:help|assist|answer|provide|do|comply)",
    r"\bas an AI\b",
    r"\bI(?:'m| am) not (?:allowed|permitted)\b",
)
# An answer is repetitive when at least this share of its word 3-grams repeat an earlier one.
REPETITION_SHARE = 0.5
REPETITION_MIN_WORDS = 8
# A prompt shorter than this (normalized characters) is not counted as echoed: "hi" -> "hi there".
ECHO_MIN_CHARS = 12


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def repetition_share(text: str) -> float:
    """Share of the word 3-grams of ``text`` that repeat an earlier 3-gram (0 for short text)."""
    words = text.split()
    if len(words) < REPETITION_MIN_WORDS:
        return 0.0
    grams = list(zip(words, words[1:], words[2:]))
    return 1.0 - len(set(grams)) / len(grams)


def echoes(prompt: str, answer: str) -> bool:
    """The answer repeats the whole prompt (up to case and spacing)."""
    question = _normal(prompt)
    return len(question) >= ECHO_MIN_CHARS and question in _normal(answer)


@dataclasses.dataclass
class AnswerSignals:
    """Per-answer measurements of one set of answers; every array has one entry per answer."""

    chars: Any  # numpy int array
    words: Any
    empty: Any  # numpy bool arrays
    repetitive: Any
    refusal: Any
    echo: Any
    pii_kinds: dict[int, list[str]]  # row -> kinds of PII and secrets found in that answer

    @property
    def n(self) -> int:
        return len(self.chars)

    def rows_with(self, kinds: Sequence[str]) -> list[int]:
        wanted = set(kinds)
        return sorted(row for row, found in self.pii_kinds.items() if wanted & set(found))

    def kind_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for found in self.pii_kinds.values():
            counts.update(set(found))
        return dict(sorted(counts.items()))

    def counts(self) -> dict[str, int]:
        """Answers flagged per signal (what a proportion test compares)."""
        return {
            "answers": self.n,
            "empty": int(self.empty.sum()),
            "repetitive": int(self.repetitive.sum()),
            "refusal": int(self.refusal.sum()),
            "echo": int(self.echo.sum()),
            "pii": len(self.rows_with(PII_KINDS)),
            "secret": len(self.rows_with(SECRET_KINDS)),
        }

    def rates(self) -> dict[str, float]:
        counts = self.counts()
        n = max(self.n, 1)
        return {k: counts[k] / n for k in ("empty", "repetitive", "refusal", "echo", "pii", "secret")}


def measure(answers: Sequence[str | None], prompts: Sequence[Any] | None = None,
            refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS) -> AnswerSignals:
    """Measure every answer; ``prompts`` (same order) for the echo signal. ``None`` answers (failed
    requests) count as empty."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from llmops_tasks.text.records import answer_text, prompt_cell

    texts = [answer_text(a) if a is not None else "" for a in answers]
    column = pa.array(texts, type=pa.large_string())
    chars = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    stripped = pc.utf8_length(pc.utf8_trim_whitespace(column)).to_numpy(zero_copy_only=False)
    words = np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))
    if refusal_patterns and len(texts):
        pattern = "(?i)" + "|".join(f"(?:{p})" for p in refusal_patterns)
        refusal = pc.fill_null(pc.match_substring_regex(column, pattern), False).to_numpy(zero_copy_only=False)
    else:
        refusal = np.zeros(len(texts), dtype=bool)
    repetitive = np.fromiter((repetition_share(t) >= REPETITION_SHARE for t in texts), dtype=bool, count=len(texts))
    if prompts is not None:
        prompt_texts = [(prompt_cell(p)[0] or "") if not isinstance(p, str) else p for p in prompts]
        echo = np.fromiter((bool(a) and echoes(p, a) for p, a in zip(prompt_texts, texts)), dtype=bool,
                           count=len(texts))
    else:
        echo = np.zeros(len(texts), dtype=bool)
    return AnswerSignals(chars=chars, words=words, empty=np.asarray(stripped == 0, dtype=bool),
                         repetitive=repetitive, refusal=np.asarray(refusal, dtype=bool), echo=echo,
                         pii_kinds=pii.kinds_in_texts(column) if len(texts) else {})


def masked(text: str, limit: int = 240) -> str:
    """An answer as a report may show it: each PII or secret hit replaced by its kind and a masked
    head (:func:`pii.mask`), cut at ``limit`` characters."""
    hits = pii.find(text)
    out, last = [], 0
    for hit in hits:
        out.append(text[last:hit.start])
        out.append(f"[{hit.kind}: {pii.mask(hit.text)}]")
        last = hit.end
    out.append(text[last:])
    shown = "".join(out)
    return shown if len(shown) <= limit else shown[:limit] + "…"
