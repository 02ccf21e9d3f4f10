"""How fast, and in how much memory, `llmops monitor` gets through one window of many traces.

Builds ``--traces`` production traces (default 20,000) in one window of a fresh SQLite MLflow
store, with a registered production version whose lineage names its training prompts and eval
answers (``monitoring.synthetic.register_production``), then runs each phase in its own fresh
interpreter, so its peak RSS (``resource.getrusage``) and its imports are its own:

    read      ``serving.traces.search`` over the window, touching each answer's prompt, answer,
              numbers and assessments: the rows of those traces through the contract monitoring
              reads them by, and nothing else
    monitor   ``llmops_tasks.monitoring.run`` on that window: the same read, then every signal,
              the policy, the MLflow metrics, the report
    compute   the column-wise part alone (``window.measure`` and ``judge`` on the same traffic built
              in memory, no store): what monitoring adds per trace beyond the read

Populating: writing a million traces through ``record_answer`` takes hours on SQLite, so one
trace of each shape is written through exactly that function (a plain answer, a thumbed-down and
a thumbed-up answer, a failed request) and its rows in MLflow's tables are cloned with new ids, prompts,
answers and times in bulk (as ``bench/curation_scale.py`` does), so the rows read back are the
rows the real code path writes. Prompts and answers come from ``monitoring.synthetic``; every
200th answer holds an email address.

Targets: at 1M traces within 4 GB peak RSS, and monitor at most 3x the read.

    .venv/bin/python bench/monitor_scale.py --traces 1000000 [--json-out summary.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time

MODEL = "bench-model"
EXPERIMENT = f"{MODEL}-traffic"
KINDS = ("plain", "down", "up", "error")


def _env(folder: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "LLMOPS_HOME": folder,
            "LLMOPS_ARTIFACT_ROOT": f"{folder}/artifacts", "LLMOPS_MLFLOW_ARTIFACTS": f"{folder}/mlartifacts",
            "LLMOPS_MODEL_NAME": MODEL, "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}


def _kind(i: int) -> str:
    if i % 500 == 7:
        return "error"
    return {3: "down", 1: "up", 5: "up", 8: "up"}.get(i % 10, "plain")  # a quarter of the thumbs are down


def _record(i: int, rng: random.Random) -> tuple[str, str]:
    from llmops_tasks.monitoring import synthetic

    answer = synthetic.pii_answer(rng) if i % 200 == 0 else synthetic.answer(rng)
    return synthetic.prompt(rng), answer


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _window_end(folder: str) -> int:
    with open(os.path.join(folder, "window.json"), encoding="utf-8") as handle:
        return json.load(handle)["end_ms"]


def populate(folder: str, count: int) -> dict:
    """Write one trace of each shape through the real code path, then clone their rows."""
    os.environ.update(_env(folder))
    from pathlib import Path

    import mlflow

    from llmops_tasks.core import tracking
    from llmops_tasks.monitoring import synthetic
    from llmops_tasks.serving import traces

    started = time.monotonic()
    client = tracking.client()
    synthetic.register_production(Path(folder), MODEL, client)
    experiment = tracking.get_or_create_experiment(EXPERIMENT, client)
    templates = []
    for kind in KINDS:
        now = time.time_ns()
        templates.append(traces.record_answer(
            prompt=f"TEMPLATEPROMPT{kind}", answer=None if kind == "error" else f"TEMPLATEANSWER{kind}",
            model_name=MODEL, model_version="1", model_uri=f"models:/{MODEL}@production", tokens_in=12,
            tokens_out=14, start_ns=now, end_ns=now + 350_000_000, experiment_id=experiment,
            error="CUDA out of memory" if kind == "error" else None))
    mlflow.log_feedback(trace_id=templates[1], name="user_thumbs", value=False)
    mlflow.log_feedback(trace_id=templates[2], name="user_thumbs", value=True)
    db = sqlite3.connect(f"{folder}/mlflow.db")
    tables = {"trace_info": "request_id", "trace_tags": "request_id", "trace_request_metadata": "request_id",
              "spans": "trace_id", "assessments": "trace_id"}
    names = {table: [r[1] for r in db.execute(f"PRAGMA table_info({table})")] for table in tables}
    shapes = {kind: {table: db.execute(f"SELECT {', '.join(names[table])} FROM {table} WHERE {column} = ?",
                                       (trace_id,)).fetchall() for table, column in tables.items()}
              for trace_id, kind in zip(templates, KINDS)}
    template_ms = {kind: shapes[kind]["trace_info"][0][2] for kind in KINDS}
    keys = {kind: dict(db.execute("SELECT key, value FROM trace_request_metadata WHERE request_id = ?",
                                  (t,)).fetchall())["llmops.prompt_key"] for t, kind in zip(templates, KINDS)}
    for table, column in tables.items():
        db.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(templates))})", templates)
    # One window, on whole hours, two days ahead (out of the version's retraining cooldown).
    hour = synthetic.HOUR_MS
    end_ms = (int(time.time() * 1000) // hour + 48) * hour
    start_ms = end_ms - hour
    step = hour / max(count, 1)
    rng = random.Random(0)
    batch: dict[str, list] = {table: [] for table in tables}
    for i in range(count):
        kind = _kind(i)
        prompt, answer = _record(i, rng)
        new_id = "tr-%032x" % (i + 1)
        ms = start_ms + int(i * step)
        strings = [(templates[KINDS.index(kind)], new_id), (f"TEMPLATEPROMPT{kind}", prompt),
                   (f"TEMPLATEANSWER{kind}", answer), (keys[kind], traces.prompt_key(prompt))]
        for table in tables:
            for row in shapes[kind][table]:
                batch[table].append(tuple(_swap(v, strings, template_ms[kind], ms, i) for v in row))
        if len(batch["trace_info"]) >= 20_000 or i == count - 1:
            for table, rows in batch.items():
                if rows:
                    db.executemany(f"INSERT INTO {table} ({', '.join(names[table])}) "
                                   f"VALUES ({','.join('?' * len(names[table]))})", rows)
            db.commit()
            batch = {table: [] for table in tables}
            print(f"populate: {i + 1:,}/{count:,} traces", flush=True)
    db.close()
    with open(os.path.join(folder, "window.json"), "w", encoding="utf-8") as handle:
        json.dump({"end_ms": end_ms}, handle)
    return {"seconds": round(time.monotonic() - started, 1), "db_mib": round(os.path.getsize(f"{folder}/mlflow.db") / 2**20)}


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


def phase_read(folder: str) -> dict:
    os.environ.update(_env(folder))
    started = time.monotonic()
    from llmops_tasks.core import tracking
    from llmops_tasks.serving import traces

    experiment = tracking.get_or_create_experiment(EXPERIMENT, create=False)
    end = _window_end(folder)
    imported = time.monotonic()
    count = votes = chars = 0
    for answer in traces.search(experiment, since_ms=end - 3600 * 1000, until_ms=end):
        count += 1
        votes += len(answer.assessments)
        chars += len(answer.answer or "") + len(str(answer.prompt)) + int(answer.latency_ms > 0)
    done = time.monotonic()
    return {"traces": count, "assessments": votes, "import_s": round(imported - started, 2),
            "work_s": round(done - imported, 2), "seconds": round(done - started, 2), "peak_rss_mib": round(_peak_mib())}


def phase_monitor(folder: str) -> dict:
    os.environ.update(_env(folder))
    started = time.monotonic()
    from llmops_tasks import monitoring
    from llmops_tasks.core.config import load

    imported = time.monotonic()
    config = load(monitoring.MonitorConfig, None, {"window": "1h", "end": str(_window_end(folder)),
                                                   "out_dir": f"{folder}/monitor"})
    result = monitoring.run(config)
    done = time.monotonic()
    return {"requests": result["requests"], "fired": result["versions"].get("1", {}).get("fired"),
            "import_s": round(imported - started, 2), "work_s": round(done - imported, 2),
            "seconds": round(done - started, 2), "peak_rss_mib": round(_peak_mib())}


def phase_compute(folder: str, count: int) -> dict:
    os.environ.update(_env(folder))
    import numpy as np

    from llmops_tasks.monitoring import policy, reference, window
    from llmops_tasks.monitoring.traffic import Traffic

    started = time.monotonic()
    rng = random.Random(0)
    prompts, answers = [], []
    for i in range(count):
        prompt, answer = _record(i, rng)
        prompts.append(prompt)
        answers.append(None if _kind(i) == "error" else answer)
    kinds = np.array([_kind(i) for i in range(count)])
    traffic = Traffic(trace_ids=["tr-%032x" % (i + 1) for i in range(count)],
                      timestamps_ms=np.arange(count, dtype=np.int64), prompts=prompts, answers=answers,
                      versions=["1"] * count, tokens_in=np.full(count, 12), tokens_out=np.full(count, 14),
                      latency_ms=np.full(count, 350.0), error=kinds == "error",
                      thumbs=np.where(kinds == "down", 0.0, np.where(kinds == "up", 1.0, np.nan)), rating=np.full(count, np.nan),
                      corrected=np.zeros(count, dtype=bool))
    rules = policy.load(policy.policy_file())
    ref = reference.load(MODEL, "1")
    built = time.monotonic()
    found = window.measure(traffic, ref, rules)
    window.judge(found, traffic.n, rules)
    done = time.monotonic()
    return {"fired": sorted(n for n, s in found.items() if s.fired), "build_s": round(built - started, 2),
            "work_s": round(done - built, 2), "peak_rss_mib": round(_peak_mib())}


def false_alarms(folder: str, windows: int, size: int) -> dict:
    """Clean windows (traffic drawn like the training data) through ``window.measure`` / ``judge``
    with the shipped policy, no store: how many fire a signal by chance."""
    os.environ.update(_env(folder))
    import numpy as np

    from llmops_tasks.monitoring import policy, reference, synthetic, window
    from llmops_tasks.monitoring.traffic import Traffic

    rules = policy.load(policy.policy_file())
    ref = reference.load(MODEL, "1")
    rng = random.Random(42)
    fired: dict[str, int] = {}
    noisy = 0
    for _ in range(windows):
        prompts = [synthetic.prompt(rng) for _ in range(size)]
        answers = [synthetic.answer(rng) for _ in range(size)]
        thumbs = np.array([rng.random() < 0.15 for _ in range(size)], dtype=float)  # 15% down: the baseline
        traffic = Traffic(trace_ids=[str(i) for i in range(size)], timestamps_ms=np.arange(size), prompts=prompts,
                          answers=answers, versions=["1"] * size, tokens_in=np.full(size, 12),
                          tokens_out=np.full(size, 14), latency_ms=np.full(size, 350.0),
                          error=np.zeros(size, dtype=bool), thumbs=np.where(thumbs == 1, 0.0, 1.0),
                          rating=np.array([float(rng.randint(3, 5)) for _ in range(size)]),
                          corrected=np.zeros(size, dtype=bool))
        found = window.measure(traffic, ref, rules)
        window.judge(found, size, rules)
        names = [n for n, s in found.items() if s.fired]
        noisy += bool(names)
        for name in names:
            fired[name] = fired.get(name, 0) + 1
    return {"windows": windows, "requests_per_window": size, "windows_that_fired": noisy,
            "false_alarm_rate": round(noisy / windows, 4), "by_signal": fired}


def _child(phase: str, folder: str, count: int, extra: tuple[str, ...] = ()) -> dict:
    out = os.path.join(folder, f"{phase}.json")
    subprocess.run([sys.executable, __file__, "--phase", phase, "--folder", folder, "--traces", str(count),
                    "--json-out", out, *extra], check=True)
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--json-out", default="")
    parser.add_argument("--keep", default="", help="build the store in this folder and keep it")
    parser.add_argument("--clean-windows", type=int, default=200,
                        help="clean windows of --window-size requests for the false-alarm rate (0: skip)")
    parser.add_argument("--window-size", type=int, default=100)
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = {"populate": lambda: populate(args.folder, args.traces), "read": lambda: phase_read(args.folder),
                  "monitor": lambda: phase_monitor(args.folder),
                  "compute": lambda: phase_compute(args.folder, args.traces),
                  "false_alarms": lambda: false_alarms(args.folder, args.clean_windows, args.window_size)}[args.phase]()
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        return 0
    import _scratch

    with _scratch.folder(args.keep, "monitor-bench-") as folder:
        return _run(args, folder)


def _run(args, folder: str) -> int:
    summary: dict = {"traces": args.traces}
    for phase in ("populate", "read", "monitor", "compute"):
        summary[phase] = _child(phase, folder, args.traces)
        print(f"{phase}: {json.dumps(summary[phase])}", flush=True)
    if args.clean_windows:
        summary["false_alarms"] = _child("false_alarms", folder, args.traces, (
            "--clean-windows", str(args.clean_windows), "--window-size", str(args.window_size)))
        print(f"false_alarms: {json.dumps(summary['false_alarms'])}", flush=True)
    read, monitor = summary["read"], summary["monitor"]
    summary["monitor_over_read"] = round(monitor["seconds"] / read["seconds"], 2)
    summary["monitor_work_over_read_work"] = round(monitor["work_s"] / read["work_s"], 2)
    summary["targets"] = {"monitor at most 3x the read": summary["monitor_over_read"] <= 3,
                          "peak RSS within 4 GB": max(read["peak_rss_mib"], monitor["peak_rss_mib"],
                                                      summary["compute"]["peak_rss_mib"]) <= 4096}
    print(f"traces {args.traces:,}: read {read['seconds']} s ({read['peak_rss_mib']} MiB), monitor "
          f"{monitor['seconds']} s ({monitor['peak_rss_mib']} MiB), ratio {summary['monitor_over_read']} "
          f"(work only {summary['monitor_work_over_read_work']}); signals alone {summary['compute']['work_s']} s "
          f"({summary['compute']['peak_rss_mib']} MiB); fired {monitor['fired']}; targets {summary['targets']}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
