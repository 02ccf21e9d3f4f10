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
it broke. ``validation.json`` lists every rule; GX Data Docs (HTML) of the same rules, one
validation result for the whole data set that renders offline (:mod:`.datadocs`), are built under
``{report_dir}/gx`` for local report folders. Every row carries an ``id`` (its own, or ``line N``
/ ``row N``), and conversational rows are flattened to their text first, so the same rules apply
to both forms; rows holding a message list are also checked for TRL's conversational shape (roles,
turn order, content, tool calls and, with a tokenizer, its chat template: :mod:`.conversations`)
by a second suite that runs only on the batches holding one.

great_expectations, pandas, pyarrow, numpy and transformers are imported inside functions:
``llmops --help`` must stay fast, and transformers only loads when a tokenizer is configured.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import os
import shutil
from typing import Any

from llmops_tasks.core import data, settings, tracking
from llmops_tasks.core.config import load
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.settings import RunContext
from llmops_tasks.text.columns import token_counter
from llmops_tasks.text.records import checked_columns
from llmops_tasks.validate import datadocs
from llmops_tasks.validate.config import ALLOWED_TYPES, CONVERSATION_COLUMNS, TYPE_SUFFIX, ValidateConfig
from llmops_tasks.validate.conversations import ChatTemplate
from llmops_tasks.validate.measures import Seen, measure, read_against
from llmops_tasks.validate.report import Quarantine, Tally, dataset_hash, dataset_rules, describe_failure, load_failure
from llmops_tasks.validate.suite import SuiteRunner, build_suite, conversation_suite

log = logging.getLogger(__name__)
# What the result says of the ``against`` set's own check.
EVAL_SET_KEYS = ("valid", "rows", "report", "warnings", "quarantine", "data_docs", "mlflow_run_url")

# --- the step --------------------------------------------------------------------------------


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _check_batch(pending: list[tuple[data.Chunk, Any]], runner: SuiteRunner, tally: Tally,
                 quarantine: Quarantine | None, blocking: set[str]) -> int:
    """One GX run over the measurements of ``pending`` chunks, and one of the conversational suite
    where a row holds a message list; the rows they flag go to quarantine. Returns the rows the
    conversational suite skipped (none of them holds a message list)."""
    import pandas as pd

    frames = [frame for _, frame in pending]
    batch = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    talk = [c for c in CONVERSATION_COLUMNS.values() if c in batch.columns]
    conversations = None
    if talk:  # measured only in chunks holding a message list; the rest of the batch is null (missing)
        conversations = batch.reindex(columns=["id", "row", *runner.conversation_columns])
        batch = batch.drop(columns=talk)
    for frame in [batch] if conversations is None else [batch, conversations]:
        for name in frame.columns:  # few distinct values: categories spare GX a Python call per value
            if name.endswith(TYPE_SUFFIX) or name == "pii__found" or name in runner.conversation_columns:
                frame[name] = frame[name].astype("category")
    flagged = tally.add(runner.run(batch))
    skipped = len(batch)
    if conversations is not None and runner.conversations is not None:
        for position, rules in tally.add(runner.run_conversations(conversations), batch=False).items():
            flagged.setdefault(position, []).extend(rules)
        skipped = 0
    if quarantine is None or not flagged:
        return skipped
    first = int(batch["row"].iat[0])
    starts = [int(frame["row"].iat[0]) for frame in frames]
    ids = batch["id"].to_numpy()
    for position in sorted(flagged):
        index = bisect.bisect_right(starts, position) - 1
        record = pending[index][0].record(position - starts[index])
        quarantine.add(record, ids[position - first], flagged[position], blocking)
    return skipped


def run(config: ValidateConfig) -> dict[str, Any]:
    """The whole step: check the data set (and, with ``against_policy``, the ``against`` set itself),
    record an MLflow step run for each check, raise StepFailed naming every failure."""
    result, failure = _tracked(config, "validate")
    failures = [failure] if failure else []
    if config.against and config.against_policy:
        # The fixed eval set is checked by its own rules (prompt / reference, size, duplicates) before
        # anything is trained, rather than when evaluate reads it after the training has been paid for.
        report_dir = (config.report_dir or RunContext.from_env().step_dir("validate")).rstrip("/")
        against_config = load(ValidateConfig, resolve_policy(config.against_policy),
                              {"dataset": config.against, "kind": "eval", "report_dir": f"{report_dir}/eval_set"})
        against_result, against_failure = _tracked(against_config, "validate_eval_set")
        result["eval_set"] = {key: against_result.get(key) for key in EVAL_SET_KEYS}
        failures += [against_failure] if against_failure else []
    if failures:
        raise StepFailed("\n".join(str(f) for f in failures), result)
    return result


def _tracked(config: ValidateConfig, step: str) -> tuple[dict[str, Any], StepFailed | None]:
    """One check and its MLflow run (validation.json, quarantine and Data Docs as artifacts);
    (result, the failure or None). The run is FINISHED either way: the check ran to its end."""
    with tracking.step_recorder() as recorder:  # MLflow opened on another core while the data is checked
        try:
            result, failure = check(config), None
        except StepFailed as exc:
            result, failure = exc.result, exc
        return _record(config, step, recorder, result, failure)


