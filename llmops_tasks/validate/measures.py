"""Reading a data set in chunks and measuring each chunk into the table the suite checks."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

from llmops_tasks.core import data
from llmops_tasks.text.columns import RE2_NOT_BLANK, KeySet, TextColumn, combine_keys, flags_where, text_keys
from llmops_tasks.text.records import message_cell, prompt_cell, row_id
from llmops_tasks.validate import conversations
from llmops_tasks.validate.config import PAIR_EQUAL_COLUMN, TYPE_SUFFIX, ValidateConfig

# --- the measurement table GX checks ------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """What earlier chunks left behind: keys of rows, prompts and ids, and running totals."""

    rows: KeySet = dataclasses.field(default_factory=KeySet)
    normalized_rows: KeySet = dataclasses.field(default_factory=KeySet)
    prompts: KeySet = dataclasses.field(default_factory=KeySet)
    ids: KeySet = dataclasses.field(default_factory=KeySet)
    against_exact: KeySet = dataclasses.field(default_factory=KeySet)
    against_normalized: KeySet = dataclasses.field(default_factory=KeySet)
    row_count: int = 0
    repeated_prompts: int = 0
    pairs: int = 0
    chosen_longer: int = 0
    same_length: int = 0
    chosen_chars: int = 0
    rejected_chars: int = 0
    pii_hits: Counter = dataclasses.field(default_factory=Counter)


def row_ids(chunk: data.Chunk, label: str = "line") -> tuple[list[str], Any]:
    """(:func:`row_id` of every row, each row's ``id`` as text or None): column-wise where the
    ``id`` column is text or integers, else from the records."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(chunk)
    array = chunk.column("id")
    if chunk.table is not None and (array is None or pa.types.is_null(array.type)):
        values = np.full(n, None, dtype=object)
    elif array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
                                or pa.types.is_integer(array.type)):
        text = array.cast(pa.string())
        values = text.to_numpy(zero_copy_only=False)
        blank = pc.fill_null(pc.invert(pc.match_substring_regex(text, RE2_NOT_BLANK)), True)
        if pa.types.is_integer(array.type):
            blank = pc.is_null(array)
        ids = values.copy()
        for i in np.flatnonzero(blank.to_numpy(zero_copy_only=False)).tolist():
            ids[i] = f"{label} {chunk.lines[i]}"
        return ids.tolist(), values
    else:
        values = np.empty(n, dtype=object)
        values[:] = [None if r.get("id") is None else str(r["id"]) for r in chunk.records]
        return [row_id(r, label) for r in chunk.records], values
    return [f"{label} {line}" for line in chunk.lines], values


