"""One self-contained HTML page per window and model version: the decision, every signal against
its threshold, each charted signal over the last windows (from the monitoring run's MLflow metric
history), the input and output distributions against the reference, the new words, and the
examples behind each fired signal (PII and secrets masked). Inline SVG, no script, every value
escaped (:mod:`llmops_tasks.core.html`)."""

from __future__ import annotations

from typing import Any

from llmops_tasks.core.html import esc, page

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px;vertical-align:top}th{background:#f3f3f3}.fired{background:#fde2e1}.held{background:#fff4d6}
.ok{color:#1a7f37}.bad{color:#b42318;font-weight:600}.muted{color:#777}.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:12px;color:#555}code{background:#f5f5f5;padding:0 3px}
"""


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def line_svg(points: list[tuple[int, float]], threshold: float | None, title: str,
             width: int = 340, height: int = 150) -> str:
    """A signal over the windows (x: window index) with its threshold as a dashed red line."""
    if not points:
        return ""
    pad = 28
    xs = [p[0] for p in points]
    ys = [p[1] for p in points] + ([threshold] if threshold is not None else [])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
    y1 = y1 * 1.1 if y1 > 0 else 1.0

    def sx(x):
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
             f'<title>{esc(title)}</title>'),
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
             f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{path}"/>']
    parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#1f6feb"/>' for x, y in points]
    if threshold is not None:
        parts.append(f'<line x1="{pad}" y1="{sy(threshold):.1f}" x2="{width - pad}" y2="{sy(threshold):.1f}" '
                     'stroke="#d1242f" stroke-dasharray="4 3"/>'
                     f'<text x="{width - pad}" y="{sy(threshold) - 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#d1242f">threshold {esc(_number(threshold))}</text>')
    parts.append(f'<text x="{pad}" y="12" font-size="11">{esc(_number(y1 / 1.1))} max</text>'
                 f'<text x="{pad}" y="{height - 8}" font-size="10" fill="#777">{len(points)} windows</text></svg>')
    return "".join(parts)


def compare_svg(hist: dict[str, list[float]], title: str, width: int = 460, height: int = 170) -> str:
    """This window's shares (blue) against the reference's (grey) on shared bins."""
    edges, current, reference = hist.get("edges") or [], hist.get("current") or [], hist.get("reference") or []
    if not current:
        return ""
    pad, top = 24, max(max(current), max(reference), 1e-9)
    step = (width - 2 * pad) / len(current)
    bars = []
    for i, (a, b) in enumerate(zip(current, reference)):
        x = pad + i * step
        for offset, value, colour in ((0, b, "#bbb"), (step / 2, a, "#1f6feb")):
            h = value / top * (height - 2 * pad)
            bars.append(f'<rect x="{x + offset:.1f}" y="{height - pad - h:.1f}" width="{max(step / 2 - 1, 1):.1f}" '
                        f'height="{h:.1f}" fill="{colour}"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'<title>{esc(title)}</title>{"".join(bars)}'
            f'<text x="{pad}" y="{height - 6}" font-size="10">{esc(_number(edges[0]))}</text>'
            f'<text x="{width - pad}" y="{height - 6}" font-size="10" text-anchor="end">{esc(_number(edges[-1]))}</text>'
            f'<text x="{pad}" y="12" font-size="11"><tspan fill="#1f6feb">■ this window</tspan> '
            f'<tspan fill="#999">■ reference</tspan></text></svg>')


def render(result: dict[str, Any], history: dict[str, list[tuple[int, float]]]) -> str:
    decision = result["decision"]
    signals = result["signals"]
    window = result["window"]
    verdict = []
    if decision["retrain"]:
        verdict.append("<span class='bad'>RETRAIN requested</span>")
    elif decision["retrain_held_by_cooldown"]:
        verdict.append("<span class='bad'>retrain held by the cooldown</span>")
    if decision["alert"]:
        verdict.append("<span class='bad'>ALERT</span>")
    if decision["rollback"]:
        verdict.append("<span class='bad'>ROLLBACK requested</span>")
    body = [f"<h1>Monitoring: {esc(result['model_name'])} v{esc(result['model_version'])}</h1>",
            (f"<p>Window {esc(window['start'])} → {esc(window['end'])} ({esc(window['length'])}, index "
            f"{esc(window['index'])}); {esc(result['requests'])} requests. Policy <code>{esc(result['policy'])}</code>."
            "</p>"),
            f"<p>{' · '.join(verdict) or '<span class=ok>no signal fired</span>'}</p>"]
    if decision["reasons"]:
        body.append("<ul>" + "".join(f"<li><b>{esc(r['signal'])}</b> ({esc(r['severity'])}): {esc(r['why'])}</li>"
                                     for r in decision["reasons"]) + "</ul>")
    sources = result.get("reference") or {}
    body.append("<p class='muted'>Reference: training prompts <code>" + esc(sources.get("training_prompts") or "none")
                + "</code>; evaluation answers <code>" + esc(sources.get("eval_predictions") or "none") + "</code></p>")
    rows = []
    for s in signals.values():
        css = " class='fired'" if s["fired"] else ""
        rows.append(f"<tr{css}><td>{esc(s['group'])}</td><td>{esc(s['name'])}</td><td>{esc(_number(s['value']))}</td>"
                    f"<td>{esc(_number(s['p_value']))}</td><td>{esc(_number(s['n']))}</td>"
                    f"<td>{esc(_number(s['threshold']))}</td><td>{esc(s['severity'])}</td>"
                    f"<td>{'FIRED' if s['fired'] else ''}</td><td>{esc(s['why'])}</td></tr>")
    body.append("<h2>Signals</h2><table><tr><th>group</th><th>signal</th><th>value</th><th>p</th><th>n</th>"
                "<th>threshold</th><th>severity</th><th></th><th>why</th></tr>" + "".join(rows) + "</table>")
    charts = [f"<figure>{line_svg(points, signals[name]['threshold'], name)}<figcaption>{esc(name)}</figcaption></figure>"
              for name, points in history.items() if points and name in signals]
    if charts:
        body.append("<h2>Over the last windows</h2><div class='charts'>" + "".join(charts) + "</div>")
    dists = []
    for name in ("prompt_chars", "prompt_words", "answer_chars"):
        hist = (signals.get(name) or {}).get("details", {}).get("histogram")
        if hist:
            dists.append(f"<figure>{compare_svg(hist, name)}<figcaption>{esc(name)}</figcaption></figure>")
    if dists:
        body.append("<h2>Distributions against the reference</h2><div class='charts'>" + "".join(dists) + "</div>")
    mix = (signals.get("script_mix") or {}).get("details", {})
    if mix.get("shares"):
        body.append("<h3>Script mix</h3><table><tr><th>script</th><th>this window</th><th>reference</th></tr>" + "".join(
            f"<tr><td>{esc(k)}</td><td>{mix['shares'].get(k, 0):.1%}</td><td>{mix['shares_reference'].get(k, 0):.1%}</td></tr>"
            for k in mix["shares"]) + "</table>")
    novelty = (signals.get("vocab_novelty") or {}).get("details", {})
    for key, label in (("top_new_words", "New words"), ("top_new_bigrams", "New word pairs")):
        if novelty.get(key):
            body.append(f"<h3>{label} (never in the training prompts)</h3><p>" + ", ".join(
                f"<code>{esc(w)}</code> ×{esc(c)}" for w, c in novelty[key]) + "</p>")
    examples = [(s["name"], s["examples"]) for s in signals.values() if s["fired"] and s["examples"]]
    if examples:
        body.append("<h2>Examples behind the fired signals (PII masked)</h2>")
        for name, shown in examples:
            body.append(f"<h3>{esc(name)}</h3><table><tr><th>trace</th><th>prompt</th><th>answer</th></tr>" + "".join(
                f"<tr><td><code>{esc(e['trace_id'])}</code></td><td>{esc(e['prompt'])}</td><td>{esc(e['answer'])}</td></tr>"
                for e in shown) + "</table>")
    return page(f"Monitoring {result['model_name']} v{result['model_version']} {window['end']}", "".join(body), STYLE)
