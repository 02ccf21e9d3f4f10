"""Column-wise measurements of a set of prompts: lengths, script, words, word pairs.

Everything runs on Arrow arrays with ``pyarrow.compute`` (RE2): a million prompts cost a few
vectorized passes, no Python loop per prompt. Words are maximal runs of letters and digits,
lower-cased (the same definition on the training side and the traffic side); "tokens" of a prompt
are those words, since the traffic records the served tokenizer's counts but the training data
carries none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# Scripts told apart in the script mix (RE2 script names); a prompt takes the script most of its
# letters are in, "none" when it has no letter of these.
SCRIPTS = ("Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Devanagari", "Han", "Hiragana", "Katakana",
           "Hangul", "Thai")
_WORD_SPLIT = r"[^\p{L}\p{N}]+"


def prompt_texts(prompts: Sequence[Any]) -> list[str]:
    """Each prompt as text (a conversation: its last user turn, as the project reads prompts)."""
    from llmops_tasks.text.records import prompt_cell

    return [p if isinstance(p, str) else (prompt_cell(p)[0] or "") for p in prompts]


@dataclasses.dataclass
class Profile:
    """What the drift signals compare: per-prompt lengths, the script mix, the words."""

    chars: Any  # numpy int64, one per prompt
    words: Any  # numpy int64, words per prompt
    scripts: dict[str, int]  # prompts per dominant script
    flat_words: Any  # pyarrow array of every word, in order
    bigrams: Any  # pyarrow array of every adjacent word pair within a prompt ("a b")

    @property
    def n(self) -> int:
        return len(self.chars)


def profile(texts: Sequence[str]) -> Profile:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pa.array(list(texts), type=pa.large_string())
    n = len(column)
    chars = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.zeros((len(SCRIPTS), n), dtype=np.int64)
    for i, script in enumerate(SCRIPTS):
        counts[i] = pc.count_substring_regex(column, rf"\p{{{script}}}").to_numpy(zero_copy_only=False)
    if n:
        dominant = np.where(counts.max(axis=0) > 0, counts.argmax(axis=0), len(SCRIPTS))
        labels = (*SCRIPTS, "none")
        scripts = {labels[i]: int(c) for i, c in enumerate(np.bincount(dominant, minlength=len(labels))) if c}
    else:
        scripts = {}
    split = pc.split_pattern_regex(pc.utf8_lower(column), _WORD_SPLIT)
    flat = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy(zero_copy_only=False)
    keep = pc.not_equal(pc.utf8_length(flat), 0)
    flat = pc.filter(flat, keep)
    parents = parents[keep.to_numpy(zero_copy_only=False)]
    words = np.bincount(parents, minlength=n).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    if len(flat) > 1:
        same = parents[1:] == parents[:-1]
        mask = pa.array(same)
        left = pc.filter(flat.slice(0, len(flat) - 1), mask)
        right = pc.filter(flat.slice(1), mask)
        bigrams = pc.binary_join_element_wise(left, right, pa.scalar(" ", type=pa.large_string()))
    else:
        bigrams = pa.array([], type=pa.large_string())
    return Profile(chars=chars, words=words, scripts=scripts, flat_words=flat, bigrams=bigrams)


def unseen(values, known) -> Any:
    """A numpy bool per value: not among ``known`` (a pyarrow array of distinct values)."""
    import pyarrow.compute as pc

    return pc.invert(pc.is_in(values, value_set=known)).to_numpy(zero_copy_only=False)


def distinct(values) -> Any:
    import pyarrow.compute as pc

    return pc.unique(values)


def top_new(values, known, k: int = 10) -> list[tuple[str, int]]:
    """The ``k`` most frequent ``values`` not among ``known``, with their counts."""
    import pyarrow.compute as pc

    if not len(values):
        return []
    new = pc.filter(values, pc.invert(pc.is_in(values, value_set=known)))
    if not len(new):
        return []
    import pyarrow as pa

    counted = pc.value_counts(new)
    table = pa.table({"value": counted.field("values"), "count": counted.field("counts")})
    table = table.sort_by([("count", "descending"), ("value", "ascending")]).slice(0, k)
    return [(str(v), int(c)) for v, c in zip(table["value"].to_pylist(), table["count"].to_pylist())]