def measure(chunk: data.Chunk, text_columns: tuple[str, ...], key_columns: tuple[str, ...],
            config: ValidateConfig, seen: Seen, count_tokens: Callable[[list[str]], list[int]],
            id_label: str, offset: int, chat_template: conversations.ChatTemplate | None = None):
    """One row per record: its id, position, and what each rule needs to know about it; the
    conversational measurements only where a row holds a message list (rendered with
    ``chat_template`` when given)."""
    import numpy as np
    import pandas as pd

    if isinstance(chunk, list):
        chunk = data.Chunk.from_records(chunk)
    n = len(chunk)
    ids, id_values = row_ids(chunk, id_label)
    frame: dict[str, Any] = {"id": pd.Series(ids, dtype=object), "row": pd.Series(np.arange(offset, offset + n))}
    columns = {column: TextColumn.of(chunk, column, message_cell) for column in text_columns}
    for column, text in columns.items():
        tokens = np.full(n, np.nan)
        if config.max_tokens or config.min_tokens:
            present = np.flatnonzero(text.present)
            if config.tokenizer:
                tokens[present] = count_tokens(text.texts[present].tolist())
            else:
                tokens[present] = text.word_counts()[present]
        frame[column + TYPE_SUFFIX] = pd.Series(text.kinds, dtype=object)
        frame[column + "__chars"] = pd.Series(text.chars(), dtype="float64")
        frame[column + "__tokens"] = pd.Series(tokens, dtype="float64")
        frame[column + "__blank"] = pd.Series(text.blank())
        frame[column + "__control_chars"] = pd.Series(text.control_chars())
        frame[column + "__valid_utf8"] = pd.Series(text.valid_utf8())

    if config.pii_kinds:
        found: dict[int, list[str]] = {}
        for column, text in columns.items():
            for i, kinds in sorted(text.pii(config.pii_kinds).items()):
                seen.pii_hits.update(kinds)
                found.setdefault(i, []).extend(f"{column}:{kind}" for kind in kinds)
        hits = np.full(n, None, dtype=object)
        for i, names in found.items():
            hits[i] = ", ".join(names)
        frame["pii__found"] = pd.Series(hits, dtype=object)

    # Always present (None for rows without an id), so every chunk's table has the same columns.
    has_id = np.not_equal(id_values, None)
    repeats = np.zeros(n, dtype=bool)
    repeats[has_id] = seen.ids.add(text_keys(id_values[has_id]))
    frame["id__repeats"] = pd.Series(flags_where(repeats, has_id))

    if key_columns and config.check_duplicates:
        exact = seen.rows.add(combine_keys(*(columns[c].keys() for c in key_columns)))
        near = seen.normalized_rows.add(combine_keys(*(columns[c].normalized_keys() for c in key_columns)))
        everywhere = np.ones(n, dtype=bool)
        frame["row__duplicate"] = pd.Series(flags_where(exact, everywhere))
        frame["row__normalized_duplicate"] = pd.Series(flags_where(near & ~exact, everywhere))

    if "prompt" in columns:
        # A prompt's identity is its prompt_cell (a conversation's last turn): strings need no second pass.
        prompt = columns["prompt"] if columns["prompt"].column_wise else TextColumn.of(chunk, "prompt", prompt_cell)
        present = prompt.present
        keys = prompt.keys()[present]
        seen.repeated_prompts += int(seen.prompts.add(keys).sum())
        if len(seen.against_exact) or len(seen.against_normalized):
            in_exact = np.zeros(n, dtype=bool)
            in_normalized = np.zeros(n, dtype=bool)
            exact_hit = seen.against_exact.contains(keys)
            normalized_hit = seen.against_normalized.contains(prompt.normalized_keys()[present])
            in_exact[present] = exact_hit
            in_normalized[present] = normalized_hit & ~exact_hit
            frame["prompt__in_against"] = pd.Series(flags_where(in_exact, present))
            frame["prompt__in_against_normalized"] = pd.Series(flags_where(in_normalized, present))

    if "chosen" in columns and "rejected" in columns:
        chosen, rejected = columns["chosen"], columns["rejected"]
        both = chosen.present & rejected.present
        equal = np.zeros(n, dtype=bool)
        equal[both] = chosen.texts[both] == rejected.texts[both]
        chosen_chars = chosen.chars()[both].astype("int64")
        rejected_chars = rejected.chars()[both].astype("int64")
        seen.pairs += int(both.sum())
        seen.chosen_longer += int((chosen_chars > rejected_chars).sum())
        seen.same_length += int((chosen_chars == rejected_chars).sum())
        seen.chosen_chars += int(chosen_chars.sum())
        seen.rejected_chars += int(rejected_chars.sum())
        frame[PAIR_EQUAL_COLUMN] = pd.Series(flags_where(equal, both))
    frame.update(conversations.measure(chunk, columns, text_columns, config.kind, chat_template))
    seen.row_count += n
    return pd.DataFrame(frame)


def read_against(config: ValidateConfig, seen: Seen) -> int:
    """Keys of the ``against`` prompts (exact and normalized); returns its row count."""
    count = 0
    for chunk in data.read_chunks(config.against, config.chunk_rows):
        prompt = TextColumn.of(chunk, "prompt", prompt_cell)
        present = prompt.present
        seen.against_exact.add(prompt.keys()[present])
        seen.against_normalized.add(prompt.normalized_keys()[present])
        count += len(chunk)
    return count

