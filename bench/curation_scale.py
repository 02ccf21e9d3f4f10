"""How fast, and in how much memory, `llmops curate` gets through a large amount of feedback.

Builds ``--records`` feedback records (default 100,000) on as many production traces in a fresh
SQLite MLflow store, then runs each phase in its own fresh interpreter, so its peak RSS
(``resource.getrusage``) and its imports are its own:

    read     ``serving.traces.search`` over the whole traffic experiment, touching each answer's
             prompt, answer and assessments: reading those traces' rows from the store, through
             the contract curation reads it by (MLflow's ``search_traces`` with spans), and nothing else
    curate   ``llmops_tasks.curation.run``: the same read, then mining, PII, deduplication, the
             Great Expectations validation of the snapshot and writing it
    mine     the column-wise part alone (``mining.mine``, ``rows.finish``, PII, content keys) on the
             same records built in memory, no store: what curation adds per record beyond the read

Populating: writing a million traces one by one through ``record_answer`` and ``log_feedback``
takes hours on SQLite, so one trace of each shape is written through exactly those functions
(thumbs up, thumbs down, correction, pairwise preference) and its rows in MLflow's tables
(``trace_info``, ``trace_tags``, ``trace_request_metadata``, ``spans``, ``assessments``) are cloned
with new ids, prompts, answers and times in bulk. The rows read back are therefore the rows the real
code path writes. Records come in groups of four traces answering one prompt: up, down (a thumbs
pair), a correction (a pair and an SFT row) and a preference of the third answer over the second
(a pairwise pair); every 50th prompt carries an email address (redacted).

Targets: at 1M records within 4 GB peak RSS, and curate at most 3x the read.

    .venv/bin/python bench/curation_scale.py --records 100000 [--json-out summary.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time

EXPERIMENT = "bench-traffic"
KINDS = ("up", "down", "correction", "preferred")


def _env(folder: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "LLMOPS_HOME": folder,
            "LLMOPS_ARTIFACT_ROOT": f"{folder}/artifacts", "LLMOPS_MLFLOW_ARTIFACTS": f"{folder}/mlartifacts",
            "LLMOPS_TRAFFIC_EXPERIMENT": EXPERIMENT, "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}


def _record(i: int) -> tuple[str, str]:
    """(prompt, answer) of record ``i``: four answers per prompt."""
    group, kind = divmod(i, 4)
    contact = f" Reach me at user{group}@example.org." if group % 50 == 0 else ""
    prompt = f"How do I fix problem number {group} on system {group % 97}?{contact}"
    return prompt, f"Answer {kind} to problem {group}: try step {(group * 7 + kind) % 13}."


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- populate


def populate(folder: str, records: int) -> dict:
    """Write the four template traces through the real code path, then clone their rows."""
    os.environ.update(_env(folder))
    from llmops_tasks.core import tracking
    from llmops_tasks.feedback import FeedbackConfig, log_feedback
    from llmops_tasks.serving import traces

    started = time.monotonic()
    experiment = tracking.get_or_create_experiment(EXPERIMENT)
    templates = []
    for kind in KINDS:
        prompt, answer = f"TEMPLATEPROMPT{kind}", f"TEMPLATEANSWER{kind}"
        now = time.time_ns()
        templates.append(traces.record_answer(
            prompt=prompt, answer=answer, model_name="m", model_version="1", model_uri="models:/m@production",
            tokens_in=12, tokens_out=14, start_ns=now, end_ns=now + 5_000_000, experiment_id=experiment))
    for trace_id, kind in zip(templates, KINDS):
        settings = {"up": {"thumbs": "up"}, "down": {"thumbs": "down"},
                    "correction": {"correction": "TEMPLATECORRECTION"}, "preferred": {"preferred": templates[1]}}[kind]
        if kind == "preferred":  # a preference compares answers to one prompt: give the template the same key
            _same_prompt_key(folder, trace_id, templates[1])
        log_feedback(FeedbackConfig(trace_id=trace_id, by="bench-rater", **settings))
    db = sqlite3.connect(f"{folder}/mlflow.db")
    tables = {"trace_info": "request_id", "trace_tags": "request_id", "trace_request_metadata": "request_id",
              "spans": "trace_id", "assessments": "trace_id"}
    # the stored columns (table_info leaves out generated ones, which an INSERT may not name)
    names = {table: [r[1] for r in db.execute(f"PRAGMA table_info({table})")] for table in tables}
    shapes = {}
    for trace_id, kind in zip(templates, KINDS):
        shapes[kind] = {table: db.execute(f"SELECT {', '.join(names[table])} FROM {table} WHERE {column} = ?",
                                          (trace_id,)).fetchall() for table, column in tables.items()}
    base_ms = int(time.time() * 1000) - records - 60_000  # one ms apart, all in the past
    template_ms = {kind: shapes[kind]["trace_info"][0][2] for kind in KINDS}
    keys = {kind: dict(db.execute("SELECT key, value FROM trace_request_metadata WHERE request_id = ?",
                                  (t,)).fetchall())["llmops.prompt_key"] for t, kind in zip(templates, KINDS)}
    for table, column in tables.items():
        db.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(templates))})", templates)
    batch: dict[str, list] = {table: [] for table in tables}
    for i in range(records):
        kind = KINDS[i % 4]
        prompt, answer = _record(i)
        new_id = "tr-%032x" % (i + 1)
        group_down = "tr-%032x" % (i - 1)  # the id of record i - 2, this group's "down" answer (ids start at 1)
        ms = base_ms + i
        old_ms = template_ms[kind]
        strings = [(templates[KINDS.index(kind)], new_id), (f"TEMPLATEPROMPT{kind}", prompt),
                   (f"TEMPLATEANSWER{kind}", answer), (keys[kind], traces.prompt_key(prompt)),
                   ("TEMPLATECORRECTION", f"The right fix for problem {i // 4}: run step {i % 13}, then restart."),
                   (templates[1], group_down)]
        for table in tables:
            for row in shapes[kind][table]:
                batch[table].append(tuple(_swap(v, strings, old_ms, ms, i) for v in row))
        if len(batch["trace_info"]) >= 20_000 or i == records - 1:
            for table, rows in batch.items():
                if rows:
                    db.executemany(f"INSERT INTO {table} ({', '.join(names[table])}) "
                                   f"VALUES ({','.join('?' * len(names[table]))})", rows)
            db.commit()
            batch = {table: [] for table in tables}
            print(f"populate: {i + 1:,}/{records:,} traces", flush=True)
    db.close()
    return {"seconds": round(time.monotonic() - started, 1), "db_mib": round(os.path.getsize(f"{folder}/mlflow.db") / 2**20)}


def _same_prompt_key(folder: str, trace_id: str, like: str) -> None:
    db = sqlite3.connect(f"{folder}/mlflow.db")
    key = db.execute("SELECT value FROM trace_request_metadata WHERE request_id = ? AND key = 'llmops.prompt_key'",
                     (like,)).fetchone()[0]
    db.execute("UPDATE trace_request_metadata SET value = ? WHERE request_id = ? AND key = 'llmops.prompt_key'",
               (key, trace_id))
    db.commit()
    db.close()


def _swap(value, strings, old_ms: int, ms: int, i: int):
    if isinstance(value, str):
        if value.startswith("a-") and len(value) == 34:  # an assessment id
            return "a-%032x" % (i + 1)
        for old, new in strings:
            if old in value:
                value = value.replace(old, new)
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value == old_ms:
            return ms
        if abs(value - old_ms * 1_000_000) < 10**10:  # span times in ns
            return value - old_ms * 1_000_000 + ms * 1_000_000
        if abs(value - old_ms) < 600_000:  # assessment times just after the trace
            return value - old_ms + ms
    return value


# --------------------------------------------------------------------------- phases


def phase_read(folder: str) -> dict:
    os.environ.update(_env(folder))
    started = time.monotonic()
    from llmops_tasks.core import tracking
    from llmops_tasks.serving import traces

    experiment = tracking.get_or_create_experiment(EXPERIMENT, create=False)
    imported = time.monotonic()
    count = votes = chars = 0
    for answer in traces.search(experiment):
        count += 1
        votes += len(answer.assessments)
        chars += len(answer.answer or "") + len(str(answer.prompt))
    done = time.monotonic()
    return {"traces": count, "assessments": votes, "import_s": round(imported - started, 2),
            "work_s": round(done - imported, 2), "seconds": round(done - started, 2), "peak_rss_mib": round(_peak_mib())}


def phase_curate(folder: str) -> dict:
    os.environ.update(_env(folder))
    started = time.monotonic()
    from llmops_tasks.curation import CurateConfig, run

    imported = time.monotonic()
    result = run(CurateConfig(base_dataset="none", max_traces=0, snapshot_root=f"{folder}/snapshots",
                              report_dir=f"{folder}/report"))
    done = time.monotonic()
    return {"written": result["written"], "rows": result.get("rows"), "kto_rows": result.get("kto_rows"),
            "sft_rows": result.get("sft_rows"), "new_rows": result.get("new_rows"), "pii_hits": result.get("pii_hits"),
            "import_s": round(imported - started, 2), "work_s": round(done - imported, 2),
            "seconds": round(done - started, 2), "peak_rss_mib": round(_peak_mib())}


def phase_mine(records: int) -> dict:
    import pandas as pd

    from llmops_tasks import feedback
    from llmops_tasks.curation import mining, rows
    from llmops_tasks.serving.traces import prompt_key
    from llmops_tasks.text import pii

    started = time.monotonic()
    answers = {"trace_id": [], "prompt_key": [], "prompt": [], "answer": []}
    votes = {"trace_id": [], "name": [], "value": [], "by": [], "created_ms": []}
    for i in range(records):
        prompt, answer = _record(i)
        trace_id = "tr-%032x" % (i + 1)
        answers["trace_id"].append(trace_id)
        answers["prompt_key"].append(prompt_key(prompt))
        answers["prompt"].append(prompt)
        answers["answer"].append(answer)
        kind = KINDS[i % 4]
        name, value = {"up": (feedback.THUMBS, True), "down": (feedback.THUMBS, False),
                       "correction": (feedback.CORRECTION, f"The right fix for problem {i // 4}: run step {i % 13}."),
                       "preferred": (feedback.PREFERRED_OVER, "tr-%032x" % (i - 1))}[kind]
        for key, v in (("trace_id", trace_id), ("name", name), ("value", value), ("by", "r"), ("created_ms", i)):
            votes[key].append(v)
    a, v = pd.DataFrame(answers), pd.DataFrame(votes)
    built = time.monotonic()
    mined = mining.mine(a, v, rating_gap=2, max_pairs_per_prompt=8)
    prompts = a.set_index("trace_id")["prompt"]
    out = {kind: rows.finish(mined[key], prompts, kind) for kind, key in
           (("preference", "pairs"), ("kto", "kto"), ("sft", "sft"))}
    for kind, frame in list(out.items()):
        out[kind], _ = rows.apply_pii(frame, kind, "redact", list(pii.KINDS))
    done = time.monotonic()
    return {"pairs": len(out["preference"]), "kto": len(out["kto"]), "sft": len(out["sft"]),
            "build_s": round(built - started, 2), "work_s": round(done - built, 2), "peak_rss_mib": round(_peak_mib())}


def _child(phase: str, folder: str, records: int) -> dict:
    out = os.path.join(folder, f"{phase}.json")
    subprocess.run([sys.executable, __file__, "--phase", phase, "--folder", folder, "--records", str(records),
                    "--json-out", out], check=True)
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--json-out", default="")
    parser.add_argument("--keep", default="", help="build the store in this folder and keep it")
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = {"populate": lambda: populate(args.folder, args.records), "read": lambda: phase_read(args.folder),
                  "curate": lambda: phase_curate(args.folder), "mine": lambda: phase_mine(args.records)}[args.phase]()
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        return 0
    import _scratch

    with _scratch.folder(args.keep, "curation-bench-") as folder:
        return _run(args, folder)


def _run(args, folder: str) -> int:
    summary = {"records": args.records}
    for phase in ("populate", "read", "curate", "mine"):
        summary[phase] = _child(phase, folder, args.records)
        print(f"{phase}: {json.dumps(summary[phase])}", flush=True)
    read, curate = summary["read"], summary["curate"]
    summary["curate_over_read"] = round(curate["seconds"] / read["seconds"], 2)
    summary["curate_work_over_read_work"] = round(curate["work_s"] / read["work_s"], 2)
    summary["targets"] = {"curate at most 3x the read": summary["curate_over_read"] <= 3,
                          "peak RSS within 4 GB": max(read["peak_rss_mib"], curate["peak_rss_mib"],
                                                      summary["mine"]["peak_rss_mib"]) <= 4096}
    print(f"records {args.records:,}: read {read['seconds']} s ({read['peak_rss_mib']} MiB), curate "
          f"{curate['seconds']} s ({curate['peak_rss_mib']} MiB), ratio {summary['curate_over_read']} "
          f"(work only {summary['curate_work_over_read_work']}); mining alone {summary['mine']['work_s']} s "
          f"({summary['mine']['peak_rss_mib']} MiB); targets {summary['targets']}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
