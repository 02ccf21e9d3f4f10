"""How fast, and in how much memory, `validate` and `eda` get through a large preference data set.

Generates ``--rows`` rows (default 1,000,000) of realistic preference JSONL in a temporary folder
(varied prompts and answers, a source column, a few duplicates and PII hits, as real exports have),
(``--format parquet``: the same rows written to Parquet in row groups of 65,536), then runs each
phase in its own fresh interpreter so its peak RSS (``resource.getrusage``) and its imports are
its own:

    pyarrow  ``pyarrow.json.read_json`` of the file (``--block-size``; ``pyarrow.parquet.read_table``
             for Parquet): the fastest reader, the anchor of the targets
    pandas   plain ``pandas.read_json(path, lines=True)`` (``pandas.read_parquet``)
    validate ``llmops_tasks.validate.run`` with its defaults (GX per chunk, quarantine, Data Docs)
    eda      ``llmops_tasks.eda.run``

Each phase's time is split: ``import`` (its modules, in that fresh interpreter), ``work`` (the
call itself) and, for validate, ``docs`` (the Data Docs build inside the call, timed by wrapping
``llmops_tasks.validate.datadocs.build``). A fixed cost that does not grow with the rows is also
measured on a tiny file (``--fixed-rows``, default 1,000) and printed apart. Ratios are against
both baselines measured in the same run (wall time including imports, and work alone), and each
step is checked against the targets: 1M rows within 4 GB peak RSS, ``validate`` at most 4x and
``eda`` at most 3x the pyarrow read. ``--profile validate,eda`` adds the top functions of a
cProfile run of those phases (slower; its times are not the bench's).

    .venv/bin/python bench/validate_scale.py --rows 200000 [--format parquet] [--json-out summary.json]
"""


from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

TOPICS = ["reset my password", "export a report to CSV", "rotate the API credentials", "merge two accounts",
          "schedule a weekly backup", "change the billing address", "undo a deleted project",
          "connect the warehouse", "speed up a slow dashboard", "limit access for contractors"]
PRODUCTS = ["the admin console", "the mobile app", "the CLI", "the reporting service", "the sync agent"]
SOURCES = ["support_tickets", "chat_logs", "community_forum", "synthetic"]
STEPS = ["open Settings", "choose Security", "select the workspace", "click Save", "confirm by email",
         "wait for the job to finish", "refresh the page", "check the audit log", "ask an owner to approve"]


