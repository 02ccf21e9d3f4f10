"""``llmops curate``: new feedback on production traces -> a new validated, versioned preference snapshot.

One run: read the traffic traces since the watermark of the latest snapshot (oldest first, at most
``max_traces``), keep their valid feedback assessments, mine rows (:mod:`.mining`), apply the PII
rule, build the candidate snapshot = the previous snapshot (or, for the first one, the base data
set) within the retention window + the new rows not already in it, validate it with the validate
step's own check and policy, and only then rename it into place (:mod:`.store`). No new row: no
snapshot (the read position is kept in ``cursor.json``). Invalid: no snapshot, exit 1, the report
says why. Either way ``report.html`` goes to the run's folder.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from llmops_tasks import feedback
from llmops_tasks.core import data, settings, tracking
from llmops_tasks.core.config import ConfigError, load
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.io import write_text
from llmops_tasks.core.settings import RunContext
from llmops_tasks.curation import mining, report, rows, store
from llmops_tasks.curation.config import SOURCES, CurateConfig

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
INLINE_TRACES = 10_000  # the manifest lists the traces inline up to this many (all are in traces.txt)


def snapshot_root(config: CurateConfig) -> str:
    return config.snapshot_root or store.default_root()


def base_dataset(config: CurateConfig) -> str:
    """The configured base set; by default the embedded sample set when it exists; '' for none."""
    if config.base_dataset == "none":
        return ""
    if config.base_dataset:
        return config.base_dataset
    sample = settings.sample_data_dir() / "preference.jsonl"
    return str(sample) if sample.is_file() else ""


# --------------------------------------------------------------------------- reading


def read_feedback(experiment_id: str, since: dict[str, Any] | None, config: CurateConfig) -> dict[str, Any]:
    """The traces since the watermark that carry feedback, as ``answers`` and ``votes`` frames."""
    import pandas as pd

    from llmops_tasks.serving import traces

    since_ms = None
    skip: set[str] = set()
    if since:
        since_ms = int(since["timestamp_ms"]) - int(config.lookback_hours * 3_600_000)
        if not config.lookback_hours:
            skip = set(since.get("trace_ids", []))  # read last time, at the boundary millisecond
    answers: dict[str, list] = {k: [] for k in ("trace_id", "prompt_key", "prompt", "answer")}
    votes: dict[str, list] = {k: [] for k in ("trace_id", "name", "value", "by", "created_ms")}
    counts: Counter = Counter()
    last_ms, at_last = (since or {}).get("timestamp_ms"), list((since or {}).get("trace_ids", []))
    started = time.monotonic()
    for answer in traces.search(experiment_id, since_ms=since_ms, page_size=config.page_size):
        if answer.trace_id in skip:
            continue
        counts["traces read"] += 1
        if answer.timestamp_ms != last_ms:
            last_ms, at_last = answer.timestamp_ms, []
        at_last.append(answer.trace_id)
        found = [a for a in answer.assessments if a.name in feedback.NAMES and a.valid is not False]
        if found:
            if answer.error or answer.answer is None:
                counts["with feedback on a failed answer (ignored)"] += 1
            else:
                counts["with feedback"] += 1
                _add(answers, votes, answer, found)
        if counts["traces read"] % 50_000 == 0:
            log.info("curate: %d traces read, %d with feedback (%.0f traces/s)", counts["traces read"],
                     counts["with feedback"], counts["traces read"] / max(time.monotonic() - started, 1e-9))
        if config.max_traces and counts["traces read"] >= config.max_traces:
            log.info("curate: max_traces (%d) reached; the next run reads on from here", config.max_traces)
            break
    answers_frame, votes_frame = pd.DataFrame(answers), pd.DataFrame(votes)
    _fetch_others(answers_frame, votes_frame, answers)
    watermark = {"timestamp_ms": last_ms, "trace_ids": sorted(set(at_last))} if last_ms is not None else None
    return {"answers": pd.DataFrame(answers), "votes": votes_frame, "counts": dict(counts), "watermark": watermark}


def _add(answers: dict, votes: dict, answer, found) -> None:
    answers["trace_id"].append(answer.trace_id)
    answers["prompt_key"].append(answer.prompt_key)
    answers["prompt"].append(answer.prompt)
    answers["answer"].append(answer.answer)
    for a in found:
        votes["trace_id"].append(answer.trace_id)
        votes["name"].append(a.name)
        votes["value"].append(a.value)
        votes["by"].append(a.source.source_id if a.source is not None else "")
        votes["created_ms"].append(int(a.create_time_ms or 0))


def _fetch_others(answers_frame, votes_frame, answers: dict) -> None:
    """Pairwise choices may name a trace read in an earlier run: fetch those answers by id."""
    from mlflow.exceptions import MlflowException

    from llmops_tasks.serving.traces import Answer

    if not len(votes_frame):
        return
    named = votes_frame.loc[votes_frame["name"] == feedback.PREFERRED_OVER, "value"].astype(str)
    missing = sorted(set(named) - set(answers_frame["trace_id"]))
    mlflow_client = tracking.client() if missing else None
    for trace_id in missing:
        try:
            other = Answer.from_trace(mlflow_client.get_trace(trace_id))
        except MlflowException:
            continue
        if other.answer is not None and not other.error:
            for key, value in (("trace_id", other.trace_id), ("prompt_key", other.prompt_key),
                               ("prompt", other.prompt), ("answer", other.answer)):
                answers[key].append(value)


# --------------------------------------------------------------------------- the step


def _previous_rows(folder: Path | None, base: str) -> dict[str, Any]:
    """The rows the new snapshot starts from: the previous snapshot's, else the base data set's."""
    import pandas as pd

    start = {kind: rows.empty(kind) for kind in rows.COLUMNS}
    if folder is not None:
        for kind, name in (("preference", "data.parquet"), ("kto", "kto.parquet"), ("sft", "sft.parquet")):
            frame = store.read_parquet(folder / name)
            if frame is not None:
                start[kind] = rows.conform(frame, kind)
        return start
    if base:
        try:
            records = data.read_records(base)
        except data.DataError as exc:
            raise ConfigError(f"base_dataset: {exc}") from None
        frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records])
        missing = [c for c in data.REQUIRED_COLUMNS["preference"] if c not in frame.columns]
        if missing:
            raise ConfigError(f"base_dataset: {base} has no column(s) {', '.join(missing)} (a preference data set)")
        frame["source"] = "base"
        if "id" not in frame.columns or frame["id"].isna().any():
            frame["id"] = rows.keys(frame, "preference")
        start["preference"] = rows.conform(frame, "preference")
    return start


def _merge(kind: str, previous, new, cutoff_ms: int | None, dropped: Counter):
    """previous (within retention) + the new rows not already in it; (merged, new rows kept)."""
    import pandas as pd

    keep = rows.within_retention(previous, cutoff_ms)
    if (~keep).sum():
        dropped[f"{kind}: past the retention window"] += int((~keep).sum())
    previous = previous[keep]
    fresh = rows.within_retention(new, cutoff_ms)
    if (~fresh).sum():
        dropped[f"{kind}: feedback older than the retention window"] += int((~fresh).sum())
    new = new[fresh]
    repeat = new["id"].duplicated()
    if repeat.sum():
        dropped[f"{kind}: duplicate within this run"] += int(repeat.sum())
    new = new[~repeat]
    known = set(rows.keys(previous, kind)) | set(previous["id"]) if len(previous) else set()
    seen = new["id"].isin(known)
    if seen.sum():
        dropped[f"{kind}: already in the snapshot"] += int(seen.sum())
    new = new[~seen]
    merged = pd.concat([previous, new], ignore_index=True) if len(new) else previous.reset_index(drop=True)
    return merged, new


def run(config: CurateConfig) -> dict[str, Any]:
    """The whole step; see the module docstring."""
    from llmops_tasks.serving import traces
    from llmops_tasks.validate.config import ValidateConfig
    from llmops_tasks.validate.step import check

    started = time.monotonic()
    root = snapshot_root(config)
    report_dir = (config.report_dir or RunContext.from_env().step_dir("curate")).rstrip("/")
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    # The policy is read first: a bad one is a configuration error before anything is read.
    validate_config = load(ValidateConfig, config.policy, {"dataset": "(candidate)", "kind": "preference",
                                                           "data_docs": config.data_docs})
    folder, manifest = store.latest(root)
    cursor = store.read_cursor(root)
    since = (manifest or {}).get("watermark")
    if cursor and cursor.get("timestamp_ms") is not None and (
            not since or since.get("timestamp_ms") is None or cursor["timestamp_ms"] >= since["timestamp_ms"]):
        since = cursor
    experiment = config.experiment or traces.traffic_experiment()
    experiment_id = tracking.get_or_create_experiment(experiment, create=False)
    log.info("curate: traffic experiment %s, snapshots in %s (latest: %s), reading since %s", experiment, root,
             folder.name if folder else "none", (since or {}).get("timestamp_ms", "the beginning"))
    result: dict[str, Any] = {"written": False, "snapshot_root": root, "experiment": experiment,
                              "previous": folder.name if folder else "", "pii_mode": config.pii_mode}
    if experiment_id is None:
        read = {"answers": None, "votes": None, "counts": {}, "watermark": since}
    else:
        read = read_feedback(experiment_id, since, config)
    counts = read["counts"]
    result["read"] = {"traces read": counts.get("traces read", 0), **{k: v for k, v in counts.items()
                                                                        if k != "traces read"}}
    result["watermark"] = read["watermark"]
    log.info("curate: %d traces read, %d with feedback", counts.get("traces read", 0), counts.get("with feedback", 0))

    dropped: Counter = Counter()
    new = {kind: rows.empty(kind) for kind in rows.COLUMNS}
    votes = read["votes"]
    if votes is not None and len(votes):
        result["votes"] = {k: int(v) for k, v in votes["name"].value_counts().items()}
        mined = mining.mine(read["answers"], votes, rating_gap=config.rating_gap,
                            max_pairs_per_prompt=config.max_pairs_per_prompt)
        dropped.update(mined["dropped"])
        prompts = read["answers"].drop_duplicates("trace_id").set_index("trace_id")["prompt"]
        new = {"preference": rows.finish(mined["pairs"], prompts, "preference"),
               "kto": rows.finish(mined["kto"], prompts, "kto"), "sft": rows.finish(mined["sft"], prompts, "sft")}
        log.info("curate: mined %d pairs, %d KTO rows, %d SFT rows", *(len(new[k]) for k in rows.COLUMNS))
    hits: Counter = Counter()
    for kind in rows.COLUMNS:
        before = len(new[kind])
        new[kind], found = rows.apply_pii(new[kind], kind, config.pii_mode, config.pii_kinds)
        hits.update(found)
        if config.pii_mode == "block" and before > len(new[kind]):
            dropped[f"{kind}: personal data (pii_mode: block)"] += before - len(new[kind])
    result["pii_hits"] = dict(sorted(hits.items()))
    if config.pii_mode == "redact" and hits:
        result["pii_hits"]["rows redacted (all kinds)"] = sum(hits.values())

    previous = _previous_rows(folder, base_dataset(config) if folder is None else "")
    if rows.is_conversational([*previous.values(), *new.values()]):
        previous = {k: rows.as_messages(v, k) for k, v in previous.items()}
        new = {k: rows.with_ids(rows.as_messages(v, k), k) for k, v in new.items()}
    cutoff = int(time.time() * 1000) - config.retention_days * DAY_MS if config.retention_days else None
    merged, kept = {}, {}
    for kind in rows.COLUMNS:
        merged[kind], kept[kind] = _merge(kind, previous[kind], new[kind], cutoff, dropped)
    result["dropped"] = {k: int(v) for k, v in sorted(dropped.items()) if v}
    new_rows = {f"pairs from {s}": int((kept["preference"]["source"] == s).sum()) for s in SOURCES[1:]}
    new_rows.update({"kto rows": len(kept["kto"]), "sft rows": len(kept["sft"])})
    result["new_rows"] = {k: v for k, v in new_rows.items() if v}
    retired = any(len(merged[k]) < len(previous[k]) for k in rows.COLUMNS)

    if not any(len(kept[k]) for k in rows.COLUMNS) and not retired:
        result["outcome"] = "no new feedback rows: no snapshot written"
        if read["watermark"]:
            store.write_cursor(root, read["watermark"])
        return _finish(result, report_dir, started)

    tmp = store.staging(root)
    try:
        preference = merged["preference"]
        store.write_parquet(preference, tmp / "data.parquet")
        store.write_parquet(merged["kto"], tmp / "kto.parquet")
        store.write_parquet(merged["sft"], tmp / "sft.parquet")
        validate_config.dataset = str(tmp / "data.parquet")
        validate_config.report_dir = str(tmp / "validation")
        try:
            validation = check(validate_config)
        except StepFailed as exc:
            result.update(outcome=f"invalid: {exc}", failed_rules=exc.result.get("failed_rules", []),
                          validation=None)
            store.discard(tmp)
            _finish(result, report_dir, started)
            raise StepFailed(f"curate: the candidate snapshot failed validation; nothing written: {exc}",
                             result) from None
        content_hash = data.content_hash(str(tmp / "data.parquet"))
        version = (int(store.SNAPSHOT.match(folder.name).group(1)) + 1) if folder else 1
        final = Path(root) / f"v{version:04d}-{content_hash[:12]}"
        trace_ids = sorted({t for kind in rows.COLUMNS for ids in kept[kind]["trace_ids"] for t in ids})
        (tmp / "traces.txt").write_text("".join(t + "\n" for t in trace_ids), encoding="utf-8")
        by_source = {k: int(v) for k, v in preference["source"].value_counts().sort_index().items()}
        result.update(
            written=True, version=final.name, snapshot_dir=str(final), uri=str(final / "data.parquet"),
            manifest=str(final / "manifest.json"), content_hash=content_hash, rows=len(preference),
            feedback_rows=int((preference["source"] != "base").sum()), base_rows=int(by_source.get("base", 0)),
            kto_rows=len(merged["kto"]), sft_rows=len(merged["sft"]), rows_by_source=by_source,
            traces=len(trace_ids), validation=str(final / "validation" / "validation.json"),
            outcome=f"snapshot {final.name} written",
        )
        store.dump(tmp / "manifest.json", {
            "version": final.name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "previous": result["previous"], "base_dataset": base_dataset(config) if folder is None else "",
            "content_hash": content_hash, "files": {"preference": "data.parquet", "kto": "kto.parquet",
                                                    "sft": "sft.parquet", "traces": "traces.txt"},
            "counts": {"rows": len(preference), "feedback_rows": result["feedback_rows"],
                       "rows_by_source": by_source, "kto_rows": len(merged["kto"]), "sft_rows": len(merged["sft"]),
                       "new_rows": result["new_rows"], "dropped": result["dropped"], "pii_hits": result["pii_hits"],
                       "read": result["read"]},
            "watermark": read["watermark"], "retention_days": config.retention_days, "pii": config.pii_mode,
            "policy": config.policy, "trace_count": len(trace_ids),
            "traces": trace_ids if len(trace_ids) <= INLINE_TRACES else None,
            "validation": {"valid": validation["valid"], "warnings": validation["warnings"]},
        })
        (tmp / "report.html").write_text(report.render(result), encoding="utf-8")
        store.publish(tmp, root, version, content_hash)
    except BaseException:
        store.discard(tmp)
        raise
    store.clear_cursor(root)
    log.info("curate: %s: %d pairs (%d from feedback), %d KTO, %d SFT rows; hash %s", final.name, len(preference),
             result["feedback_rows"], len(merged["kto"]), len(merged["sft"]), content_hash[:12])
    return _finish(result, report_dir, started)


def _finish(result: dict[str, Any], report_dir: str, started: float) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    result["report"] = write_text(f"{report_dir}/report.html", report.render(result))
    result["seconds"] = round(time.monotonic() - started, 3)
    log.info("curate: %s (%.1f s); report %s", result["outcome"], result["seconds"], result["report"])
    try:
        result["mlflow_run_url"] = tracking.record_step(
            "curate", {"experiment": result["experiment"], "snapshot_root": result["snapshot_root"],
                       "written": result["written"], "version": result.get("version", ""),
                       "content_hash": result.get("content_hash", "")},
            {"rows": result.get("rows", 0), "feedback_rows": result.get("feedback_rows", 0),
             "traces_read": result["read"].get("traces read", 0), "new_rows": sum(result["new_rows"].values())},
            [result["report"]])
    except (MlflowException, OSError) as exc:  # the snapshot is written: a retry would find nothing new
        log.warning("curate: could not record the MLflow step run: %s", exc)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [result.get("outcome", "")]
    if result.get("written"):
        lines.append(f"  snapshot  {result['uri']} ({result['rows']} pairs, {result['feedback_rows']} from feedback, "
                     f"{result['kto_rows']} KTO, {result['sft_rows']} SFT)")
    lines.append(f"  read      {result['read']}")
    lines.append(f"  new       {result.get('new_rows', {})}")
    lines.append(f"  dropped   {result.get('dropped', {})}")
    lines.append(f"  report    {result['report']}")
    return "\n".join(lines)


def command():
    from llmops_tasks.core.command import Command

    return Command(CurateConfig, run, "turn traced feedback into a validated, versioned preference snapshot",
                   render=render)
