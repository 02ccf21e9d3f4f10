"""Exploratory report of a data set: ``eda.json`` for machines and one self-contained ``eda.html``.

What a reviewer wants to see before a retraining run: how long prompts and answers are, whether
rows or prompts repeat, whether ``chosen`` answers are systematically longer than ``rejected``
ones (a length bias a DPO model learns happily), which phrasings dominate, where the rows come
from. The HTML page has no external scripts, styles or fonts (it is opened from an artifact store,
often offline); charts are inline SVG drawn here, and every data string is HTML-escaped.
Plain Python only: no pandas or plotting library is needed for a few statistics.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections import Counter
from typing import Any, Literal

from llmops_tasks import data
from llmops_tasks.config import field, require
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext
from llmops_tasks.validate import TEXT_COLUMNS, checked_columns, flatten_text, load_rule

_WORD = re.compile(r"[\w']+")


@dataclasses.dataclass
class EdaConfig:
    """Settings of the ``eda`` step."""

    dataset: str = field("", help="data set to describe: path or URI of a .jsonl or .parquet file (required)")
    kind: Literal["preference", "sft", "eval"] = field("preference", help="kind of data set")
    out: str = field("", help="folder for eda.json and eda.html (default: the run's eda step folder)")
    bins: int = field(20, help="bars per length histogram")
    top_k: int = field(20, help="how many prompt bigrams, duplicated prompts and sources to list")

    def __post_init__(self) -> None:
        require(
            bool(self.dataset and str(self.dataset).strip()),
            "dataset: required; give the path or URI of a .jsonl or .parquet file (--dataset PATH)",
        )
        require(self.kind in data.KINDS, f"kind: expected one of {list(data.KINDS)}, got {self.kind!r}")
        require(1 <= self.bins <= 200, f"bins: expected 1 to 200, got {self.bins}")
        require(1 <= self.top_k <= 1000, f"top_k: expected 1 to 1000, got {self.top_k}")


# --- statistics ------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) on an already sorted list."""
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def summary(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": round(percentile(ordered, 0.50), 3),
        "p95": round(percentile(ordered, 0.95), 3),
        "max": ordered[-1],
    }


