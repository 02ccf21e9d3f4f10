"""How fast, and in how much memory, `validate` and `eda` get through a large preference data set.

Generates ``--rows`` rows (default 1,000,000) of realistic preference JSONL in a temporary folder
(varied prompts and answers, a source column, a few duplicates and PII hits, as real exports have),
(``--format parquet``: the same rows written to Parquet in row groups of 65,536), then runs each
phase in its own subprocess so its peak RSS (``resource.getrusage``) is its own:

    pandas   plain ``pandas.read_json(path, lines=True)`` (``pandas.read_parquet``): the baseline
    validate ``llmops_tasks.validate.run`` with its defaults (GX per chunk, quarantine, Data Docs)
    eda      ``llmops_tasks.eda.run``

and prints seconds, rows/s, peak RSS and the time ratio to the pandas read measured in the same run,
and whether each phase meets the targets: 1M rows within 4 GB peak RSS and at most 3x the plain read.

    .venv/bin/python bench/validate_scale.py --rows 200000 [--format parquet]
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


MAX_RATIO = 3.0  # at most this many times the plain pandas read
MAX_PEAK_MIB = 4096  # peak RSS of a phase

PHASES = {
    "pandas": ("import pandas as pd\n"
               "frame = pd.read_parquet(PATH) if PATH.endswith('.parquet') else pd.read_json(PATH, lines=True)\n"
               "rows = len(frame)"),
    "validate": (
        "from llmops_tasks.validate import ValidateConfig, run\n"
        "from llmops_tasks.core.errors import StepFailed\n"
        "try:\n"
        "    result = run(ValidateConfig(dataset=PATH, report_dir=OUT + '/validate'))\n"
        "except StepFailed as exc:\n"
        "    result = exc.result\n"
        "rows = result['rows']; extra = {'failed_rules': result['failed_rules'], "
        "'quarantined_rows': result.get('quarantined_rows')}"
    ),
    "eda": (
        "from llmops_tasks.eda import EdaConfig, run\n"
        "rows = run(EdaConfig(dataset=PATH, out=OUT + '/eda'))['rows']"
    ),
}

CHILD = """
import json, resource, sys, time
PATH, OUT = sys.argv[1], sys.argv[2]
extra = {{}}
start = time.perf_counter()
{body}
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "rows": rows, "peak_mib": peak_kib / 1024, **extra}}))
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


def run_phase(name: str, path: str, out: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(body=PHASES[name]), path, out],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate (default 1000000)")
    parser.add_argument("--phases", default="pandas,validate,eda", help="comma-separated: pandas, validate, eda")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="file format read (default jsonl)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        path = os.path.join(tmp, "preference.jsonl")
        start = time.perf_counter()
        size = generate(path, args.rows)
        if args.format == "parquet":
            jsonl, path = path, os.path.join(tmp, "preference.parquet")
            size = to_parquet(jsonl, path)
            os.remove(jsonl)
        print(f"generated {args.rows:,} rows, {args.format}, {size / 2**20:,.1f} MiB in "
              f"{time.perf_counter() - start:.1f}s")
        results = {}
        for name in args.phases.split(","):
            results[name] = run_phase(name.strip(), path, tmp)
            r = results[name]
            ratio = r["seconds"] / results["pandas"]["seconds"] if "pandas" in results and name != "pandas" else None
            verdict = ""
            if ratio is not None:
                met = ratio <= MAX_RATIO and r["peak_mib"] <= MAX_PEAK_MIB
                verdict = f"  target ({MAX_RATIO:g}x, {MAX_PEAK_MIB:,} MiB) {'met' if met else 'MISSED'}"
            print(f"{name:9s} {r['seconds']:8.1f}s  {r['rows'] / r['seconds']:10,.0f} rows/s  "
                  f"peak RSS {r['peak_mib']:8,.0f} MiB"
                  + (f"  ratio to pandas {ratio:5.2f}x" if ratio is not None else "")
                  + verdict
                  + (f"  failed_rules={r['failed_rules']} quarantined={r['quarantined_rows']}"
                     if "failed_rules" in r else ""))


if __name__ == "__main__":
    main()
