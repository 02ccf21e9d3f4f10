"""Stop bad data at the door: check a data set against a Great Expectations suite before training.

A data set is read in chunks (``chunk_rows`` at a time, column-wise through Arrow where it reads
the file exactly as the line-by-line reader would: :func:`data.iter_table_chunks`), so a million
rows validate in bounded memory. Each chunk becomes a table of per-row measurements (text type,
characters, tokens of the configured tokenizer, blank, control characters, invalid UTF-8, PII
kinds found, repeats of an earlier row, prompt, id or pair, overlap with the ``against`` data
set), measured a column at a time (:class:`TextColumn`), and the suite checks those tables with a
real GX context, one batch per ``gx_batch_rows`` rows (whole chunks); counts and row ids are
added up over the batches. Measuring here and letting GX check numbers keeps GX off the raw text,
which it would fingerprint and convert column by column (several times slower on long text).
Statistics of the whole data set (row count, columns present, prompt duplication rate,
chosen-vs-rejected length bias) are computed while streaming and reported alongside the GX rules.

Every rule has a severity (``block`` or ``warn``) and a ``mostly`` threshold from the config.
Blocking failures raise :class:`StepFailed` (CLI exit code 1) naming each rule, its count and
sample row ids; every row that broke a row rule is written to ``quarantine.jsonl`` with the rules
it broke. ``validation.json`` lists every rule; GX Data Docs (HTML) are built under
``{report_dir}/gx`` for local report folders. Every row carries an ``id`` (its own, or ``line N``
/ ``row N``), and conversational rows are flattened to their text first, so the same rules apply
to both forms.

great_expectations, pandas, pyarrow, numpy and transformers are imported inside functions:
``llmops --help`` must stay fast, and transformers only loads when a tokenizer is configured.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from llmops_tasks import data, pii
from llmops_tasks.config import ConfigError, field, require
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

# Columns holding text (a string, or a list of {role, content} messages) that the rules check.
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion", "reference", "messages")
# Measurement columns are named ``{column}__{measure}``; the double underscore keeps them apart
# from data columns.
TYPE_SUFFIX = "__type"
PAIR_EQUAL_COLUMN = "chosen_equals_rejected__derived"
ALLOWED_TYPES = ("text", "messages")
MESSAGE_SAMPLE = 5  # row ids named per failed rule in the error message
REPORT_SAMPLE = 100  # row ids kept per rule in validation.json
SEVERITIES = ("block", "warn")

# Rule families: a rule is named ``{column}_{family}`` for per-column rules, else by its family.
# ``severity`` and ``mostly`` settings take a family (all columns) or an exact rule name.
COLUMN_FAMILIES = ("present", "not_null", "is_text", "not_blank", "length", "tokens", "valid_utf8",
                   "no_control_chars")
ROW_FAMILIES = ("no_pii", "id_unique", "no_duplicate_rows", "no_normalized_duplicates",
                "chosen_differs_from_rejected", "prompt_not_in_against", "prompt_not_in_against_normalized")
DATASET_FAMILIES = ("row_count", "prompt_duplication", "length_bias")
FAMILIES = COLUMN_FAMILIES + ROW_FAMILIES + DATASET_FAMILIES
# Statistics that describe rather than condemn: reported, but a run goes on unless told otherwise.
DEFAULT_SEVERITY = {"no_normalized_duplicates": "warn", "prompt_duplication": "warn", "length_bias": "warn"}

# C0 controls except tab, newline and carriage return, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates (JSON \ud800 escapes) cannot be encoded as UTF-8; U+FFFD marks text that was
# already decoded with errors upstream.
_BAD_UTF8 = re.compile("[\ud800-\udfff\ufffd]")
_NON_WORD = re.compile(r"[\W_]+")


def _family_of(rule: str) -> str:
    if rule in FAMILIES:
        return rule
    for family in COLUMN_FAMILIES:
        if rule.endswith("_" + family) and rule[: -len(family) - 1] in TEXT_COLUMNS:
            return family
    return rule


def _share(where: str, value: Any) -> float:
    """A value from 0 to 1 (YAML gives a number, ``--set`` gives text)."""
    try:
        share = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        share = -1.0
    require(0.0 <= share <= 1.0, f"{where}: expected a share from 0 to 1, got {value!r}")
    return share


def _check_rule_keys(setting: str, mapping: dict[str, Any]) -> None:
    for key in mapping:
        require(
            _family_of(str(key)) in FAMILIES,
            f"{setting}: unknown rule {key!r}; use a rule family ({', '.join(FAMILIES)}) "
            f"or an exact rule name such as prompt_not_blank",
        )


@dataclasses.dataclass
class ValidateConfig:
    """Settings of the ``validate`` step."""

    dataset: str = field("", help="data set to check: path or URI of a .jsonl or .parquet file (required)")
    kind: Literal["preference", "sft", "eval"] = field(
        "preference", help="kind of data set; decides the required columns and rules"
    )
    report_dir: str = field("", help="folder for validation.json, quarantine.jsonl and Data Docs "
                                     "(default: the run's validate step folder)")
    against: str = field("", help="data set whose prompts must not appear here (e.g. the eval split): "
                                  "contamination check, exact and normalized; empty = no check")
    min_rows: int = field(1, help="fewest rows the data set may have")
    max_rows: int = field(0, help="most rows the data set may have; 0 = no limit")
    min_chars: int = field(1, help="fewest characters a text field may have (message lists: their joined content)")
    max_chars: int = field(20000, help="most characters a text field may have (message lists: their joined content)")
    tokenizer: str = field("", help="tokenizer folder or name for token lengths (AutoTokenizer); "
                                    "empty = whitespace-separated words")
    min_tokens: int = field(0, help="fewest tokens a text field may have; 0 = no lower bound")
    max_tokens: int = field(0, help="most tokens a text field may have; 0 = no token rule")
    check_duplicates: bool = field(True, help="fail on rows repeating an earlier row's prompt and response text")
    pii_kinds: list[str] = field(default_factory=lambda: list(pii.KINDS),
                                 help=f"kinds of personal data and secrets to look for ({', '.join(pii.KINDS)}); "
                                      "empty = no PII rule")
    max_prompt_duplication: float = field(
        0.5, help="largest share of rows whose prompt repeats an earlier row's (0 to 1)")
    max_chosen_longer_share: float = field(
        0.95, help="length bias limit: largest share of pairs whose chosen answer is longer than the rejected one")
    severity: dict[str, str] = field(
        default_factory=dict,
        help="block | warn per rule family or exact rule name, e.g. {no_pii: warn}; "
             f"defaults: block, except {', '.join(f'{k}={v}' for k, v in DEFAULT_SEVERITY.items())}")
    mostly: dict[str, float] = field(
        default_factory=dict,
        help="share of rows (0 to 1) that must pass a row rule, per family or exact rule name; default 1.0")
    chunk_rows: int = field(50_000, help="rows read and checked at a time; bounds memory for large data sets")
    gx_batch_rows: int = field(
        250_000, help="rows per Great Expectations batch: the measurements of consecutive chunks (whole chunks) "
                      "are checked together, as each GX run has a fixed cost (about 0.4 s)")
    data_docs: bool = field(True, help="build Great Expectations Data Docs (HTML) under {report_dir}/gx")

    def __post_init__(self) -> None:
        require(
            bool(self.dataset and str(self.dataset).strip()),
            "dataset: required; give the path or URI of a .jsonl or .parquet file (--dataset PATH)",
        )
        require(self.kind in data.KINDS, f"kind: expected one of {list(data.KINDS)}, got {self.kind!r}")
        require(self.min_rows >= 0, f"min_rows: expected 0 or more, got {self.min_rows}")
        require(self.max_rows >= 0, f"max_rows: expected 0 (no limit) or more, got {self.max_rows}")
        require(
            self.max_rows == 0 or self.max_rows >= self.min_rows,
            f"max_rows ({self.max_rows}) must be 0 (no limit) or at least min_rows ({self.min_rows})",
        )
        require(self.min_chars >= 0, f"min_chars: expected 0 or more, got {self.min_chars}")
        require(
            self.max_chars >= max(self.min_chars, 1),
            f"max_chars: expected at least min_chars ({self.min_chars}) and 1, got {self.max_chars}",
        )
        require(self.min_tokens >= 0, f"min_tokens: expected 0 or more, got {self.min_tokens}")
        require(
            self.max_tokens == 0 or self.max_tokens >= self.min_tokens,
            f"max_tokens: expected 0 (no limit) or at least min_tokens ({self.min_tokens}), got {self.max_tokens}",
        )
        unknown = sorted(set(self.pii_kinds) - set(pii.KINDS))
        require(not unknown, f"pii_kinds: unknown kind(s) {unknown}; known kinds are {list(pii.KINDS)}")
        for name in ("max_prompt_duplication", "max_chosen_longer_share"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{name}: expected a share from 0 to 1, got {value}")
        _check_rule_keys("severity", self.severity)
        for key, value in self.severity.items():
            require(value in SEVERITIES, f"severity.{key}: expected one of {list(SEVERITIES)}, got {value!r}")
        _check_rule_keys("mostly", self.mostly)
        self.mostly = {key: _share(f"mostly.{key}", value) for key, value in self.mostly.items()}
        require(self.chunk_rows >= 1, f"chunk_rows: expected 1 or more, got {self.chunk_rows}")
        require(self.gx_batch_rows >= 1, f"gx_batch_rows: expected 1 or more, got {self.gx_batch_rows}")

    def severity_of(self, rule: str) -> str:
        family = _family_of(rule)
        return self.severity.get(rule) or self.severity.get(family) or DEFAULT_SEVERITY.get(family, "block")

    def mostly_of(self, rule: str) -> float:
        value = self.mostly.get(rule, self.mostly.get(_family_of(rule), 1.0))
        return float(value)


# --- turning records into text ----------------------------------------------------------------


def _message_text(messages: list) -> str | None:
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
        text = _message_text(list(value))
        if text is not None:  # an empty conversation is a message list with no text: not_blank fires
            return text, "messages"
        return _printable(value), "list (not a list of role/content messages)"
    if isinstance(value, float) and value != value:  # NaN from Parquet/pandas is a null
        return None, None
    return _printable(value), type(value).__name__


def _printable(value: Any) -> str:
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


def checked_columns(kind: str, columns: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional text) columns for a kind; SFT data may carry ``messages`` instead."""
    required = data.REQUIRED_COLUMNS[kind]
    if kind == "sft" and "messages" in columns and not set(required) & columns:
        required = ("messages",)
    optional = tuple(c for c in TEXT_COLUMNS if c in columns and c not in required)
    return required, optional


