"""Exploratory report of a data set: ``eda.json`` for machines and one self-contained ``eda.html``.

What a reviewer wants to see before a retraining run: how long prompts and answers are (in
characters and in tokens of the configured tokenizer), whether rows or prompts repeat, whether
``chosen`` answers are systematically longer than ``rejected`` ones (a length bias a DPO model
learns happily), which phrasings dominate, which personal data or secrets slipped in, where the
rows come from, and what changed since the previous snapshot's report. The HTML page has no
external scripts, styles or fonts (it is opened from an artifact store, often offline); charts
are inline SVG drawn here, and every data string is HTML-escaped.

Statistics are gathered incrementally over chunks, so a million rows profile in bounded memory:
lengths go into compact integer arrays (4 bytes a value, exact percentiles), repeats are found
with 64-bit keys, and the bigram counter is pruned to its most frequent entries when it grows
past :data:`BIGRAM_CAP` (its top entries are then approximate). Each chunk is measured a column
at a time (pyarrow.compute and numpy, the same measures as ``validate``: see
:class:`llmops_tasks.text.columns.TextColumn`); no pandas or plotting library is needed.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from llmops_tasks.core import data, io, tracking
from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.html import esc, page
from llmops_tasks.core.settings import RunContext
from llmops_tasks.text import pii
from llmops_tasks.text.columns import KeySet, TextColumn, ascii_words, combine_keys, text_keys, token_counter
from llmops_tasks.text.records import TEXT_COLUMNS, checked_columns, prompt_cell

log = logging.getLogger(__name__)
# EdaConfig.previous: find the previous snapshot's report through MLflow.
PREVIOUS_AUTO = "auto"
_WORD = re.compile(r"[\w']+")
BIGRAM_CAP = 500_000  # distinct bigrams kept before pruning to the most frequent half


@dataclasses.dataclass
class EdaConfig:
    """Settings of the ``eda`` step."""

    dataset: str = field("", path="input",
                         help="data set to describe: path or URI of a .jsonl or .parquet file (required)")
    kind: Literal["preference", "sft", "eval"] = field("preference", help="kind of data set")
    out: str = field("", path="output", help="folder for eda.json and eda.html (default: the run's eda step folder)")
    bins: int = field(20, help="bars per length histogram")
    top_k: int = field(20, help="how many prompt bigrams, duplicated prompts and sources to list")
    tokenizer: str = field("", path="model", help="tokenizer folder or name for token lengths (AutoTokenizer); "
                                                 "empty = whitespace-separated words")
    previous: str = field("", path="input", keywords=(PREVIOUS_AUTO,),
                          help="eda.json of the previous data set snapshot, to report what changed; "
                               f"{PREVIOUS_AUTO!r} = the report of this DAG's most recent finished eda run "
                               "from an earlier DAG run, found through MLflow (none on the first run); "
                               "empty = no comparison")
    chunk_rows: int = field(50_000, help="rows read at a time; bounds memory for large data sets")

    def __post_init__(self) -> None:
        require(
            bool(self.dataset and str(self.dataset).strip()),
            "dataset: required; give the path or URI of a .jsonl or .parquet file (--dataset PATH)",
        )
        require(self.kind in data.KINDS, f"kind: expected one of {list(data.KINDS)}, got {self.kind!r}")
        require(1 <= self.bins <= 200, f"bins: expected 1 to 200, got {self.bins}")
        require(1 <= self.top_k <= 1000, f"top_k: expected 1 to 1000, got {self.top_k}")
        require(self.chunk_rows >= 1, f"chunk_rows: expected 1 or more, got {self.chunk_rows}")


# --- statistics ------------------------------------------------------------------------------


def percentile(ordered, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on an already sorted sequence."""
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _integers(values) -> Any:
    return np.asarray(values, dtype=np.int64)


def summary(values) -> dict[str, float] | None:
    if not len(values):
        return None
    ordered = np.sort(_integers(values))
    return {
        "min": int(ordered[0]),
        "mean": round(int(ordered.sum()) / len(ordered), 3),
        "p50": round(percentile(ordered, 0.50), 3),
        "p95": round(percentile(ordered, 0.95), 3),
        "max": int(ordered[-1]),
    }


