"""Column-wise text kernels: what each per-row definition (``len``, ``not t.strip()``,
:data:`records.CONTROL`, :func:`records.normalize`, ``len(t.split())``, PII) computes, done a column
of a chunk at a time with pyarrow.compute (RE2) and numpy on the UTF-8 bytes.

Python runs only on the rows that need it (PII candidates, non-ASCII text for NFKC, texts holding
lone surrogates). tests/test_validate.py checks each kernel against its per-row definition on
awkward text. numpy, pandas, pyarrow and transformers are imported inside functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from llmops_tasks.core import data
from llmops_tasks.core.config import ConfigError
from llmops_tasks.text import pii
from llmops_tasks.text.records import BAD_UTF8, CONTROL, flatten_text, normalize

# --- column-wise measurement ---------------------------------------------------------------------
#
# A chunk's text columns are measured a column at a time: pyarrow.compute (RE2) for lengths,
# blanks, control characters and the PII pre-scan, numpy on the UTF-8 bytes for word counts and
# the normalized form of ASCII text, and 64-bit keys from pandas' vectorized hash for repeats.
# Python runs only on the rows that need it (PII candidates, non-ASCII text for NFKC, texts
# holding lone surrogates). Each measure equals its per-row definition (``len``, ``not t.strip()``,
# :data:`CONTROL`, :func:`normalize`, :func:`pii.kinds_in`, ``len(t.split())``);
# tests/test_validate.py checks them against each other on awkward text.

# The characters Python's str.split() and str.strip() treat as whitespace (str.isspace()).
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
RE2_NOT_BLANK = "[^" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
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


def ascii_words(values, table) -> Any:
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
    for the words of :func:`ascii_words`, computed on the bytes of the whole column at once."""
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
        self.column_wise = False  # True when every cell was a string (no flattening applied)
        self._texts = None
        self._keys = None  # keys() and normalized_keys(), computed once: several rules share them
        self._normalized_keys = None
        self._ascii = pc.fill_null(pc.string_is_ascii(values), True)
        # All ASCII (the common case): byte-level checks replace the Unicode-aware ones.
        self.all_ascii = pc.all(self._ascii).as_py() is not False

    @classmethod
    def of(cls, chunk: data.Chunk, column: str,
           flatten: Callable[[Any], tuple[str | None, str | None]] = flatten_text) -> TextColumn:
        """The column's texts; cells that are not strings (message lists, wrong types) go through
        ``flatten`` (:func:`~llmops_tasks.text.records.prompt_cell` for a prompt's identity)."""
        import numpy as np
        import pyarrow as pa

        n = len(chunk)
        array = chunk.column(column)
        if chunk.table is not None and (array is None or pa.types.is_null(array.type)):
            return cls(pa.nulls(n, pa.string()), np.full(n, None, dtype=object), {})
        if array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            kinds = np.full(n, None, dtype=object)
            kinds[array.is_valid().to_numpy(zero_copy_only=False)] = "text"
            column_wise = cls(array.cast(pa.string()), kinds, {})
            column_wise.column_wise = True
            return column_wise
        # Anything else (message lists, wrong types) is flattened row by row from the exact JSON values.
        pairs = [flatten(record.get(column)) for record in chunk.records]
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

        return self._flags(pc.invert(pc.match_substring_regex(self.values, RE2_NOT_BLANK)),
                           lambda t: not t.strip())

    def control_chars(self) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.all_ascii:
            flags = pa.array(_rows_with(self.values, _byte_table(_ASCII_CONTROL)))
        else:
            flags = pc.match_substring_regex(self.values, _RE2_CONTROL)
        return self._flags(flags, lambda t: CONTROL.search(t) is not None)

    def valid_utf8(self) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.all_ascii:  # U+FFFD is not ASCII
            flags = pa.array(np.ones(len(self), dtype=bool))
        else:
            flags = pc.invert(pc.match_substring_regex(self.values, "\\x{fffd}"))
        return self._flags(flags, lambda t: BAD_UTF8.search(t) is None)

    def pii(self, kinds: list[str] | None) -> dict[int, list[str]]:
        """``{row: kinds found}`` for the rows holding a hit."""
        found = pii.kinds_in_texts(self.values, kinds)
        for i, text in self.odd.items():
            hit = pii.kinds_in(text, kinds)
            if hit:
                found[i] = hit
        return found

    def keys(self) -> Any:
        """:func:`text_keys` of each text (computed once per column; read-only: index it, do not
        write into it)."""
        if self._keys is None:
            texts = self.texts
            if self.odd:
                texts = texts.copy()
                for i, text in self.odd.items():
                    texts[i] = text.encode("utf-8", "surrogatepass")
            self._keys = text_keys(texts)
            self._keys.flags.writeable = False
        return self._keys

    def normalized_keys(self) -> Any:
        """:func:`text_keys` of :func:`normalize` of each text: ASCII texts folded column-wise
        (computed once per column; read-only)."""
        if self._normalized_keys is None:
            self._normalized_keys = self._normalize_and_key()
            self._normalized_keys.flags.writeable = False
        return self._normalized_keys

    def _normalize_and_key(self) -> Any:
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

