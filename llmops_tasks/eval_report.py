"""The evaluation report: one self-contained HTML page a reviewer can open from MLflow or a run folder.

It shows every metric of the candidate and the champion with its 95% bootstrap interval, the
interval of the difference against zero, the gate's rules when a decision is given, and the eval
examples where the candidate gained and lost most, side by side. It says how BLEU and ROUGE
tokenized the text, and names any metric that could not measure (its 0 means nothing). No
script, stylesheet, font or image is fetched: the charts are inline SVG, and every piece of text
from the data is HTML-escaped.
"""

from __future__ import annotations

import math
from typing import Any

from llmops_tasks.core import data, io
from llmops_tasks.core.html import esc, page

METRIC_LABELS = {
    "bleu": "BLEU",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "preference_accuracy": "Preference accuracy",
    "reward_margin": "Reward margin",
    "perplexity": "Perplexity (lower is better)",
    "gen_len": "Generated tokens",
}
CANDIDATE_COLOR = "#2b6cb0"
CHAMPION_COLOR = "#a0aec0"
EXAMPLES_EACH = 5

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1a202c;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border:1px solid #e2e8f0;padding:.35rem .5rem;
vertical-align:top;text-align:left}th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#276749;font-weight:600}.fail{color:#c53030;font-weight:600}
.banner{padding:.75rem 1rem;border-radius:4px;margin:1rem 0}.banner.pass{background:#f0fff4}
.banner.fail{background:#fff5f5}.muted{color:#718096}.charts{display:flex;flex-wrap:wrap;gap:1rem}
.answer{white-space:pre-wrap}
"""


def _num(value: Any, digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if math.isnan(value) or math.isinf(value):
        return esc(value)
    return f"{value:.{digits}f}"


def _metrics_in(metrics: dict[str, Any]) -> list[str]:
    present = set(metrics.get("candidate") or {}) & set(metrics.get("champion") or {})
    return [m for m in METRIC_LABELS if m in present]


def metric_chart(metric: str, metrics: dict[str, Any]) -> str:
    """Two horizontal bars (candidate, champion) with their interval whiskers, on the metric's own scale."""
    width, bar_h, left, right = 360, 18, 90, 20
    candidate, champion = metrics["candidate"][metric], metrics["champion"][metric]
    own = metrics.get("intervals") or {}
    bounds = {"candidate": (own.get("candidate") or {}).get(metric), "champion": (own.get("champion") or {}).get(metric)}
    values = [candidate, champion] + [v for pair in bounds.values() if pair for v in pair]
    low = min(0.0, *values)
    high = max(values) if max(values) > low else low + 1.0
    span = high - low

    def x(value: float) -> float:
        return left + (value - low) / span * (width - left - right)

    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="86" role="img" '
              f'aria-label="{esc(METRIC_LABELS[metric])}">'),
             f'<text x="0" y="12" font-size="12" font-weight="600">{esc(METRIC_LABELS[metric])}</text>']
    for row, (name, value, color) in enumerate((("candidate", candidate, CANDIDATE_COLOR),
                                                ("champion", champion, CHAMPION_COLOR))):
        y = 22 + row * (bar_h + 8)
        x0, x1 = sorted((x(0.0 if low <= 0 <= high else low), x(value)))
        parts.append(f'<text x="0" y="{y + 13}" font-size="11">{name}</text>')
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h}" fill="{color}">'
                     f'<title>{name} {_num(value)}</title></rect>')
        interval = bounds[name]
        if interval:
            lo, hi, mid = x(interval[0]), x(interval[1]), y + bar_h / 2
            parts.append(f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="#1a202c" stroke-width="1.5"/>'
                         f'<line x1="{lo:.1f}" y1="{mid - 5}" x2="{lo:.1f}" y2="{mid + 5}" stroke="#1a202c"/>'
                         f'<line x1="{hi:.1f}" y1="{mid - 5}" x2="{hi:.1f}" y2="{mid + 5}" stroke="#1a202c"/>')
        parts.append(f'<text x="{width - right + 2}" y="{y + 13}" font-size="10" text-anchor="end">'
                     f'{_num(value, 3)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def delta_chart(metrics: dict[str, Any]) -> str:
    """One row per metric: the interval of candidate - champion against zero, each row on its own scale."""
    ci = metrics.get("ci") or {}
    rows = [m for m in _metrics_in(metrics) if m in ci]
    if not rows:
        return '<p class="muted">No intervals (bootstrap_samples=0).</p>'
    width, left, right, row_h = 640, 200, 150, 26
    lower_better = set(metrics.get("lower_is_better") or [])
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_h * len(rows) + 20}" '
              'role="img" aria-label="difference candidate minus champion with 95% intervals">')]
    zero = left + (width - left - right) / 2
    parts.append(f'<line x1="{zero}" y1="0" x2="{zero}" y2="{row_h * len(rows)}" stroke="#718096" '
                 'stroke-dasharray="3,3"/>')
    for i, metric in enumerate(rows):
        lo, hi = ci[metric]
        point = (metrics.get("delta") or {}).get(metric, (lo + hi) / 2)
        reach = max(abs(lo), abs(hi), abs(point)) or 1.0
        half = (width - left - right) / 2 * 0.9

        def x(value: float, reach: float = reach, half: float = half) -> float:
            return zero + value / reach * half

        better = (lo > 0) if metric not in lower_better else (hi < 0)
        worse = (hi < 0) if metric not in lower_better else (lo > 0)
        color = "#276749" if better else "#c53030" if worse else "#4a5568"
        y = i * row_h + row_h / 2
        parts.append(f'<text x="0" y="{y + 4}" font-size="11">{esc(METRIC_LABELS[metric])}</text>'
                     f'<line x1="{x(lo):.1f}" y1="{y}" x2="{x(hi):.1f}" y2="{y}" stroke="{color}" stroke-width="3">'
                     f'<title>[{_num(lo)}, {_num(hi)}]</title></line>'
                     f'<circle cx="{x(point):.1f}" cy="{y}" r="4" fill="{color}"/>'
                     f'<text x="{width - right + 8}" y="{y + 4}" font-size="10">{_num(point, 3)} '
                     f'[{_num(lo, 3)}, {_num(hi, 3)}]</text>')
    parts.append(f'<text x="{zero}" y="{row_h * len(rows) + 14}" font-size="10" text-anchor="middle">0</text></svg>')
    return "".join(parts)