def histogram(values: list[int], bins: int) -> dict[str, list[int]]:
    """Integer-width bins from min to max: ``edges[i] <= v < edges[i + 1]``."""
    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    count = max(1, math.ceil((high - low + 1) / width))
    counts = [0] * count
    for value in values:
        counts[min((value - low) // width, count - 1)] += 1
    return {"edges": [low + i * width for i in range(count + 1)], "counts": counts}


def column_stats(texts: list[str | None], bins: int) -> dict[str, Any]:
    present = [t for t in texts if t is not None]
    chars = [len(t) for t in present]
    tokens = [len(t.split()) for t in present]
    return {
        "count": len(present),
        "missing": len(texts) - len(present),
        "blank": sum(1 for t in present if not t.strip()),
        "unique": len(set(present)),
        "chars": summary(chars),
        "tokens": summary(tokens),
        "char_histogram": histogram(chars, bins),
        "token_histogram": histogram(tokens, bins),
    }


def bigrams(prompts: list[str], top_k: int) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    for prompt in prompts:
        words = _WORD.findall(prompt.lower())
        counts.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return [{"bigram": gram, "count": n} for gram, n in ranked]


def describe(records: list[dict[str, Any]], kind: str, bins: int = 20, top_k: int = 20) -> dict[str, Any]:
    """Every statistic of the report, as JSON-ready data."""
    rows = len(records)
    columns = sorted({key for record in records for key in record if not key.startswith("_")})
    required, _ = checked_columns(kind, set(columns))
    text_columns = [c for c in TEXT_COLUMNS if c in columns]
    texts = {c: [flatten_text(r.get(c))[0] for r in records] for c in text_columns}

    content = [c for c in required if c in texts] or text_columns
    keys = [tuple(texts[c][i] for c in content) for i in range(rows)]
    per_column = {}
    for c in text_columns:
        present = [t for t in texts[c] if t is not None]
        per_column[c] = len(present) - len(set(present))
    report: dict[str, Any] = {
        "kind": kind,
        "rows": rows,
        "columns": columns,
        "text_columns": {c: column_stats(texts[c], bins) for c in text_columns},
        "duplicates": {
            "compared_columns": content,
            "exact_duplicate_rows": rows - len(set(keys)),
            "duplicate_values_per_column": per_column,
        },
    }

    if "prompt" in texts:
        prompts = [p for p in texts["prompt"] if p is not None]
        repeated = Counter(prompts)
        top = sorted(((p, n) for p, n in repeated.items() if n > 1), key=lambda item: (-item[1], item[0]))[:top_k]
        report["prompts"] = {
            "unique": len(repeated),
            "duplication_rate": round((len(prompts) - len(repeated)) / len(prompts), 6) if prompts else 0.0,
            "most_repeated": [{"prompt": p, "count": n} for p, n in top],
            "top_bigrams": bigrams(prompts, top_k),
        }

    if "chosen" in texts and "rejected" in texts:
        pairs = [(c, r) for c, r in zip(texts["chosen"], texts["rejected"]) if c is not None and r is not None]
        n = len(pairs)
        report["pairs"] = {
            "pairs": n,
            "chosen_mean_chars": round(sum(len(c) for c, _ in pairs) / n, 3) if n else None,
            "rejected_mean_chars": round(sum(len(r) for _, r in pairs) / n, 3) if n else None,
            "chosen_mean_tokens": round(sum(len(c.split()) for c, _ in pairs) / n, 3) if n else None,
            "rejected_mean_tokens": round(sum(len(r.split()) for _, r in pairs) / n, 3) if n else None,
            "chosen_longer_share": round(sum(len(c) > len(r) for c, r in pairs) / n, 6) if n else None,
            "same_length_share": round(sum(len(c) == len(r) for c, r in pairs) / n, 6) if n else None,
            "identical_pairs": sum(c == r for c, r in pairs),
        }

    if "source" in columns:
        sources = Counter(
            "(missing)" if r.get("source") in (None, "") else str(r.get("source")) for r in records
        )
        report["sources"] = dict(sorted(sources.items(), key=lambda item: (-item[1], item[0])))
    return report


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


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(title)}">'
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
    add("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    add(f"<title>EDA – {esc(report.get('dataset', ''))}</title><style>{_STYLE}</style></head><body>")
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

    if "sources" in report:
        add("<h2>Sources</h2>")
        add(bars_svg(list(report["sources"].items()), "rows per source"))
    add("</body></html>\n")
    return "\n".join(out)


# --- the step --------------------------------------------------------------------------------


def run(config: EdaConfig) -> dict[str, Any]:
    """Describe ``config.dataset``; write ``eda.json`` and ``eda.html`` under ``config.out``."""
    uri = config.dataset
    out = (config.out or RunContext.from_env().step_dir("eda")).rstrip("/")
    try:
        records = data.read_records(uri)
    except data.DataError as exc:
        text = str(exc)
        detail = text[len(uri) + 2 :] if text.startswith(f"{uri}: ") else text
        raise StepFailed(f"{uri}: rule {load_rule(text)} failed: {detail}", {"error": text, "dataset": uri}) from None

    report = {"dataset": uri, "dataset_hash": data.content_hash(uri)}
    report.update(describe(records, config.kind, config.bins, config.top_k))
    json_path, html_path = f"{out}/eda.json", f"{out}/eda.html"
    data.write_json(json_path, report)
    _write_text(html_path, render_html(report))
    return {"report_html": html_path, "report_json": json_path, "rows": report["rows"]}


def _write_text(uri: str, text: str) -> None:
    import os

    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    fs.mv(tmp, path)


def command():
    from llmops_tasks.cli import Command

    return Command(EdaConfig, run, "write an EDA report (HTML + JSON) for a data set")