def generate(path: str, rows: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            topic, product = rng.choice(TOPICS), rng.choice(PRODUCTS)
            prompt = f"How do I {topic} in {product}? I tried twice since version {rng.randint(1, 9)} and it fails."
            steps = rng.sample(STEPS, k=rng.randint(3, 6))
            chosen = (f"To {topic} in {product}: " + ", then ".join(steps)
                      + f". If it still fails, send us request number {rng.randint(10_000, 99_999)}.")
            rejected = rng.choice([f"Just {steps[0]}.", "Try again later.",
                                   f"I don't know how to {topic}.", f"Reinstall {product} and hope."])
            if i % 5000 == 17:  # a few personal data hits, as real exports have
                chosen += " Or mail ops-team@example.com."
            row = {"id": f"row-{i}", "prompt": prompt + f" (case {i})", "chosen": chosen, "rejected": rejected,
                   "source": rng.choice(SOURCES)}
            handle.write(json.dumps(row) + "\n")
    return os.path.getsize(path)


MAX_RATIO = {"validate": 4.0, "eda": 3.0}  # at most this many times the pyarrow read of the same file
MAX_PEAK_MIB = 4096  # peak RSS of a phase
BASELINES = ("pyarrow", "pandas")

# Each phase: (imports, work). The imports are timed apart; the work is what grows with the rows.
PHASES = {
    "pyarrow": ("""
import pyarrow.json as pj
import pyarrow.parquet as pq
""", """
if PATH.endswith(".parquet"):
    table = pq.read_table(PATH)
else:
    table = pj.read_json(PATH, read_options=pj.ReadOptions(block_size=BLOCK))
rows = table.num_rows
"""),
    "pandas": ("""
import pandas as pd
""", """
frame = pd.read_parquet(PATH) if PATH.endswith(".parquet") else pd.read_json(PATH, lines=True)
rows = len(frame)
"""),
    "validate": ("""
import great_expectations
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.validate import ValidateConfig, datadocs, run
_build = datadocs.build
def _timed_build(*args, **kwargs):  # the Data Docs build, timed apart (validate does not report it)
    began = time.perf_counter()
    try:
        return _build(*args, **kwargs)
    finally:
        extra["docs_s"] = extra.get("docs_s", 0.0) + time.perf_counter() - began
datadocs.build = _timed_build
""", """
try:
    result = run(ValidateConfig(dataset=PATH, report_dir=OUT + "/validate"))
except StepFailed as exc:
    result = exc.result
rows = result["rows"]
extra.update({"failed_rules": result["failed_rules"], "quarantined_rows": result.get("quarantined_rows")})
"""),
    "eda": ("""
from llmops_tasks.eda import EdaConfig, run
""", """
rows = run(EdaConfig(dataset=PATH, out=OUT + "/eda"))["rows"]
"""),
}

CHILD = """
import json, os, resource, sys, time
PATH, OUT, BLOCK, PROFILE = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
extra = {{}}
began = time.perf_counter()
{imports}
imported = time.perf_counter()
if PROFILE:
    import cProfile, io, pstats
    profiler = cProfile.Profile()
    profiler.enable()
{work}
seconds = time.perf_counter() - imported
if PROFILE:
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    extra["profile"] = text.getvalue()
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "import_s": imported - began, "rows": rows,
                  "peak_mib": peak_kib / 1024, **extra}}))
"""


def to_parquet(jsonl: str, path: str) -> int:
    """The generated rows as Parquet (string columns, row groups of 65,536), written in batches."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.string()) for name in ("id", "prompt", "chosen", "rejected", "source")])
    with pq.ParquetWriter(path, schema) as writer:
        reader = pj.open_json(jsonl, parse_options=pj.ParseOptions(explicit_schema=schema))
        for batch in reader:
            writer.write_table(pa.Table.from_batches([batch]), row_group_size=65_536)
    return os.path.getsize(path)


def isolated_env(home: str) -> dict[str, str]:
    """The bench's own MLflow store and artifacts (under ``home``), whatever the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "MLFLOW_"))}
    env["LLMOPS_HOME"] = home
    return env


def run_phase(name: str, path: str, out: str, block_size: int, profile: bool = False) -> dict:
    """One phase in a fresh interpreter (its own imports and peak RSS); its own output folder."""
    imports, work = PHASES[name]
    folder = tempfile.mkdtemp(prefix=f"{name}-", dir=out)
    child = CHILD.format(imports=imports.strip(), work=work.strip())
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", child, path, folder, str(block_size), "1" if profile else "0"],
                          capture_output=True, text=True, check=False, env=isolated_env(os.path.join(out, "home")))
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started  # the interpreter's start and exit too
    return result


def make_data(folder: str, rows: int, fmt: str) -> tuple[str, int]:
    path = os.path.join(folder, "preference.jsonl")
    size = generate(path, rows)
    if fmt == "parquet":
        jsonl, path = path, os.path.join(folder, "preference.parquet")
        size = to_parquet(jsonl, path)
        os.remove(jsonl)
    return path, size


def _ratio(value: float, base: float | None) -> float | None:
    return value / base if base else None


