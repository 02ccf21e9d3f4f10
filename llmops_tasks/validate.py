"""Stop bad data at the door: check a data set against a Great Expectations suite before training.

The suite is built in code per kind of data set (preference, sft, eval) and run with a real,
ephemeral GX context on a pandas DataFrame. Every row carries an ``id`` (its own, or ``line N``
when it has none), so a failed rule names the rows that broke it. Conversational rows (message
lists instead of strings) are flattened to their text first, so the same rules apply to both
forms. The report ``validation.json`` lists every rule; an invalid data set raises
:class:`StepFailed` (CLI exit code 1) with a message naming each failed rule and sample row ids.

great_expectations and pandas are imported inside functions: ``llmops --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from llmops_tasks import data
from llmops_tasks.config import field, require
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

# Columns holding text (a string, or a list of {role, content} messages) that the rules check.
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion", "reference", "messages")
# Derived columns the suite reads; the double underscore keeps them apart from data columns.
TYPE_SUFFIX = "__type"
PAIR_EQUAL_COLUMN = "chosen_equals_rejected__derived"
ALLOWED_TYPES = ("text", "messages")
MESSAGE_SAMPLE = 5  # row ids named per failed rule in the error message
REPORT_SAMPLE = 100  # row ids kept per rule in validation.json


@dataclasses.dataclass
class ValidateConfig:
    """Settings of the ``validate`` step."""

    dataset: str = field("", help="data set to check: path or URI of a .jsonl or .parquet file (required)")
    kind: Literal["preference", "sft", "eval"] = field(
        "preference", help="kind of data set; decides the required columns and rules"
    )
    report_dir: str = field("", help="folder for validation.json (default: the run's validate step folder)")
    min_rows: int = field(1, help="fewest rows the data set may have")
    max_rows: int = field(0, help="most rows the data set may have; 0 = no limit")
    min_chars: int = field(1, help="fewest characters a text field may have (message lists: their joined content)")
    max_chars: int = field(20000, help="most characters a text field may have (message lists: their joined content)")
    check_duplicates: bool = field(True, help="fail on rows repeating an earlier row's prompt and response text")

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


# --- turning records into a checkable table ---------------------------------------------------


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
    import json

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


def to_frame(records: list[dict[str, Any]], text_columns: tuple[str, ...], id_label: str = "line"):
    """The table GX checks: ``id``, flattened text columns, their types and derived pair columns."""
    import pandas as pd

    table: dict[str, list] = {"id": [row_id(r, id_label) for r in records]}
    for column in text_columns:
        texts, types = [], []
        for record in records:
            text, kind = flatten_text(record.get(column))
            texts.append(text)
            types.append(kind)
        table[column] = texts
        table[column + TYPE_SUFFIX] = types
    if "chosen" in table and "rejected" in table:
        table[PAIR_EQUAL_COLUMN] = [
            None if c is None or r is None else c == r for c, r in zip(table["chosen"], table["rejected"])
        ]
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in table.items()})


# --- the suite -------------------------------------------------------------------------------


def build_suite(config: ValidateConfig, columns: set[str], name: str = "llmops"):
    """The Expectation Suite for one data set; each expectation's ``meta.rule`` is the rule name."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    required, optional = checked_columns(config.kind, columns)
    rules: list[Any] = []

    def add(rule: str, expectation: Any) -> None:
        expectation.meta = {"rule": rule}
        rules.append(expectation)

    add("row_count", gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows, max_value=config.max_rows or None))
    for column in required:
        add(f"{column}_present", gxe.ExpectColumnToExist(column=column))
    for column in required + optional:
        if column not in columns:
            continue
        add(f"{column}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=column))
        add(
            f"{column}_is_text",
            gxe.ExpectColumnValuesToBeInSet(column=column + TYPE_SUFFIX, value_set=list(ALLOWED_TYPES)),
        )
        add(f"{column}_not_blank", gxe.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"))
        add(
            f"{column}_length",
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=config.min_chars, max_value=config.max_chars
            ),
        )
    if "id" in columns:
        add("id_unique", gxe.ExpectColumnValuesToBeUnique(column="id"))
    if config.check_duplicates and all(c in columns for c in required):
        if len(required) == 1:
            add("no_duplicate_rows", gxe.ExpectColumnValuesToBeUnique(column=required[0]))
        else:
            add("no_duplicate_rows", gxe.ExpectCompoundColumnsToBeUnique(column_list=list(required)))
    if "chosen" in columns and "rejected" in columns:
        # GX has no "pair not equal" expectation: the derived boolean column must be all False.
        add(
            "chosen_differs_from_rejected",
            gxe.ExpectColumnValuesToBeInSet(column=PAIR_EQUAL_COLUMN, value_set=[False]),
        )
    return gx.ExpectationSuite(name=name, expectations=rules)


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=project, mode="ephemeral")


def run_suite(frame, suite) -> Any:
    """Run ``suite`` on ``frame`` through a datasource, batch definition and validation definition."""
    import great_expectations as gx

    context = _context()
    batch = (
        context.data_sources.add_pandas("llmops")
        .add_dataframe_asset("dataset")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="validate", data=batch, suite=suite))
    return definition.run(
        batch_parameters={"dataframe": frame},
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["id"],
            "partial_unexpected_count": MESSAGE_SAMPLE,
            "return_unexpected_index_query": False,
        },
    )


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
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in value.items()}
    return value