def normalize(text: str) -> str:
    """The form two texts share when they differ only in case, spacing, punctuation or Unicode form."""
    if not text.isascii():  # NFKC leaves ASCII as it is; skipping it halves the cost on most text
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub(" ", text.casefold()).strip()


def token_counter(tokenizer: str) -> Callable[[list[str]], list[int]]:
    """Token counts for a batch of texts: the configured tokenizer's, else whitespace words."""
    if not tokenizer:
        return lambda texts: [len(t.split()) for t in texts]
    try:
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as exc:  # a missing folder or hub name raises one of many types
        raise ConfigError(f"tokenizer: cannot load {tokenizer!r} ({type(exc).__name__}: {exc})") from exc

    def count(texts: list[str]) -> list[int]:
        safe = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
        return [len(ids) for ids in loaded(safe, add_special_tokens=False)["input_ids"]]

    return count


# --- column-wise measurement ---------------------------------------------------------------------
#
# A chunk's text columns are measured a column at a time: pyarrow.compute (RE2) for lengths,
# blanks, control characters and the PII pre-scan, numpy on the UTF-8 bytes for word counts and
# the normalized form of ASCII text, and 64-bit keys from pandas' vectorized hash for repeats.
# Python runs only on the rows that need it (PII candidates, non-ASCII text for NFKC, texts
# holding lone surrogates). Each measure equals its per-row definition (``len``, ``not t.strip()``,
# :data:`_CONTROL`, :func:`normalize`, :func:`pii.kinds_in`, ``len(t.split())``);
# tests/test_validate.py checks them against each other on awkward text.