def _metrics_table(metrics: dict[str, Any]) -> str:
    own = metrics.get("intervals") or {}
    ci = metrics.get("ci") or {}

    def interval(pair) -> str:
        return f"[{_num(pair[0])}, {_num(pair[1])}]" if pair else "–"

    unmeasurable = metrics.get("unmeasurable") or {}
    lines = [("<table><tr><th>metric</th><th>candidate</th><th>95% interval</th><th>champion</th>"
              "<th>95% interval</th><th>difference</th><th>95% interval of the difference</th></tr>")]
    for metric in _metrics_in(metrics):
        if metric in unmeasurable:
            lines.append(f'<tr><td>{esc(METRIC_LABELS[metric])}</td><td colspan="6" class="fail">not measured: '
                         f"{esc(_why(unmeasurable, metric))}</td></tr>")
            continue
        lines.append(
            f"<tr><td>{esc(METRIC_LABELS[metric])}</td>"
            f'<td class="num">{_num(metrics["candidate"][metric])}</td>'
            f'<td class="num">{interval((own.get("candidate") or {}).get(metric))}</td>'
            f'<td class="num">{_num(metrics["champion"][metric])}</td>'
            f'<td class="num">{interval((own.get("champion") or {}).get(metric))}</td>'
            f'<td class="num">{_num((metrics.get("delta") or {}).get(metric))}</td>'
            f'<td class="num">{interval(ci.get(metric))}</td></tr>'
        )
    lines.append("</table>")
    return "".join(lines)


def _why(unmeasurable: dict[str, Any] | list, metric: str) -> str:
    return str(unmeasurable[metric]) if isinstance(unmeasurable, dict) else "recorded as unmeasurable"


def _tokenization_section(metrics: dict[str, Any]) -> str:
    """How BLEU and ROUGE split the text (it decides what the numbers mean), and what could not be measured."""
    tokens = metrics.get("tokenization") or {}
    text = (f'<p class="muted">Tokenization: {esc(tokens["summary"])}.</p>' if tokens.get("summary")
            else '<p class="muted">Tokenization: not recorded (sacrebleu 13a and rouge_score defaults).</p>')
    unmeasurable = metrics.get("unmeasurable") or {}
    if unmeasurable:
        items = "".join(f"<li>{esc(METRIC_LABELS.get(m, m))}: {esc(_why(unmeasurable, m))}</li>" for m in unmeasurable)
        text += (f'<div class="banner fail">Not measured (a score of 0 here measures nothing; the gate fails any '
                 f"rule on these metrics):<ul>{items}</ul></div>")
    return text


def _decision_section(decision: dict[str, Any] | None) -> str:
    if not decision:
        return ""
    verdict = "pass" if decision.get("passed") else "fail"
    rows = "".join(
        f'<tr><td>{esc(r.get("rule"))}</td><td>{esc(r.get("metric"))}</td><td class="num">{_num(r.get("value"))}</td>'
        f'<td class="num">{_num(r.get("threshold"))}</td><td class="{"pass" if r.get("passed") else "fail"}">'
        f'{"pass" if r.get("passed") else "fail"}</td><td>{esc(r.get("detail"))}</td></tr>'
        for r in decision.get("rules") or []
    )
    return (f'<h2>Gate</h2><div class="banner {verdict}">{"PASSED" if verdict == "pass" else "REJECTED"}: '
            f'{esc(decision.get("reason"))}</div><table><tr><th>rule</th><th>metric</th><th>value</th>'
            f"<th>threshold</th><th>result</th><th>detail</th></tr>{rows}</table>")