def summarize(validation: Any, order: list[str]) -> list[dict[str, Any]]:
    """One entry per rule, in the suite's order: success, unexpected count, sample row ids."""
    by_rule = {}
    for outcome in validation.results:
        config = outcome.expectation_config
        rule = (config.meta or {}).get("rule", config.type)
        result = outcome.result or {}
        error = _exception_message(outcome.exception_info)
        ids: list[str] = []
        for item in result.get("unexpected_index_list") or []:
            if isinstance(item, dict) and "id" in item:
                ids.append(str(item["id"]))
        entry: dict[str, Any] = {
            "rule": rule,
            "expectation": config.type,
            "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)},
            "success": bool(outcome.success) and error is None,
        }
        if "unexpected_count" in result:
            entry["unexpected_count"] = int(result["unexpected_count"])
            entry["unexpected_percent"] = round(float(result.get("unexpected_percent") or 0.0), 4)
            entry["sample_ids"] = ids[:REPORT_SAMPLE]
            entry["sample_values"] = [_short(v) for v in (result.get("partial_unexpected_list") or [])[:MESSAGE_SAMPLE]]
        if "observed_value" in result:
            entry["observed_value"] = result["observed_value"]
        if error:
            entry["error"] = error
        by_rule[rule] = entry
    ordered = [by_rule.pop(rule) for rule in order if rule in by_rule]
    return ordered + list(by_rule.values())


def describe_failure(rule: dict[str, Any]) -> str:
    """``chosen_differs_from_rejected (3 rows: a, b, c)``, or what was observed for table rules."""
    name = rule["rule"]
    if rule.get("error"):
        return f"{name} (could not be checked: {rule['error']})"
    if "unexpected_count" in rule:
        count = rule["unexpected_count"]
        ids = rule.get("sample_ids", [])[:MESSAGE_SAMPLE]
        more = ", ..." if count > len(ids) else ""
        noun = "row" if count == 1 else "rows"
        return f"{name} ({count} {noun}: {', '.join(ids)}{more})" if ids else f"{name} ({count} {noun})"
    if rule["expectation"] == "expect_column_to_exist":
        return f"{name} (column {rule['kwargs'].get('column')!r} is missing)"
    if rule["expectation"] == "expect_table_row_count_to_be_between":
        low, high = rule["kwargs"].get("min_value"), rule["kwargs"].get("max_value")
        expected = f"at least {low}" if high is None else f"{low} to {high}"
        return f"{name} ({rule.get('observed_value')} rows, expected {expected})"
    return f"{name} (observed {rule.get('observed_value')!r})"


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


def _load(uri: str) -> list[dict[str, Any]]:
    """All records, or a :class:`data.DataError`; a reader's own crash is reported the same way."""
    try:
        return data.read_records(uri)
    except data.DataError:
        raise
    except (OSError, ValueError) as exc:
        raise data.DataError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})") from exc


# --- the step --------------------------------------------------------------------------------


def _hash(uri: str) -> str | None:
    try:
        return data.content_hash(uri)
    except (OSError, ValueError):
        return None


def run(config: ValidateConfig) -> dict[str, Any]:
    """Validate ``config.dataset``; write ``validation.json``; raise StepFailed when it is invalid."""
    uri = config.dataset
    report_dir = (config.report_dir or RunContext.from_env().step_dir("validate")).rstrip("/")
    report_path = f"{report_dir}/validation.json"
    settings = dataclasses.asdict(config)
    settings.pop("report_dir")

    try:
        records = _load(uri)
    except data.DataError as exc:
        text = str(exc)
        detail = text[len(uri) + 2 :] if text.startswith(f"{uri}: ") else text
        rule = load_rule(text)
        entry = {"rule": rule, "expectation": "load", "success": False, "error": detail}
        result = {
            "valid": False, "rows": 0, "dataset": uri, "dataset_hash": _hash(uri),
            "report": report_path, "failed_rules": [rule],
        }
        data.write_json(report_path, {**result, "kind": config.kind, "settings": settings, "rules": [entry]})
        raise StepFailed(f"{uri}: rule {rule} failed: {detail}", result) from None

    columns = {key for record in records for key in record if not key.startswith("_")}
    required, optional = checked_columns(config.kind, columns)
    present_text = tuple(c for c in required + optional if c in columns)
    id_label = "row" if uri.lower().endswith((".parquet", ".pq")) else "line"
    frame = to_frame(records, present_text, id_label)
    suite = build_suite(config, columns)
    skipped = [
        {"rule": f"{column}_{check}", "reason": f"column {column!r} is missing"}
        for column in required if column not in columns
        for check in ("not_null", "is_text", "not_blank", "length")
    ]
    if config.check_duplicates and skipped:
        skipped.append({"rule": "no_duplicate_rows", "reason": "a required column is missing"})
    order = [expectation.meta["rule"] for expectation in suite.expectations]
    rules = summarize(run_suite(frame, suite), order)
    failed = [r for r in rules if not r["success"]]

    import great_expectations as gx

    result = {
        "valid": not failed,
        "rows": len(records),
        "dataset": uri,
        "dataset_hash": _hash(uri),
        "report": report_path,
        "failed_rules": [r["rule"] for r in failed],
    }
    forms = sorted({t for c in present_text for t in frame[c + TYPE_SUFFIX].dropna().unique() if t in ALLOWED_TYPES})
    report = {
        **result,
        "kind": config.kind,
        "settings": settings,
        "columns": sorted(columns),
        "required_columns": list(required),
        "text_forms": forms,
        "rules": rules,
        "skipped_rules": skipped,
        "great_expectations": gx.__version__,
    }
    data.write_json(report_path, report)
    if failed:
        summary = "; ".join(describe_failure(r) for r in failed)
        raise StepFailed(f"{uri}: {len(failed)} rule(s) failed: {summary}", result)
    return result


def command():
    from llmops_tasks.cli import Command

    return Command(ValidateConfig, run, "check a data set against its Great Expectations suite")