# The characters Python's str.split() and str.strip() treat as whitespace (str.isspace()).
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_RE2_NOT_BLANK = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
_RE2_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x{7f}-\x{9f}]"
_ASCII_CONTROL = bytes([*range(9), 11, 12, *range(14, 32), 127])
_SURROGATE = re.compile("[\ud800-\udfff]")
# normalize() of an ASCII text, on its bytes: letters lowered, digits kept, the rest a separator.
_ASCII_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
# str.split() on bytes: ASCII whitespace (the rest of WHITESPACE is multi-byte, found by RE2).
_SPACE_BYTES = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_RE2_WIDE_SPACE = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE if ord(c) > 127) + "]"
_NULL_KEY = 0x9E3779B97F4A7C15  # the key of a missing text (hashing None would equal the text "None")
_KEY_MIX = 0x100000001B3


def text_keys(texts) -> Any:
    """64-bit keys of texts or UTF-8 bytes (None: a key of its own), the same in every chunk and run."""
    import numpy as np
    import pandas as pd

    values = np.asarray(texts, dtype=object)
    missing = np.equal(values, None)
    if missing.any():
        values = values.copy()
        values[missing] = ""
    keys = pd.util.hash_array(values, categorize=False) if len(values) else np.empty(0, np.uint64)
    keys[missing] = _NULL_KEY
    return keys


def flags_where(values, valid) -> Any:
    """A pandas nullable boolean array: ``values`` where ``valid``, NA elsewhere. GX checks it
    column-wise (an object column of True/False/None costs it a Python call per value)."""
    import numpy as np
    import pandas as pd

    return pd.arrays.BooleanArray(np.asarray(values, dtype=bool), ~np.asarray(valid, dtype=bool))


def combine_keys(*columns) -> Any:
    """One key per row from the keys of several columns (order matters)."""
    import numpy as np

    combined = columns[0].copy()
    for keys in columns[1:]:
        combined = (combined * np.uint64(_KEY_MIX)) ^ keys
    return combined


def _utf8(values) -> tuple[Any, Any]:
    """(UTF-8 bytes, row bounds) of a pyarrow string array: row ``i`` is ``bytes[bounds[i]:bounds[i + 1]]``
    (a null row may hold bytes too: callers mask it)."""
    import numpy as np

    _, offsets, raw = values.buffers()
    n = len(values)
    bounds = np.frombuffer(offsets, dtype=np.int32)[values.offset:values.offset + n + 1].astype(np.int64)
    low, high = int(bounds[0]), int(bounds[-1])
    content = np.frombuffer(raw, dtype=np.uint8)[low:high] if raw is not None else np.empty(0, dtype=np.uint8)
    return content, bounds - low


def _byte_table(chars: bytes) -> Any:
    import numpy as np

    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    return table


def _rows_with(values, table) -> Any:
    """Per row, whether any of its bytes is marked in ``table`` (256 booleans)."""
    import numpy as np

    content, bounds = _utf8(values)
    found = np.zeros(len(values), dtype=bool)
    hits = np.flatnonzero(table[content])
    if len(hits):
        found[np.unique(np.searchsorted(bounds, hits, side="right") - 1)] = True
    return found


