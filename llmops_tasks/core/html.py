"""The HTML pages the project writes (the EDA report, the evaluation report, the approvals page):
one escaping rule and one page shell, so every value a page shows is escaped the same way."""

from __future__ import annotations

import html
import json
from typing import Any


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute: None is empty, lists and mappings show as JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return html.escape(str(value), quote=True)


def page(title: str, body: str, style: str = "") -> str:
    """A complete, self-contained UTF-8 page (no external resources); ``body`` is HTML already."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{style}</style></head><body>{body}</body></html>\n")
