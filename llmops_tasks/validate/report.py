"""What a validation reports: rule outcomes added up over batches, data set statistics, the
quarantine file of failing rows, and the failure of a file that cannot be read."""

from __future__ import annotations

import json
from typing import Any

from llmops_tasks.core import data
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.io import AtomicFile
from llmops_tasks.validate.config import (
    CONVERSATION_COLUMNS,
    DATASET_CHECK,
    MESSAGE_SAMPLE,
    REPORT_SAMPLE,
    ValidateConfig,
)
from llmops_tasks.validate.measures import Seen


def dataset_hash(uri: str) -> str | None:
    try:
        return data.content_hash(uri)
    except (OSError, ValueError):
        return None



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
        self.batches = 0

    def add(self, validation: Any, batch: bool = True) -> dict[int, list[str]]:
        """Add one GX run's outcomes; ``batch``: it is a GX batch of its own (not the conversational
        suite's run over the same rows). Returns ``{row: rules it broke}``."""
        flagged: dict[int, list[str]] = {}
        self.batches += int(batch)
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
                "element_count": 0,
                "missing_count": 0,
                "checked_rows": 0,
                "unexpected_count": 0,
                "sample_ids": [],
                "sample_values": [],
            })
            error = _exception_message(outcome.exception_info)
            if error and "error" not in entry:
                entry["error"] = error
            elements, missing = int(result.get("element_count") or 0), int(result.get("missing_count") or 0)
            entry["element_count"] += elements
            entry["missing_count"] += missing
            entry["checked_rows"] += elements - missing
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

    def add_missing(self, rules: list[str], rows: int) -> None:
        """Rows a GX run of ``rules`` would have counted as missing (a batch without a message list
        skips the conversational suite): element counts stay those of the whole data set."""
        for rule in rules:
            if rule in self.rules:
                self.rules[rule]["element_count"] += rows
                self.rules[rule]["missing_count"] += rows

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
    if not ids:
        return f"{name} ({count} {noun}{allowed})"
    # A conversational rule's measurement says what is wrong (the first failing row's first problem).
    values = rule.get("sample_values") or []
    why = f": {ids[0]}: {values[0]}" if name in CONVERSATION_COLUMNS and values else ""
    return f"{name} ({count} {noun}{allowed}: {', '.join(ids)}{more}){why}"


class Quarantine:
    """``quarantine.jsonl``: every row that broke a row rule, with the rules; written atomically
    (:class:`~llmops_tasks.core.io.AtomicFile`), so a failed run never leaves half a file behind."""

    def __init__(self, path: str):
        self.path = path
        self.rows = 0
        self.file: AtomicFile | None = None
        self.handle = None

    def add(self, record: dict[str, Any], rid: str, rules: list[str], blocking: set[str]) -> None:
        if self.file is None:
            self.file = AtomicFile(self.path, errors="backslashreplace")
            self.handle = self.file.open()
        clean = {k: v for k, v in record.items() if not k.startswith("_")}
        line = {"row": rid, "line": record.get("_line"), "rules": rules,
                "blocking": any(r in blocking for r in rules), "record": clean}
        self.handle.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.rows += 1

    def close(self, keep: bool) -> str | None:
        """Keep the file (when it has rows) or remove it, and any earlier attempt's file."""
        if keep and self.file is not None and self.rows:
            return self.file.commit()
        (self.file or AtomicFile(self.path)).discard(remove_target=True)
        return None


def dataset_rules(config: ValidateConfig, seen: Seen, required: tuple[str, ...], columns: set[str],
                   first_columns: set[str]) -> list[dict[str, Any]]:
    """Rules on the whole data set, computed from the streamed totals."""
    rules = []

    def add(rule: str, success: bool, observed: str, value: Any, **extra: Any) -> None:
        rules.append({"rule": rule, "expectation": DATASET_CHECK, "severity": config.severity_of(rule),
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


def load_failure(config: ValidateConfig, exc: data.DataError, uri: str, report_path: str, settings: dict,
                  rows: int, role: str = "dataset") -> StepFailed:
    text = str(exc)
    detail = text[len(uri) + 2:] if text.startswith(f"{uri}: ") else text
    rule = data.load_rule(text) if role == "dataset" else f"against_{data.load_rule(text)}"
    entry = {"rule": rule, "expectation": "load", "severity": "block", "success": False, "error": detail}
    result = {
        "valid": False, "rows": rows, "dataset": config.dataset, "dataset_hash": dataset_hash(config.dataset),
        "report": report_path, "failed_rules": [rule], "warnings": [], "quarantine": None,
    }
    data.write_json(report_path, {**result, "kind": config.kind, "settings": settings, "rules": [entry]})
    return StepFailed(f"{uri}: rule {rule} failed: {detail}", result)