def _ascii_words(values, table) -> Any:
    """Per row, the runs of bytes that ``table`` (256 bytes) keeps; the bytes it maps to a space separate
    them. Offsets are shared with ``values``, so row ``i`` of the result belongs to row ``i``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    validity, offsets, raw = values.buffers()
    mapped = np.frombuffer(table, dtype=np.uint8)[np.frombuffer(raw, dtype=np.uint8)] if raw is not None else b""
    folded = pa.StringArray.from_buffers(len(values), offsets, pa.py_buffer(mapped), validity, values.null_count,
                                         values.offset)
    return pc.ascii_split_whitespace(folded)


def _word_starts(word, bounds) -> Any:
    """Positions of the bytes that open a word: a word byte first in its row or after a non-word byte."""
    import numpy as np

    opens = word.copy()
    opens[1:] &= ~word[:-1]
    first = bounds[:-1][bounds[1:] > bounds[:-1]]
    opens[first] = word[first]
    return np.flatnonzero(opens)


def _joined_words(values, table) -> Any:
    """Per row (ASCII text): the runs of bytes ``table`` keeps, joined by one space: ``" ".join(words)``
    for the words of :func:`_ascii_words`, computed on the bytes of the whole column at once."""
    import numpy as np
    import pyarrow as pa

    content, bounds = _utf8(values)
    mapped = np.frombuffer(table, dtype=np.uint8)[content]
    word = mapped != 32
    keep = word.copy()
    # Every word but the first of its row keeps the separator byte just before it (mapped to a space).
    starts = _word_starts(word, bounds)
    later = np.ones(len(starts), dtype=bool)
    first = np.searchsorted(starts, bounds[:-1])  # each row's first word, where it has one
    has_word = first < len(starts)
    has_word[has_word] = starts[first[has_word]] < bounds[1:][has_word]
    later[first[has_word]] = False
    keep[starts[later] - 1] = True
    # Bytes kept per row: its word bytes, and one separator per word after the first.
    separators = np.flatnonzero(~word)
    words = np.searchsorted(starts, bounds[1:]) - np.searchsorted(starts, bounds[:-1])
    kept = (np.diff(bounds) - (np.searchsorted(separators, bounds[1:]) - np.searchsorted(separators, bounds[:-1]))
            + np.maximum(words - 1, 0))
    new_bounds = np.concatenate([[0], np.cumsum(kept)]).astype(np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(new_bounds), pa.py_buffer(mapped[keep]))


class KeySet:
    """The distinct keys seen so far, sorted: membership for a whole chunk at a time."""

    def __init__(self) -> None:
        import numpy as np

        self.keys = np.empty(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, keys) -> Any:
        import numpy as np

        if not len(self.keys):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def add(self, keys) -> Any:
        """Add ``keys``; True where a key was already here or earlier in ``keys`` (a repeat)."""
        import numpy as np

        unique, first = np.unique(keys, return_index=True)
        repeat = np.ones(len(keys), dtype=bool)
        repeat[first] = False
        repeat |= self.contains(keys)
        new = unique[~self.contains(unique)]
        if len(new):
            merged = np.concatenate([self.keys, new])
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self.keys = merged
        return repeat


class TextColumn:
    """One text column of a chunk: flattened texts (a pyarrow string array) and their types.

    ``kinds`` per row: ``text``, ``messages``, a wrong type's name, or None (missing). Texts Arrow
    cannot hold (lone surrogates, from JSON escapes) are null in ``values`` and kept in ``odd``.
    """

    def __init__(self, values, kinds, odd: dict[int, str]) -> None:
        import numpy as np
        import pyarrow.compute as pc

        self.values = values
        self.kinds = kinds
        self.present = np.not_equal(kinds, None)  # False where missing
        self.odd = odd
        self._texts = None
        self._ascii = pc.fill_null(pc.string_is_ascii(values), True)
        # All ASCII (the common case): byte-level checks replace the Unicode-aware ones.
        self.all_ascii = pc.all(self._ascii).as_py() is not False

    @classmethod
    def of(cls, chunk: data.Chunk, column: str) -> TextColumn:
        import numpy as np
        import pyarrow as pa

        n = len(chunk)
        array = chunk.column(column)
        if chunk.table is not None and (array is None or pa.types.is_null(array.type)):
            return cls(pa.nulls(n, pa.string()), np.full(n, None, dtype=object), {})
        if array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            kinds = np.full(n, None, dtype=object)
            kinds[array.is_valid().to_numpy(zero_copy_only=False)] = "text"
            return cls(array.cast(pa.string()), kinds, {})
        # Anything else (message lists, wrong types) is flattened row by row from the exact JSON values.
        pairs = [flatten_text(record.get(column)) for record in chunk.records]
        texts = [t for t, _ in pairs]
        odd = {i: t for i, t in enumerate(texts) if t is not None and _SURROGATE.search(t)}
        for i in odd:
            texts[i] = None
        kinds = np.empty(n, dtype=object)
        kinds[:] = [k for _, k in pairs]
        return cls(pa.array(texts, type=pa.string()), kinds, odd)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def texts(self) -> Any:
        """The texts as a numpy object array (None where missing), odd ones included."""
        if self._texts is None:
            texts = self.values.to_numpy(zero_copy_only=False)
            if self.odd:
                texts = texts.copy()
                for i, text in self.odd.items():
                    texts[i] = text
            self._texts = texts
        return self._texts

    def _flags(self, flags, odd_rule: Callable[[str], bool]) -> Any:
        """A boolean compute result as a nullable boolean array (NA where the text is missing)."""
        import numpy as np
        import pyarrow.compute as pc

        values = np.array(pc.fill_null(flags, False).to_numpy(zero_copy_only=False), dtype=bool)
        for i, text in self.odd.items():
            values[i] = odd_rule(text)
        return flags_where(values, self.present)

    def chars(self) -> Any:
        """Characters per text as float64 (NaN where missing)."""
        import pyarrow.compute as pc

        chars = pc.utf8_length(self.values).to_numpy(zero_copy_only=False).astype("float64")
        for i, text in self.odd.items():
            chars[i] = len(text)
        return chars

    def blank(self) -> Any:
        import pyarrow.compute as pc

        return self._flags(pc.invert(pc.match_substring_regex(self.values, _RE2_NOT_BLANK)),
                           lambda t: not t.strip())

    def control_chars(self) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.all_ascii:
            flags = pa.array(_rows_with(self.values, _byte_table(_ASCII_CONTROL)))
        else:
            flags = pc.match_substring_regex(self.values, _RE2_CONTROL)
        return self._flags(flags, lambda t: _CONTROL.search(t) is not None)

    def valid_utf8(self) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.all_ascii:  # U+FFFD is not ASCII
            flags = pa.array(np.ones(len(self), dtype=bool))
        else:
            flags = pc.invert(pc.match_substring_regex(self.values, "\\x{fffd}"))
        return self._flags(flags, lambda t: _BAD_UTF8.search(t) is None)

    def pii(self, kinds: list[str] | None) -> dict[int, list[str]]:
        """``{row: kinds found}`` for the rows holding a hit."""
        found = pii.kinds_in_texts(self.values, kinds)
        for i, text in self.odd.items():
            hit = pii.kinds_in(text, kinds)
            if hit:
                found[i] = hit
        return found

    def keys(self) -> Any:
        """:func:`text_keys` of each text."""
        texts = self.texts
        if self.odd:
            texts = texts.copy()
            for i, text in self.odd.items():
                texts[i] = text.encode("utf-8", "surrogatepass")
        return text_keys(texts)

    def normalized_keys(self) -> Any:
        """:func:`text_keys` of :func:`normalize` of each text: ASCII texts folded column-wise."""
        import numpy as np

        keys = np.array(_joined_words(self.values, _ASCII_FOLD).to_numpy(zero_copy_only=False), dtype=object)
        keys[~self.present] = None
        texts = self.texts
        other = np.flatnonzero(self.present & ~self._ascii.to_numpy(zero_copy_only=False)).tolist()
        for i in other + list(self.odd):  # NFKC, casefold and Unicode word characters: row by row
            keys[i] = normalize(texts[i]).encode("utf-8", "surrogatepass")
        return text_keys(keys)

    def word_counts(self) -> Any:
        """``len(text.split())`` per row (0 where missing), counted on the UTF-8 bytes."""
        import numpy as np
        import pyarrow.compute as pc

        content, bounds = _utf8(self.values)
        starts = _word_starts(~_byte_table(_SPACE_BYTES)[content], bounds)
        counts = np.searchsorted(starts, bounds[1:]) - np.searchsorted(starts, bounds[:-1])
        counts[~self.present] = 0
        texts = self.texts
        wide = [] if self.all_ascii else np.flatnonzero(pc.fill_null(
            pc.match_substring_regex(self.values, _RE2_WIDE_SPACE), False).to_numpy(zero_copy_only=False)).tolist()
        for i in wide + list(self.odd):
            counts[i] = len(texts[i].split())
        return counts


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
        blank = pc.fill_null(pc.invert(pc.match_substring_regex(text, _RE2_NOT_BLANK)), True)
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
            id_label: str, offset: int):
    """One row per record: its id, position, and what each rule needs to know about it."""
    import numpy as np
    import pandas as pd

    if isinstance(chunk, list):
        chunk = data.Chunk.from_records(chunk)
    n = len(chunk)
    ids, id_values = row_ids(chunk, id_label)
    frame: dict[str, Any] = {"id": pd.Series(ids, dtype=object), "row": pd.Series(np.arange(offset, offset + n))}
    columns = {column: TextColumn.of(chunk, column) for column in text_columns}
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
        prompt = columns["prompt"]
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
    seen.row_count += n
    return pd.DataFrame(frame)


# --- the suite -------------------------------------------------------------------------------


def build_suite(config: ValidateConfig, text_columns: tuple[str, ...], frame_columns: set[str],
                name: str = "llmops"):
    """The Expectation Suite over the measurement table; each expectation's ``meta.rule`` is its rule."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rules: list[Any] = []

    def add(rule: str, expectation: Any) -> None:
        expectation.meta = {"rule": rule, "severity": config.severity_of(rule), "mostly": config.mostly_of(rule)}
        rules.append(expectation)

    for column in text_columns:
        add(f"{column}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=column + TYPE_SUFFIX))
        add(f"{column}_is_text",
            gxe.ExpectColumnValuesToBeInSet(column=column + TYPE_SUFFIX, value_set=list(ALLOWED_TYPES)))
        add(f"{column}_not_blank", gxe.ExpectColumnValuesToBeInSet(column=column + "__blank", value_set=[False]))
        add(f"{column}_length", gxe.ExpectColumnValuesToBeBetween(
            column=column + "__chars", min_value=config.min_chars, max_value=config.max_chars))
        if config.max_tokens or config.min_tokens:
            add(f"{column}_tokens", gxe.ExpectColumnValuesToBeBetween(
                column=column + "__tokens", min_value=config.min_tokens, max_value=config.max_tokens or None))
        add(f"{column}_valid_utf8", gxe.ExpectColumnValuesToBeInSet(column=column + "__valid_utf8", value_set=[True]))
        add(f"{column}_no_control_chars",
            gxe.ExpectColumnValuesToBeInSet(column=column + "__control_chars", value_set=[False]))
    checks = (
        ("no_pii", "pii__found", None),
        ("id_unique", "id__repeats", [False]),
        ("no_duplicate_rows", "row__duplicate", [False]),
        ("no_normalized_duplicates", "row__normalized_duplicate", [False]),
        ("chosen_differs_from_rejected", PAIR_EQUAL_COLUMN, [False]),
        ("prompt_not_in_against", "prompt__in_against", [False]),
        ("prompt_not_in_against_normalized", "prompt__in_against_normalized", [False]),
    )
    for rule, column, allowed in checks:
        if column not in frame_columns:
            continue
        if allowed is None:
            add(rule, gxe.ExpectColumnValuesToBeNull(column=column))
        else:
            # GX has no "row differs from earlier rows" expectation across batches: the measured
            # boolean column must be all False.
            add(rule, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=allowed))
    return gx.ExpectationSuite(name=name, expectations=rules)