def _record(config: ValidateConfig, step: str, recorder: tracking.StepRecorder, result: dict[str, Any],
            failure: StepFailed | None) -> tuple[dict[str, Any], StepFailed | None]:
    """The check's MLflow run, recorded by ``recorder``; the log says where its reports are."""
    for label, path in (("quarantine", result.get("quarantine")), ("Data Docs", result.get("data_docs"))):
        if path:
            log.info("%s %s: %s", step, label, path)
    if result.get("warnings"):
        log.warning("%s warnings (not blocking): %s", step, ", ".join(result["warnings"]))
    docs = result.get("data_docs")
    result["mlflow_run_url"] = recorder.record(
        step, {"dataset": config.dataset, "kind": config.kind, "dataset_hash": result.get("dataset_hash"),
               "valid": failure is None, "against": config.against},
        {"rows": result.get("rows", 0), "quarantined_rows": result.get("quarantined_rows", 0)},
        [result.get("report", ""), result.get("quarantine") or ""],
        {"reports/data_docs": os.path.dirname(docs)} if docs else None)
    return result, failure


def resolve_policy(policy: str) -> str:
    """A policy file: a path, or the name of one shipped in ``llmops_tasks/policies``."""
    if os.path.isfile(policy) or "/" in policy or "://" in policy:
        return policy
    return settings.packaged_policy(policy)


def check(config: ValidateConfig) -> dict[str, Any]:
    """Validate ``config.dataset`` chunk by chunk; write the reports; raise StepFailed when it is invalid."""
    uri = config.dataset
    report_dir = (config.report_dir or RunContext.from_env().step_dir("validate")).rstrip("/")
    report_path = f"{report_dir}/validation.json"
    recorded = dataclasses.asdict(config)
    recorded.pop("report_dir")
    docs_root = f"{report_dir}/gx" if config.data_docs and _is_local(report_dir) else None
    if docs_root and os.path.isdir(docs_root):
        shutil.rmtree(docs_root)  # a retry must not show the previous attempt's results as well
    count_tokens = token_counter(config.tokenizer) if (config.max_tokens or config.min_tokens) else None
    # Loaded on the first row holding a message list: strings need no chat template.
    chat_template = ChatTemplate(config.tokenizer) if config.tokenizer and config.check_chat_template else None

    seen = Seen()
    against_rows = None
    if config.against:
        try:
            against_rows = read_against(config, seen)
        except data.DataError as exc:
            raise load_failure(config, exc, config.against, report_path, recorded, 0, role="against") from None

    quarantine = Quarantine(f"{report_dir}/quarantine.jsonl") if _is_local(report_dir) else None
    tally = Tally()
    runner = None
    suite = None
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
    talk_suite = conversation_suite(config)
    talk_rules = [e.meta["rule"] for e in talk_suite.expectations]
    no_talk = 0  # rows of batches without a message list: the conversational suite did not run on them
    try:
        for chunk in data.read_chunks(uri, config.chunk_rows):
            chunk_columns = chunk.columns
            columns |= chunk_columns
            if runner is None:
                # The first chunk decides the columns checked; a later row lacking one fails not_null.
                first_columns = set(chunk_columns)
                required, optional = checked_columns(config.kind, first_columns)
                text_columns = tuple(c for c in required + optional if c in first_columns)
            key_columns = required if all(c in first_columns for c in required) else ()
            frame = measure(chunk, text_columns, key_columns, config, seen, count_tokens or (lambda t: []),
                            id_label, offset, chat_template)
            if runner is None:
                suite = build_suite(config, text_columns, set(frame.columns) - set(CONVERSATION_COLUMNS.values()))
                order = [expectation.meta["rule"] for expectation in suite.expectations] + talk_rules
                blocking = {e.meta["rule"] for e in (*suite.expectations, *talk_suite.expectations)
                            if e.meta["severity"] == "block"}
                runner = SuiteRunner(suite, talk_suite if text_columns else None)
            for column in text_columns:
                forms.update(t for t in frame[column + TYPE_SUFFIX].dropna().unique() if t in ALLOWED_TYPES)
            chunk.compact()
            pending.append((chunk, frame))
            offset += len(chunk)
            if sum(len(c) for c, _ in pending) >= config.gx_batch_rows:
                no_talk += _check_batch(pending, runner, tally, quarantine, blocking)
                pending = []
        if pending:
            no_talk += _check_batch(pending, runner, tally, quarantine, blocking)
    except data.DataError as exc:
        if quarantine is not None:
            quarantine.close(keep=False)
        raise load_failure(config, exc, uri, report_path, recorded, offset) from None
    except BaseException:
        if quarantine is not None:
            quarantine.close(keep=False)
        raise

    tally.add_missing(talk_rules, no_talk)  # listed only when a row held a message list
    rules = dataset_rules(config, seen, required, columns, first_columns) + tally.finish(order)
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
    docs = None
    if docs_root:
        ran = [*suite.expectations, *talk_suite.expectations] if suite is not None else []
        docs = datadocs.build(docs_root, config, ran, rules, not failed, seen.row_count, tally.batches)

    import great_expectations as gx

    result = {
        "valid": not failed,
        "rows": seen.row_count,
        "dataset": uri,
        "dataset_hash": dataset_hash(uri),
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
        "settings": recorded,
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
    from llmops_tasks.core.command import Command

    return Command(ValidateConfig, run, "check a data set against its Great Expectations suite")