def histogram(values, bins: int) -> dict[str, list[int]]:
    """Integer-width bins from min to max: ``edges[i] <= v < edges[i + 1]``."""
    if not len(values):
        return {"edges": [], "counts": []}
    values = _integers(values)
    low, high = int(values.min()), int(values.max())
    width = max(1, math.ceil((high - low + 1) / bins))
    count = max(1, math.ceil((high - low + 1) / width))
    counts = np.bincount(np.minimum((values - low) // width, count - 1), minlength=count)
    return {"edges": [low + i * width for i in range(count + 1)], "counts": counts.tolist()}


class ColumnProfile:
    """Lengths and repeats of one text column, added to chunk by chunk."""

    def __init__(self) -> None:
        self.chars = array("I")
        self.tokens = array("I")
        self.missing = 0
        self.blank = 0
        self.keys = KeySet()
        self.repeated = 0

    def add(self, text: TextColumn, tokens) -> None:
        """One chunk's texts of this column and their token counts (one per row)."""
        present = text.present
        self.missing += len(text) - int(present.sum())
        self.blank += int(text.blank().to_numpy(dtype=bool, na_value=False).sum())
        self.chars.frombytes(text.chars()[present].astype(np.uint32).tobytes())
        self.tokens.frombytes(tokens[present].astype(np.uint32).tobytes())
        self.repeated += int(self.keys.add(text.keys()[present]).sum())

    def stats(self, bins: int) -> dict[str, Any]:
        return {
            "count": len(self.chars),
            "missing": self.missing,
            "blank": self.blank,
            "unique": len(self.keys),
            "chars": summary(self.chars),
            "tokens": summary(self.tokens),
            "char_histogram": histogram(self.chars, bins),
            "token_histogram": histogram(self.tokens, bins),
        }


# _WORD on lowered ASCII text, byte by byte: letters lowered; digits, "_" and "'" kept; the rest separates.
_ASCII_WORD = bytes(c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 or c in b"_'" else 32
                    for c in range(256))


def _bigram_counts(prompts) -> tuple[Any, Any]:
    """The distinct bigrams (``"a b"``) of the lowered words of a pyarrow array of ASCII prompts and
    how often each occurs, in order of first occurrence (``pyarrow.compute.value_counts`` of every
    bigram). Pairs are counted as word ids; only the distinct ones become strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    words = ascii_words(prompts, _ASCII_WORD)
    flat = pc.list_flatten(words)
    keep = pc.not_equal(flat, "")
    flat, parents = flat.filter(keep), pc.list_parent_indices(words).filter(keep).to_numpy()
    if not len(flat):
        return pa.array([], type=pa.string()), np.empty(0, dtype=np.int64)
    encoded = pc.dictionary_encode(flat)
    vocabulary = encoded.dictionary
    ids = encoded.indices.to_numpy().astype(np.int64)
    pair = np.flatnonzero(parents[1:] == parents[:-1])
    counted = pc.value_counts(pa.array(ids[pair] * len(vocabulary) + ids[pair + 1]))
    codes = counted.field("values").to_numpy()
    grams = pc.binary_join_element_wise(vocabulary.take(pa.array(codes // len(vocabulary))),
                                        vocabulary.take(pa.array(codes % len(vocabulary))), " ")
    return grams, counted.field("counts").to_numpy().astype(np.int64)


class BigramCounter:
    """A :class:`collections.Counter` of bigrams held as Arrow strings and numpy counts.

    Updated a chunk at a time with distinct bigrams in order of first occurrence, and pruned to
    its ``cap // 2`` most frequent entries (ties: the earlier inserted) when it grows past ``cap``:
    what ``Counter.update`` and ``Counter(dict(most_common(cap // 2)))`` do, entry for entry, without
    a Python object per bigram.
    """

    def __init__(self, cap: int | None = None) -> None:
        import pyarrow as pa

        self.cap = cap or BIGRAM_CAP
        self.grams = pa.array([], type=pa.string())
        self.counts = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def update(self, grams, counts) -> None:
        """Add ``counts`` of ``grams`` (distinct strings, in the order a Counter would meet them)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(grams):
            return
        at = pc.fill_null(pc.index_in(grams, value_set=self.grams), -1).to_numpy() if len(self.grams) else \
            np.full(len(grams), -1)
        known = at >= 0
        self.counts[at[known]] += counts[known]
        if not known.all():
            self.grams = pa.concat_arrays([self.grams, grams.filter(pa.array(~known))])
            self.counts = np.concatenate([self.counts, counts[~known]])
        if len(self.counts) > self.cap:
            keep = np.argsort(-self.counts, kind="stable")[: self.cap // 2]
            self.grams, self.counts = self.grams.take(pa.array(keep)), self.counts[keep]

    def top(self, k: int) -> list[tuple[str, int]]:
        """The ``k`` most frequent, ties by bigram: ``heapq.nsmallest(k, items, key=(-count, gram))``."""
        if not len(self.counts):
            return []
        floor = np.partition(self.counts, len(self.counts) - k)[len(self.counts) - k] if len(self.counts) > k else 0
        rows = np.flatnonzero(self.counts >= floor)
        items = zip(self.grams.take(rows).to_pylist(), self.counts[rows].tolist())
        return heapq.nsmallest(k, items, key=lambda item: (-item[1], item[0]))


def _merge_counts(grams, counts, others: Counter[str]) -> tuple[Any, Any]:
    """``grams`` / ``counts`` followed by ``others`` (a Counter, in its insertion order), summed where
    both hold a bigram: one chunk's update of a Counter, as distinct bigrams in order of first occurrence."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not others:
        return grams, counts
    extra = pa.array(list(others), type=pa.string())
    extra_counts = np.fromiter(others.values(), dtype=np.int64, count=len(others))
    at = pc.fill_null(pc.index_in(extra, value_set=grams), -1).to_numpy() if len(grams) else np.full(len(extra), -1)
    known = at >= 0
    counts = counts.copy()
    counts[at[known]] += extra_counts[known]
    return (pa.concat_arrays([grams, extra.filter(pa.array(~known))]),
            np.concatenate([counts, extra_counts[~known]]))


class Profile:
    """Every statistic of the report, gathered over chunks of records."""

    def __init__(self, kind: str, bins: int = 20, top_k: int = 20, tokenizer: str = "") -> None:
        self.kind, self.bins, self.top_k = kind, bins, top_k
        self.count_tokens = token_counter(tokenizer) if tokenizer else None
        self.tokenizer = tokenizer or "whitespace"
        self.rows = 0
        self.columns: set[str] = set()
        self.content: list[str] | None = None
        self.text_columns: dict[str, ColumnProfile] = {}
        self.row_keys = KeySet()
        self.duplicate_rows = 0
        self.prompt_keys: list[Any] = []  # every prompt's key, chunk by chunk (8 bytes a row)
        self.prompt_seen = KeySet()
        self.repeated_text: dict[int, str] = {}
        self.bigrams = BigramCounter()
        self.pairs = {"pairs": 0, "chosen_chars": 0, "rejected_chars": 0, "chosen_tokens": 0, "rejected_tokens": 0,
                      "chosen_longer": 0, "same_length": 0, "identical": 0}
        self.pair_diffs = array("i")
        self.sources: Counter[str] = Counter()
        self.source_pairs: dict[str, list[int]] = {}
        self.pii_hits: Counter[str] = Counter()
        self.pii_rows = 0

    def add(self, chunk: data.Chunk | list[dict[str, Any]]) -> None:
        if isinstance(chunk, list):
            chunk = data.Chunk.from_records(chunk)
        n = len(chunk)
        self.columns |= chunk.columns
        texts = {c: TextColumn.of(chunk, c) for c in TEXT_COLUMNS if c in self.columns}
        tokens = {}
        for column, text in texts.items():
            present = text.present
            if self.count_tokens is None:
                tokens[column] = text.word_counts()
            else:
                tokens[column] = np.zeros(n, dtype=np.int64)
                tokens[column][present] = self.count_tokens(text.texts[present].tolist())
            self.text_columns.setdefault(column, ColumnProfile()).add(text, tokens[column])
        if self.content is None:
            required, _ = checked_columns(self.kind, self.columns)
            self.content = [c for c in required if c in texts] or list(texts)
        keys = [texts[c].keys() if c in texts else text_keys(np.full(n, None, dtype=object)) for c in self.content]
        if keys:
            self.duplicate_rows += int(self.row_keys.add(combine_keys(*keys)).sum())
        hits: dict[int, set[str]] = {}
        for text in texts.values():
            for i, kinds in text.pii(list(pii.KINDS)).items():
                hits.setdefault(i, set()).update(kinds)
        for kinds in hits.values():
            self.pii_hits.update(kinds)
        self.pii_rows += len(hits)
        if "prompt" in texts:  # prompts by their identity (prompt_cell: a conversation's last turn), as validate
            prompt = texts["prompt"]
            self._add_prompts(prompt if prompt.column_wise else TextColumn.of(chunk, "prompt", prompt_cell))
        if "source" in self.columns:
            sources = self._sources(chunk)
            names, counts = np.unique(sources, return_counts=True)
            self.sources.update(dict(zip(names.tolist(), counts.tolist())))
        else:
            sources = None
        if "chosen" in texts and "rejected" in texts:
            self._add_pairs(texts["chosen"], texts["rejected"], tokens["chosen"], tokens["rejected"], sources)
        self.rows += n

    @staticmethod
    def _sources(chunk: data.Chunk) -> Any:
        """Each row's source as text, ``(missing)`` for none or an empty one."""
        import pyarrow as pa
        import pyarrow.compute as pc

        array = chunk.column("source")
        if chunk.table is not None and (array is None or pa.types.is_null(array.type)):
            return np.full(len(chunk), "(missing)", dtype=object)
        if array is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            filled = pc.if_else(pc.fill_null(pc.equal(array, ""), True), "(missing)", array)
            return filled.to_numpy(zero_copy_only=False)
        sources = np.empty(len(chunk), dtype=object)
        sources[:] = ["(missing)" if r.get("source") in (None, "") else str(r.get("source")) for r in chunk.records]
        return sources

    def _add_prompts(self, prompt: TextColumn) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        present = np.flatnonzero(prompt.present)
        keys = prompt.keys()[present]
        self.prompt_keys.append(keys)
        texts = prompt.texts[present]
        for i in np.flatnonzero(self.prompt_seen.add(keys)).tolist():
            key = int(keys[i])
            if key not in self.repeated_text:
                self.repeated_text[key] = texts[i]
        # Bigrams: ASCII prompts column-wise, the others (Unicode words, lone surrogates) row by row.
        values = prompt.values.take(present)
        ascii_rows = pc.fill_null(pc.string_is_ascii(values), False).to_numpy(zero_copy_only=False)
        grams, counts = _bigram_counts(values.filter(pa.array(ascii_rows)))
        others: Counter[str] = Counter()
        for text in texts[~ascii_rows].tolist():
            words = _WORD.findall(text.lower())
            others.update(f"{a} {b}" for a, b in itertools.pairwise(words))
        self.bigrams.update(*_merge_counts(grams, counts, others))

    def _add_pairs(self, chosen: TextColumn, rejected: TextColumn, chosen_tokens, rejected_tokens, sources) -> None:
        p = self.pairs
        both = chosen.present & rejected.present
        rows = np.flatnonzero(both)
        chosen_texts, rejected_texts = chosen.texts[rows], rejected.texts[rows]
        c = chosen.chars()[rows].astype(np.int64)
        r = rejected.chars()[rows].astype(np.int64)
        p["pairs"] += len(rows)
        p["chosen_chars"] += int(c.sum())
        p["rejected_chars"] += int(r.sum())
        p["chosen_tokens"] += int(chosen_tokens[rows].sum())
        p["rejected_tokens"] += int(rejected_tokens[rows].sum())
        longer = c > r
        p["chosen_longer"] += int(longer.sum())
        p["same_length"] += int((c == r).sum())
        p["identical"] += int((chosen_texts == rejected_texts).sum())
        self.pair_diffs.frombytes((c - r).astype(np.int32).tobytes())
        if sources is not None and len(rows):
            names, inverse = np.unique(sources[rows], return_inverse=True)
            pairs = np.bincount(inverse, minlength=len(names))
            longer_counts = np.bincount(inverse, weights=longer, minlength=len(names))
            for name, count, more in zip(names.tolist(), pairs.tolist(), longer_counts.tolist()):
                entry = self.source_pairs.setdefault(name, [0, 0])
                entry[0] += count
                entry[1] += int(more)

    def report(self) -> dict[str, Any]:
        rows = self.rows
        content = self.content or []
        report: dict[str, Any] = {
            "kind": self.kind,
            "rows": rows,
            "columns": sorted(self.columns),
            "tokenizer": self.tokenizer,
            "text_columns": {c: p.stats(self.bins) for c, p in self.text_columns.items()},
            "duplicates": {
                "compared_columns": content,
                "exact_duplicate_rows": self.duplicate_rows,
                "duplicate_values_per_column": {c: p.repeated for c, p in self.text_columns.items()},
            },
            "pii": {"rows_with_hits": self.pii_rows, "rows_by_kind": dict(sorted(self.pii_hits.items()))},
        }
        if "prompt" in self.text_columns:
            keys = np.concatenate(self.prompt_keys) if self.prompt_keys else np.empty(0, dtype=np.uint64)
            unique, counts = np.unique(keys, return_counts=True)
            total = len(keys)
            repeated = [(self.repeated_text[k], n) for k, n in zip(unique[counts > 1].tolist(),
                                                                     counts[counts > 1].tolist())]
            top = sorted(repeated, key=lambda item: (-item[1], item[0]))[: self.top_k]
            ranked = self.bigrams.top(self.top_k)
            report["prompts"] = {
                "unique": len(unique),
                "duplication_rate": round((total - len(unique)) / total, 6) if total else 0.0,
                "most_repeated": [{"prompt": p, "count": n} for p, n in top],
                "top_bigrams": [{"bigram": gram, "count": n} for gram, n in ranked],
            }

        p = self.pairs
        if "chosen" in self.text_columns and "rejected" in self.text_columns:
            n = p["pairs"]
            report["pairs"] = {
                "pairs": n,
                "chosen_mean_chars": round(p["chosen_chars"] / n, 3) if n else None,
                "rejected_mean_chars": round(p["rejected_chars"] / n, 3) if n else None,
                "chosen_mean_tokens": round(p["chosen_tokens"] / n, 3) if n else None,
                "rejected_mean_tokens": round(p["rejected_tokens"] / n, 3) if n else None,
                "chosen_longer_share": round(p["chosen_longer"] / n, 6) if n else None,
                "same_length_share": round(p["same_length"] / n, 6) if n else None,
                "identical_pairs": p["identical"],
                "char_difference": summary(self.pair_diffs),
                "char_difference_histogram": _signed_histogram(self.pair_diffs, self.bins),
            }
        if self.sources:
            report["sources"] = dict(sorted(self.sources.items(), key=lambda item: (-item[1], item[0])))
            if self.source_pairs:
                report["source_breakdown"] = {
                    s: {"rows": self.sources[s], "pairs": v[0], "chosen_longer_share": round(v[1] / v[0], 6)}
                    for s, v in sorted(self.source_pairs.items(), key=lambda item: (-item[1][0], item[0]))
                }
        return report


def _signed_histogram(values, bins: int) -> dict[str, list[int]]:
    """:func:`histogram` for values that may be negative (chosen minus rejected lengths)."""
    if not len(values):
        return {"edges": [], "counts": []}
    values = _integers(values)
    low = int(values.min())
    shifted = histogram(values - low, bins)
    return {"edges": [e + low for e in shifted["edges"]], "counts": shifted["counts"]}


def describe(records: Iterable[dict[str, Any]], kind: str, bins: int = 20, top_k: int = 20,
             tokenizer: str = "") -> dict[str, Any]:
    """Every statistic of the report for records already in memory, as JSON-ready data."""
    profile = Profile(kind, bins, top_k, tokenizer)
    profile.add(list(records))
    return profile.report()


# Figures compared with the previous snapshot: (label, path into the report).
CHANGE_FIGURES = (
    ("rows", ("rows",)),
    ("exact duplicate rows", ("duplicates", "exact_duplicate_rows")),
    ("prompt duplication rate", ("prompts", "duplication_rate")),
    ("unique prompts", ("prompts", "unique")),
    ("chosen longer share", ("pairs", "chosen_longer_share")),
    ("chosen mean chars", ("pairs", "chosen_mean_chars")),
    ("rejected mean chars", ("pairs", "rejected_mean_chars")),
    ("rows with PII", ("pii", "rows_with_hits")),
)


def _figure(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def compare(current: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """What changed since the previous snapshot: each headline figure, before, after and delta."""
    figures = []
    for label, path in CHANGE_FIGURES:
        before, after = _figure(previous, path), _figure(current, path)
        if before is None and after is None:
            continue
        delta = None if before is None or after is None else round(after - before, 6)
        figures.append({"figure": label, "previous": before, "current": after, "change": delta})
    columns_before, columns_after = set(previous.get("columns", [])), set(current.get("columns", []))
    return {
        "previous_dataset": previous.get("dataset"),
        "previous_dataset_hash": previous.get("dataset_hash"),
        "figures": figures,
        "columns_added": sorted(columns_after - columns_before),
        "columns_removed": sorted(columns_before - columns_after),
    }


# --- HTML ------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2933;max-width:1100px}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d9e2ec}
.muted{color:#627d98;font-size:.9rem;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{border:1px solid #d9e2ec;border-radius:6px;padding:.6rem 1rem;min-width:150px}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d9e2ec;padding:.25rem .6rem;text-align:right;vertical-align:top}
th{background:#f0f4f8}td.text{text-align:left;max-width:640px;word-break:break-word}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
figure{margin:0}figcaption{font-size:.85rem;color:#486581}
svg text{font-size:10px;fill:#334e68}
"""


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return f"{value:,}" if isinstance(value, int) else esc(value)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def histogram_svg(hist: dict[str, list[int]], title: str, width: int = 460, height: int = 180) -> str:
    """Vertical bars, one per bin, with the range and count in each bar's tooltip."""
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        return f'<figure><figcaption>{esc(title)}: no values</figcaption></figure>'
    left, bottom, top = 36, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max(counts) or 1
    bar_w = plot_w / len(counts)
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9fb3c8"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + i * bar_w
        label = f"{edges[i]}–{edges[i + 1] - 1}: {count}"
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{h:.1f}" fill="#3e7cb1"><title>{esc(label)}</title></rect>'
        )
    parts.append(f'<text x="{left}" y="{height - 6}">{edges[0]}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end">{edges[-1] - 1}</text>')
    parts.append("</svg>")
    return f'<figure>{"".join(parts)}<figcaption>{esc(title)}</figcaption></figure>'


def bars_svg(items: list[tuple[str, float]], title: str, width: int = 520, value_format=_number) -> str:
    """Horizontal bars for categories (sources, bigrams, chosen vs rejected)."""
    if not items:
        return f'<figure><figcaption>{esc(title)}: none</figcaption></figure>'
    label_w, row_h = 170, 18
    height = row_h * len(items) + 6
    peak = max(v for _, v in items) or 1
    plot_w = width - label_w - 60
    parts = [
        (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
         f'aria-label="{esc(title)}">')
    ]
    for i, (label, value) in enumerate(items):
        y = 3 + i * row_h
        w = plot_w * value / peak
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{esc(short)}<title>{esc(label)}</title></text>'
        )
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row_h - 5}" fill="#2f8f83"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{esc(value_format(value))}</text>')
    parts.append("</svg>")
    return f'<figure>{"".join(parts)}<figcaption>{esc(title)}</figcaption></figure>'


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, every data string escaped."""
    out: list[str] = []
    add = out.append
    dup = report["duplicates"]
    prompts = report.get("prompts")
    pairs = report.get("pairs")
    add("<h1>Data set report</h1>")
    add(f'<p class="muted">{esc(report.get("dataset", ""))} · kind {esc(report["kind"])} · '
        f'sha256 {esc(str(report.get("dataset_hash") or "")[:16])}</p>')

    cards = [("rows", _number(report["rows"])), ("exact duplicate rows", _number(dup["exact_duplicate_rows"]))]
    if prompts:
        cards.append(("unique prompts", _number(prompts["unique"])))
        cards.append(("prompt duplication", _percent(prompts["duplication_rate"])))
    if pairs:
        cards.append(("chosen longer than rejected", _percent(pairs["chosen_longer_share"])))
    add('<div class="cards">' + "".join(f'<div class="card"><b>{v}</b>{esc(k)}</div>' for k, v in cards) + "</div>")
    add(f'<p class="muted">columns: {esc(", ".join(report["columns"]))}</p>')

    add("<h2>Lengths</h2><table><tr><th>column</th><th>unit</th><th>count</th><th>missing</th><th>blank</th>"
        "<th>min</th><th>mean</th><th>p50</th><th>p95</th><th>max</th></tr>")
    for column, stats in report["text_columns"].items():
        for unit in ("chars", "tokens"):
            s = stats[unit] or {}
            add(f'<tr><td class="text">{esc(column)}</td><td class="text">{unit}</td><td>{_number(stats["count"])}</td>'
                f'<td>{_number(stats["missing"])}</td><td>{_number(stats["blank"])}</td>'
                + "".join(f"<td>{_number(s.get(k))}</td>" for k in ("min", "mean", "p50", "p95", "max")) + "</tr>")
    add('</table><p class="muted">tokens = whitespace-separated words; '
        "message lists are measured on their joined content</p>")
    for column, stats in report["text_columns"].items():
        add('<div class="charts">')
        add(histogram_svg(stats["char_histogram"], f"{column}: characters per row"))
        add(histogram_svg(stats["token_histogram"], f"{column}: tokens per row"))
        add("</div>")

    if pairs and pairs["pairs"]:
        add("<h2>Chosen vs rejected</h2>")
        add('<div class="charts">')
        add(bars_svg([("chosen", pairs["chosen_mean_chars"]), ("rejected", pairs["rejected_mean_chars"])],
                     "mean characters"))
        add(bars_svg([("chosen", pairs["chosen_mean_tokens"]), ("rejected", pairs["rejected_mean_tokens"])],
                     "mean tokens"))
        add("</div>")
        add(f"<p>{_number(pairs['pairs'])} pairs; chosen is longer in {_percent(pairs['chosen_longer_share'])}, "
            f"the same length in {_percent(pairs['same_length_share'])}; "
            f"{_number(pairs['identical_pairs'])} identical pair(s).</p>")
        if pairs.get("char_difference_histogram"):
            add(histogram_svg(pairs["char_difference_histogram"],
                              "chosen minus rejected characters per pair (right of 0: chosen longer)"))

    add("<h2>Duplicates</h2>")
    add(f"<p>{_number(dup['exact_duplicate_rows'])} row(s) repeat an earlier row on "
        f"{esc(', '.join(dup['compared_columns']))}.</p><table><tr><th>column</th><th>repeated values</th></tr>")
    for column, count in dup["duplicate_values_per_column"].items():
        add(f'<tr><td class="text">{esc(column)}</td><td>{_number(count)}</td></tr>')
    add("</table>")

    if prompts:
        add("<h2>Prompts</h2>")
        add(bars_svg([(b["bigram"], b["count"]) for b in prompts["top_bigrams"]], "most frequent word bigrams"))
        if prompts["most_repeated"]:
            add("<table><tr><th>most repeated prompts</th><th>rows</th></tr>")
            for item in prompts["most_repeated"]:
                add(f'<tr><td class="text">{esc(item["prompt"])}</td><td>{_number(item["count"])}</td></tr>')
            add("</table>")

    pii_stats = report.get("pii") or {}
    add("<h2>Personal data and secrets</h2>")
    add(f"<p>{_number(pii_stats.get('rows_with_hits', 0))} row(s) hold at least one hit "
        "(emails, phone numbers, card numbers passing Luhn, IBANs, IP addresses, API keys, private keys, JWTs).</p>")
    add(bars_svg(list((pii_stats.get("rows_by_kind") or {}).items()), "rows with a hit, by kind"))

    if "sources" in report:
        add("<h2>Sources</h2>")
        add(bars_svg(list(report["sources"].items()), "rows per source"))
        breakdown = report.get("source_breakdown")
        if breakdown:
            add("<table><tr><th>source</th><th>rows</th><th>pairs</th><th>chosen longer</th></tr>")
            for source, item in breakdown.items():
                add(f'<tr><td class="text">{esc(source)}</td><td>{_number(item["rows"])}</td>'
                    f'<td>{_number(item["pairs"])}</td><td>{_percent(item["chosen_longer_share"])}</td></tr>')
            add("</table>")

    change = report.get("change")
    if change:
        add("<h2>Change against the previous snapshot</h2>")
        add(f'<p class="muted">previous: {esc(change.get("previous_dataset") or "")} · sha256 '
            f'{esc(str(change.get("previous_dataset_hash") or "")[:16])}</p>')
        add("<table><tr><th>figure</th><th>previous</th><th>current</th><th>change</th></tr>")
        for item in change["figures"]:
            delta = item["change"]
            sign = "+" if isinstance(delta, (int, float)) and delta > 0 else ""
            add(f'<tr><td class="text">{esc(item["figure"])}</td><td>{_number(item["previous"])}</td>'
                f'<td>{_number(item["current"])}</td><td>{sign}{_number(delta)}</td></tr>')
        add("</table>")
        for label in ("columns_added", "columns_removed"):
            if change[label]:
                add(f'<p>{esc(label.replace("_", " "))}: {esc(", ".join(change[label]))}</p>')
    return page(f"EDA – {report.get('dataset', '')}", "\n".join(out), _STYLE)


# --- the step --------------------------------------------------------------------------------


def run(config: EdaConfig) -> dict[str, Any]:
    """The whole step: find the previous snapshot's report (``previous: auto``), describe the data
    set, record the step's MLflow run with both reports (the next run's ``auto`` finds it there)."""
    from llmops_tasks import snapshots

    out = (config.out or RunContext.from_env().step_dir("eda")).rstrip("/")
    previous = config.previous
    if previous == PREVIOUS_AUTO:
        # The comparison is informative: a lookup that finds nothing or fails says why, never fails the step.
        previous = snapshots.previous_eda_report(out)
    with tracking.step_recorder() as recorder:  # MLflow opened on another core while the data is read
        result = write_reports(config, out, previous)
        log.info("EDA report: %s", result["report_html"])
        result["previous"] = previous
        result["mlflow_run_url"] = recorder.record(
            snapshots.EDA_STEP, {"dataset": config.dataset, "kind": config.kind,
                                 snapshots.EDA_REPORT_PARAM: result["report_json"], "previous": previous},
            {"rows": result["rows"]}, [result["report_html"], result["report_json"]])
    return result


def write_reports(config: EdaConfig, out: str, previous_report: str = "") -> dict[str, Any]:
    """Describe ``config.dataset`` chunk by chunk; write ``eda.json`` and ``eda.html`` under ``out``,
    with what changed since ``previous_report`` (an ``eda.json``) when one is given."""
    uri = config.dataset
    previous = None
    if previous_report:
        try:
            previous = data.read_json(previous_report)
        except (OSError, ValueError) as exc:
            raise StepFailed(f"{previous_report}: previous report cannot be read ({type(exc).__name__}: {exc})",
                             {"error": str(exc), "previous": previous_report}) from None
    profile = Profile(config.kind, config.bins, config.top_k, config.tokenizer)
    try:
        for chunk in data.read_chunks(uri, config.chunk_rows):
            profile.add(chunk)
    except data.DataError as exc:
        text = str(exc)
        detail = text[len(uri) + 2 :] if text.startswith(f"{uri}: ") else text
        raise StepFailed(f"{uri}: rule {data.load_rule(text)} failed: {detail}", {"error": text, "dataset": uri}) from None

    report = {"dataset": uri, "dataset_hash": data.content_hash(uri)}
    report.update(profile.report())
    if isinstance(previous, dict):
        report["change"] = compare(report, previous)
    json_path, html_path = f"{out}/eda.json", f"{out}/eda.html"
    data.write_json(json_path, report)
    io.write_text(html_path, render_html(report))
    return {"report_html": html_path, "report_json": json_path, "rows": report["rows"]}


def command():
    from llmops_tasks.core.command import Command

    return Command(EdaConfig, run, "write an EDA report (HTML + JSON) for a data set")
