"""The curation report (HTML): what came in, what was kept, why the rest was dropped."""

from __future__ import annotations

from typing import Any

from llmops_tasks.core.html import esc, page

STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}table{border-collapse:collapse;"
         "margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}"
         "td.n{text-align:right}.bad{color:#a00}.ok{color:#070}")


def _table(title: str, rows: dict[str, Any], empty: str = "none") -> str:
    if not rows:
        return f"<h2>{esc(title)}</h2><p>{esc(empty)}</p>"
    body = "".join(f'<tr><td>{esc(k)}</td><td class="n">{esc(v)}</td></tr>' for k, v in rows.items())
    return f"<h2>{esc(title)}</h2><table>{body}</table>"


def render(result: dict[str, Any]) -> str:
    outcome = result.get("outcome", "")
    css = "ok" if result.get("written") else ("bad" if outcome.startswith("invalid") else "")
    parts = [
        "<h1>Feedback curation</h1>",
        f'<p class="{css}"><b>{esc(outcome)}</b></p>',
        _table("Came in", result.get("read", {})),
        _table("Votes by kind (valid assessments)", result.get("votes", {})),
        _table("Kept: new rows by source", result.get("new_rows", {})),
        _table("Dropped, and why", result.get("dropped", {})),
        _table(f"Personal data ({result.get('pii_mode', '')})", result.get("pii_hits", {}), "none found"),
        _table("Snapshot", {k: result.get(k) for k in ("version", "rows", "feedback_rows", "base_rows", "kto_rows",
                                                        "sft_rows", "content_hash", "uri", "previous")
                            if result.get(k) not in (None, "")}),
        _table("Rows by source in the snapshot", result.get("rows_by_source", {})),
        _table("Watermark", result.get("watermark") and {"timestamp_ms": result["watermark"].get("timestamp_ms"),
                                                        "traces at it": len(result["watermark"].get("trace_ids", []))}
               or {}),
    ]
    if result.get("failed_rules"):
        parts.append(_table("Validation: failed rules", {r: "failed" for r in result["failed_rules"]}))
    return page("Feedback curation", "".join(parts), STYLE)