def _x(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate (default 1000000)")
    parser.add_argument("--phases", default="pyarrow,pandas,validate,eda",
                        help="comma-separated: pyarrow, pandas, validate, eda (default all)")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="file format read (default jsonl)")
    parser.add_argument("--block-size", type=int, default=16 << 20,
                        help="pyarrow.json block size in bytes (default 16 MiB: blocks big enough to amortize, "
                             "enough of them to keep every core busy)")
    parser.add_argument("--fixed-rows", type=int, default=1_000,
                        help="rows of the tiny file whose run is the steps' fixed cost (0: skip)")
    parser.add_argument("--profile", default="", help="comma-separated steps to run once more under cProfile")
    parser.add_argument("--json-out", default="", help="write the figures as JSON here too")
    args = parser.parse_args()
    names = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = sorted(set(names) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {unknown}; expected some of {list(PHASES)}")
    summary: dict = {"rows": args.rows, "format": args.format, "block_size": args.block_size, "phases": {},
                     "fixed": {}, "profiles": {}}
    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        start = time.perf_counter()
        path, size = make_data(tmp, args.rows, args.format)
        summary["file_mib"] = size / 2**20
        print(f"generated {args.rows:,} rows, {args.format}, {size / 2**20:,.1f} MiB in "
              f"{time.perf_counter() - start:.1f}s")
        results = summary["phases"]
        if {"validate", "eda"} & set(names):  # the MLflow store both steps record into, made before timing
            subprocess.run([sys.executable, "-c", "from llmops_tasks.core import tracking; tracking.client()"],
                           check=True, env=isolated_env(os.path.join(tmp, "home")))
        for name in names:
            results[name] = r = run_phase(name, path, tmp, args.block_size)
            total = r["import_s"] + r["seconds"]
            line = (f"{name:9s} total {total:7.2f}s = import {r['import_s']:5.2f}s + work {r['seconds']:7.2f}s"
                    + (f" (docs {r['docs_s']:.2f}s)" if "docs_s" in r else "")
                    + f"  {r['rows'] / r['seconds']:10,.0f} rows/s  peak RSS {r['peak_mib']:7,.0f} MiB")
            for base in BASELINES:
                if base in results and base != name:
                    b = results[base]
                    r[f"ratio_{base}"] = _ratio(total, b["import_s"] + b["seconds"])
                    r[f"work_ratio_{base}"] = _ratio(r["seconds"], b["seconds"])
                    line += f"  /{base} {_x(r[f'ratio_{base}'])} (work {_x(r[f'work_ratio_{base}'])})"
            if name in MAX_RATIO and "pyarrow" in results:
                met = r["ratio_pyarrow"] <= MAX_RATIO[name] and r["peak_mib"] <= MAX_PEAK_MIB
                r["target_met"] = met
                line += f"  target ({MAX_RATIO[name]:g}x pyarrow, {MAX_PEAK_MIB:,} MiB) {'met' if met else 'MISSED'}"
            if "failed_rules" in r:
                line += f"  failed_rules={r['failed_rules']} quarantined={r['quarantined_rows']}"
            print(line, flush=True)
        steps = [name for name in names if name in ("validate", "eda")]
        if args.fixed_rows and steps:
            tiny = tempfile.mkdtemp(prefix="fixed-", dir=tmp)
            tiny_path, _ = make_data(tiny, args.fixed_rows, args.format)
            os.symlink(os.path.join(tmp, "home"), os.path.join(tiny, "home"))
            for name in steps:
                summary["fixed"][name] = f = run_phase(name, tiny_path, tiny, args.block_size)
                print(f"fixed cost of {name} ({args.fixed_rows:,} rows): import {f['import_s']:.2f}s + "
                      f"work {f['seconds']:.2f}s" + (f" (docs {f['docs_s']:.2f}s)" if "docs_s" in f else ""),
                      flush=True)
        for name in [n.strip() for n in args.profile.split(",") if n.strip()]:
            profiled = run_phase(name, path, tmp, args.block_size, profile=True)
            summary["profiles"][name] = profiled["profile"]
            print(f"--- cProfile of {name} (work {profiled['seconds']:.1f}s under the profiler), top by own time\n"
                  + profiled["profile"], flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