def _context(docs_root: str | None):
    """An ephemeral GX context; with ``docs_root``, its stores and Data Docs site live there."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    stores = FilesystemStoreBackendDefaults(root_directory=docs_root) if docs_root else InMemoryStoreBackendDefaults()
    project = DataContextConfig(
        store_backend_defaults=stores,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=project, mode="ephemeral")


class SuiteRunner:
    """One GX context, suite and validation definition; :meth:`run` checks one chunk."""

    RESULT_FORMAT: ClassVar[dict[str, Any]] = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": ["id", "row"],
        "partial_unexpected_count": MESSAGE_SAMPLE,
        "return_unexpected_index_query": False,
    }

    def __init__(self, suite, docs_root: str | None = None):
        import great_expectations as gx

        self.context = _context(docs_root)
        batch = (
            self.context.data_sources.add_pandas("llmops")
            .add_dataframe_asset("dataset")
            .add_batch_definition_whole_dataframe("chunk")
        )
        suite = self.context.suites.add(suite)
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name="validate", data=batch, suite=suite))

    def run(self, frame):
        return self.definition.run(batch_parameters={"dataframe": frame}, result_format=self.RESULT_FORMAT)

    def build_docs(self) -> str | None:
        self.context.build_data_docs()
        urls = self.context.get_docs_sites_urls()
        url = urls[0]["site_url"] if urls else None
        return url.removeprefix("file://") if url else None


def _exception_message(info: Any) -> str | None:
    """GX reports an expectation that crashed either flat or keyed by metric; keep the message only."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for value in info.values():
        if isinstance(value, dict) and (value.get("raised_exception") or value.get("exception_message")):
            return value.get("exception_message") or "expectation raised an exception"
    return None