def pick_examples(candidate_rows: list[dict], champion_rows: list[dict], each: int = EXAMPLES_EACH):
    """(best, worst): the examples with the largest and smallest per-example ROUGE-L gain."""
    scored = [
        (float(c.get("rougeL", 0.0)) - float(h.get("rougeL", 0.0)), i)
        for i, (c, h) in enumerate(zip(candidate_rows, champion_rows))
    ]
    ranked = sorted(scored, key=lambda pair: (-pair[0], pair[1]))
    best = ranked[:each]
    worst = sorted(ranked[each:], key=lambda pair: (pair[0], pair[1]))[:each] if len(ranked) > each else []
    return best, worst


def _examples_table(title: str, picked, candidate_rows: list[dict], champion_rows: list[dict]) -> str:
    if not picked:
        return ""
    rows = []
    for gain, i in picked:
        cand, champ = candidate_rows[i], champion_rows[i]
        rows.append(
            f'<tr><td>{esc(cand.get("id", i + 1))}</td><td class="answer">{esc(cand.get("prompt"))}</td>'
            f'<td class="answer">{esc(cand.get("reference"))}</td>'
            f'<td class="answer">{esc(cand.get("prediction"))}<br><span class="muted">ROUGE-L '
            f'{_num(cand.get("rougeL"), 3)}</span></td>'
            f'<td class="answer">{esc(champ.get("prediction"))}<br><span class="muted">ROUGE-L '
            f'{_num(champ.get("rougeL"), 3)}</span></td><td class="num">{_num(gain, 3)}</td></tr>'
        )
    return (f"<h2>{esc(title)}</h2><table><tr><th>#</th><th>prompt</th><th>reference</th><th>candidate</th>"
            f"<th>champion</th><th>ROUGE-L gain</th></tr>{''.join(rows)}</table>")


def render(
    metrics: dict[str, Any],
    candidate_rows: list[dict[str, Any]],
    champion_rows: list[dict[str, Any]],
    decision: dict[str, Any] | None = None,
) -> str:
    """The whole page as a string."""
    label = metrics.get("champion_label") or "champion"
    best, worst = pick_examples(candidate_rows, champion_rows)
    level = round(float(metrics.get("ci_level", 0.95)) * 100)
    charts = "".join(metric_chart(m, metrics) for m in _metrics_in(metrics))
    return page(f"Evaluation: candidate vs {label}", (
        f"<h1>Evaluation: candidate vs {esc(label)}</h1>"
        f'<p class="muted">{esc(metrics.get("n"))} eval examples from {esc(metrics.get("eval_data"))} '
        f'(sha256 {esc(str(metrics.get("eval_hash", ""))[:12])}); candidate {esc(metrics.get("candidate_model"))}; '
        f'champion {esc(metrics.get("champion_model"))}; {level}% paired bootstrap intervals over '
        f'{esc(metrics.get("bootstrap_samples"))} resamples; reward: {esc(metrics.get("reward", ""))}.</p>'
        f"{_tokenization_section(metrics)}"
        f"{_decision_section(decision)}"
        f"<h2>Metrics</h2>{_metrics_table(metrics)}"
        f'<h2>Candidate and champion</h2><div class="charts">{charts}</div>'
        f"<h2>Difference candidate - champion ({level}% interval)</h2>{delta_chart(metrics)}"
        f"{_examples_table('Where the candidate gained most', best, candidate_rows, champion_rows)}"
        f"{_examples_table('Where the candidate lost most', worst, candidate_rows, champion_rows)}"
    ), STYLE)


def write(
    path: str,
    metrics: dict[str, Any],
    candidate_rows: list[dict[str, Any]],
    champion_rows: list[dict[str, Any]],
    decision: dict[str, Any] | None = None,
) -> str:
    """Render and write atomically (a reader never sees half a page); returns ``path``."""
    return io.write_text(path, render(metrics, candidate_rows, champion_rows, decision))


def write_from_files(path: str, metrics: dict[str, Any], decision: dict[str, Any] | None = None) -> str:
    """The report from a metrics.json's recorded prediction files (used by the gate, which adds its decision)."""
    files = metrics.get("predictions") or {}
    candidate = data.read_records(files["candidate"]) if files.get("candidate") else []
    champion = data.read_records(files["champion"]) if files.get("champion") else []
    return write(path, metrics, candidate, champion, decision)