def _short(value: Any, limit: int = 120) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value


class Tally:
    """Rule outcomes added up over the chunks, and the rows each rule flagged in the current one."""

    def __init__(self) -> None:
        self.rules: dict[str, dict[str, Any]] = {}

    def add(self, validation: Any) -> dict[int, list[str]]:
        flagged: dict[int, list[str]] = {}
        for outcome in validation.results:
            config = outcome.expectation_config
            meta = config.meta or {}
            rule = meta.get("rule", config.type)
            result = outcome.result or {}
            entry = self.rules.setdefault(rule, {
                "rule": rule,
                "expectation": config.type,
                "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)},
                "severity": meta.get("severity", "block"),
                "mostly": meta.get("mostly", 1.0),
                "checked_rows": 0,
                "unexpected_count": 0,
                "sample_ids": [],
                "sample_values": [],
            })
            error = _exception_message(outcome.exception_info)
            if error and "error" not in entry:
                entry["error"] = error
            entry["checked_rows"] += int(result.get("element_count") or 0) - int(result.get("missing_count") or 0)
            entry["unexpected_count"] += int(result.get("unexpected_count") or 0)
            column = config.kwargs.get("column")
            for item in result.get("unexpected_index_list") or []:
                if not isinstance(item, dict):
                    continue
                flagged.setdefault(int(item["row"]), []).append(rule)
                if len(entry["sample_ids"]) < REPORT_SAMPLE:
                    entry["sample_ids"].append(str(item["id"]))
                if len(entry["sample_values"]) < MESSAGE_SAMPLE and column in item:
                    entry["sample_values"].append(_short(_plain(item[column])))
        return flagged

    def finish(self, order: list[str]) -> list[dict[str, Any]]:
        for entry in self.rules.values():
            checked, bad = entry["checked_rows"], entry["unexpected_count"]
            entry["unexpected_percent"] = round(100.0 * bad / checked, 4) if checked else 0.0
            entry["success"] = "error" not in entry and bad <= (1.0 - entry["mostly"]) * checked + 1e-9
        known = [self.rules[r] for r in order if r in self.rules]
        return known + [e for r, e in self.rules.items() if r not in order]


def _plain(value: Any) -> Any:
    """numpy scalars and pandas NA as JSON-ready Python values."""
    if hasattr(value, "item"):
        return value.item()
    return None if value is not None and str(value) in ("<NA>", "nan") else value


def describe_failure(rule: dict[str, Any]) -> str:
    """``chosen_differs_from_rejected (3 rows: a, b, c)``, or what was observed for data set rules."""
    name = rule["rule"]
    if rule.get("error"):
        return f"{name} (could not be checked: {rule['error']})"
    if "observed" in rule:
        return f"{name} ({rule['observed']})"
    count = rule["unexpected_count"]
    ids = rule.get("sample_ids", [])[:MESSAGE_SAMPLE]
    more = ", ..." if count > len(ids) else ""
    noun = "row" if count == 1 else "rows"
    allowed = f", more than {100 * (1 - rule['mostly']):g}% allowed" if rule.get("mostly", 1.0) < 1.0 else ""
    return f"{name} ({count} {noun}{allowed}: {', '.join(ids)}{more})" if ids else f"{name} ({count} {noun}{allowed})"


# --- load errors -----------------------------------------------------------------------------

_LOAD_RULES = (
    ("file not found", "file_exists"),
    ("unsupported file type", "file_type"),
    ("not valid UTF-8", "utf8"),
    ("not valid JSON", "json_lines"),
    ("expected an object", "json_objects"),
    ("Parquet", "parquet_readable"),
)


def load_rule(message: str) -> str:
    return next((rule for needle, rule in _LOAD_RULES if needle in message), "readable")


def read_chunks(uri: str, rows: int):
    """:class:`data.Chunk` objects (column-wise where Arrow reads the file exactly), or a
    :class:`data.DataError`; a reader's own crash is reported the same way."""
    try:
        yield from data.iter_table_chunks(uri, rows)
    except data.DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise data.DataError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})") from exc


# --- the step --------------------------------------------------------------------------------


def _hash(uri: str) -> str | None:
    try:
        return data.content_hash(uri)
    except (OSError, ValueError):
        return None


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _read_against(config: ValidateConfig, seen: Seen) -> int:
    """Keys of the ``against`` prompts (exact and normalized); returns its row count."""
    count = 0
    for chunk in read_chunks(config.against, config.chunk_rows):
        prompt = TextColumn.of(chunk, "prompt")
        present = prompt.present
        seen.against_exact.add(prompt.keys()[present])
        seen.against_normalized.add(prompt.normalized_keys()[present])
        count += len(chunk)
    return count


class Quarantine:
    """``quarantine.jsonl``: every row that broke a row rule, with the rules; written to a temporary
    name and renamed at the end, so a failed run never leaves half a file behind."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self.rows = 0
        self.handle = None

    def add(self, record: dict[str, Any], rid: str, rules: list[str], blocking: set[str]) -> None:
        if self.handle is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.handle = open(self.tmp, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 (closed in close())
        clean = {k: v for k, v in record.items() if not k.startswith("_")}
        line = {"row": rid, "line": record.get("_line"), "rules": rules,
                "blocking": any(r in blocking for r in rules), "record": clean}
        self.handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.rows += 1

    def close(self, keep: bool) -> str | None:
        if self.handle is not None:
            self.handle.close()
        if keep and self.rows:
            os.replace(self.tmp, self.path)
            return self.path
        for stale in (self.tmp, self.path):
            if os.path.exists(stale):
                os.remove(stale)
        return None


def _dataset_rules(config: ValidateConfig, seen: Seen, required: tuple[str, ...], columns: set[str],
                   first_columns: set[str]) -> list[dict[str, Any]]:
    """Rules on the whole data set, computed from the streamed totals."""
    rules = []

    def add(rule: str, success: bool, observed: str, value: Any, **extra: Any) -> None:
        rules.append({"rule": rule, "expectation": "data set statistic", "severity": config.severity_of(rule),
                      "success": success, "observed": observed, "observed_value": value, **extra})

    rows = seen.row_count
    within = rows >= config.min_rows and (not config.max_rows or rows <= config.max_rows)
    expected = f"at least {config.min_rows}" if not config.max_rows else f"{config.min_rows} to {config.max_rows}"
    add("row_count", within, f"{rows} rows, expected {expected}", rows)
    for column in required:
        if column in first_columns:
            add(f"{column}_present", True, f"column {column!r} is present", True)
        elif column in columns:
            add(f"{column}_present", False, f"column {column!r} is missing from the first {config.chunk_rows} rows",
                False)
        else:
            add(f"{column}_present", False, f"column {column!r} is missing", False)
    if seen.prompts:
        prompt_rows = len(seen.prompts) + seen.repeated_prompts
        share = round(seen.repeated_prompts / prompt_rows, 6) if prompt_rows else 0.0
        add("prompt_duplication", share <= config.max_prompt_duplication,
            f"{share:.1%} of rows repeat an earlier prompt, limit {config.max_prompt_duplication:.1%}", share,
            unique_prompts=len(seen.prompts))
    if seen.pairs:
        share = round(seen.chosen_longer / seen.pairs, 6)
        add("length_bias", share <= config.max_chosen_longer_share,
            f"chosen is longer than rejected in {share:.1%} of pairs, limit {config.max_chosen_longer_share:.1%}",
            share, pairs=seen.pairs, same_length_share=round(seen.same_length / seen.pairs, 6),
            chosen_mean_chars=round(seen.chosen_chars / seen.pairs, 3),
            rejected_mean_chars=round(seen.rejected_chars / seen.pairs, 3))
    return rules


def _fail_to_load(config: ValidateConfig, exc: data.DataError, uri: str, report_path: str, settings: dict,
                  rows: int, role: str = "dataset") -> StepFailed:
    text = str(exc)
    detail = text[len(uri) + 2:] if text.startswith(f"{uri}: ") else text
    rule = load_rule(text) if role == "dataset" else f"against_{load_rule(text)}"
    entry = {"rule": rule, "expectation": "load", "severity": "block", "success": False, "error": detail}
    result = {
        "valid": False, "rows": rows, "dataset": config.dataset, "dataset_hash": _hash(config.dataset),
        "report": report_path, "failed_rules": [rule], "warnings": [], "quarantine": None,
    }
    data.write_json(report_path, {**result, "kind": config.kind, "settings": settings, "rules": [entry]})
    return StepFailed(f"{uri}: rule {rule} failed: {detail}", result)


def _check_batch(pending: list[tuple[data.Chunk, Any]], runner: SuiteRunner, tally: Tally,
                 quarantine: Quarantine | None, blocking: set[str]) -> None:
    """One GX run over the measurements of ``pending`` chunks; the rows it flags go to quarantine."""
    import pandas as pd

    frames = [frame for _, frame in pending]
    batch = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    for name in batch.columns:  # few distinct values: categories spare GX a Python call per value
        if name.endswith(TYPE_SUFFIX) or name == "pii__found":
            batch[name] = batch[name].astype("category")
    flagged = tally.add(runner.run(batch))
    if quarantine is None or not flagged:
        return
    first = int(batch["row"].iat[0])
    starts = [int(frame["row"].iat[0]) for frame in frames]
    ids = batch["id"].to_numpy()
    for position in sorted(flagged):
        index = bisect.bisect_right(starts, position) - 1
        record = pending[index][0].record(position - starts[index])
        quarantine.add(record, ids[position - first], flagged[position], blocking)


def run(config: ValidateConfig) -> dict[str, Any]:
    """Validate ``config.dataset`` chunk by chunk; write the reports; raise StepFailed when it is invalid."""
    uri = config.dataset
    report_dir = (config.report_dir or RunContext.from_env().step_dir("validate")).rstrip("/")
    report_path = f"{report_dir}/validation.json"
    settings = dataclasses.asdict(config)
    settings.pop("report_dir")
    docs_root = f"{report_dir}/gx" if config.data_docs and _is_local(report_dir) else None
    if docs_root and os.path.isdir(docs_root):
        shutil.rmtree(docs_root)  # a retry must not show the previous attempt's results as well
    count_tokens = token_counter(config.tokenizer) if (config.max_tokens or config.min_tokens) else None

    seen = Seen()
    against_rows = None
    if config.against:
        try:
            against_rows = _read_against(config, seen)
        except data.DataError as exc:
            raise _fail_to_load(config, exc, config.against, report_path, settings, 0, role="against") from None

    quarantine = Quarantine(f"{report_dir}/quarantine.jsonl") if _is_local(report_dir) else None
    tally = Tally()
    runner = None
    order: list[str] = []
    columns: set[str] = set()
    first_columns: set[str] = set()
    required: tuple[str, ...] = data.REQUIRED_COLUMNS[config.kind]
    text_columns: tuple[str, ...] = ()
    id_label = "row" if uri.lower().endswith((".parquet", ".pq")) else "line"
    forms: set[str] = set()
    offset = 0
    blocking: set[str] = set()
    pending: list[tuple[data.Chunk, Any]] = []  # measured chunks (with their tables) not yet checked by GX
    try:
        for chunk in read_chunks(uri, config.chunk_rows):
            chunk_columns = chunk.columns
            columns |= chunk_columns
            if runner is None:
                # The first chunk decides the columns checked; a later row lacking one fails not_null.
                first_columns = set(chunk_columns)
                required, optional = checked_columns(config.kind, first_columns)
                text_columns = tuple(c for c in required + optional if c in first_columns)
            key_columns = required if all(c in first_columns for c in required) else ()
            frame = measure(chunk, text_columns, key_columns, config, seen, count_tokens or (lambda t: []),
                            id_label, offset)
            if runner is None:
                suite = build_suite(config, text_columns, set(frame.columns))
                order = [expectation.meta["rule"] for expectation in suite.expectations]
                blocking = {e.meta["rule"] for e in suite.expectations if e.meta["severity"] == "block"}
                runner = SuiteRunner(suite, docs_root)
            for column in text_columns:
                forms.update(t for t in frame[column + TYPE_SUFFIX].dropna().unique() if t in ALLOWED_TYPES)
            chunk.compact()
            pending.append((chunk, frame))
            offset += len(chunk)
            if sum(len(c) for c, _ in pending) >= config.gx_batch_rows:
                _check_batch(pending, runner, tally, quarantine, blocking)
                pending = []
        if pending:
            _check_batch(pending, runner, tally, quarantine, blocking)
    except data.DataError as exc:
        if quarantine is not None:
            quarantine.close(keep=False)
        raise _fail_to_load(config, exc, uri, report_path, settings, offset) from None
    except BaseException:
        if quarantine is not None:
            quarantine.close(keep=False)
        raise

    rules = _dataset_rules(config, seen, required, columns, first_columns) + tally.finish(order)
    skipped = [
        {"rule": f"{column}_{check}", "reason": f"column {column!r} is missing"}
        for column in required if column not in first_columns
        for check in ("not_null", "is_text", "not_blank", "length")
    ]
    if config.check_duplicates and skipped:
        skipped.append({"rule": "no_duplicate_rows", "reason": "a required column is missing"})
    failed = [r for r in rules if not r["success"] and r["severity"] == "block"]
    warned = [r for r in rules if not r["success"] and r["severity"] == "warn"]
    quarantine_path = quarantine.close(keep=True) if quarantine is not None else None
    docs = runner.build_docs() if runner is not None and docs_root else None

    import great_expectations as gx

    result = {
        "valid": not failed,
        "rows": seen.row_count,
        "dataset": uri,
        "dataset_hash": _hash(uri),
        "report": report_path,
        "failed_rules": [r["rule"] for r in failed],
        "warnings": [r["rule"] for r in warned],
        "quarantine": quarantine_path,
        "quarantined_rows": quarantine.rows if quarantine is not None else 0,
        "data_docs": docs,
    }
    report = {
        **result,
        "kind": config.kind,
        "settings": settings,
        "columns": sorted(columns),
        "required_columns": list(required),
        "text_forms": sorted(forms),
        "against": {"dataset": config.against, "rows": against_rows} if config.against else None,
        "pii_hits": dict(sorted(seen.pii_hits.items())),
        "rules": rules,
        "skipped_rules": skipped,
        "great_expectations": gx.__version__,
    }
    data.write_json(report_path, report)
    if failed:
        summary = "; ".join(describe_failure(r) for r in failed)
        where = f"; failing rows in {quarantine_path}" if quarantine_path else ""
        raise StepFailed(f"{uri}: {len(failed)} rule(s) failed: {summary}{where}", result)
    return result


def command():
    from llmops_tasks.cli import Command

    return Command(ValidateConfig, run, "check a data set against its Great Expectations suite")
