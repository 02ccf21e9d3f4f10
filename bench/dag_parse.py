"""What a DAG file costs the scheduler to parse, against the cost of `airflow.sdk` itself.

Each measurement runs in a fresh interpreter (imports are cached per process). Prints, per DAG
file: the baseline (python + `from airflow.sdk import dag, task, Param`), the file's own import
cost on top of it, their ratio, and which of the libraries a parse must not load it loaded; then
DagBag's parse of the whole folder; then the cost of the ``llmops`` plugin, which every Airflow
component loads (the DAG processor before it forks its parsing processes, each task process).
Target: a file's own cost under 300 ms on a 2-core machine.

    python bench/dag_parse.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Loaded by the API server (FastAPI) or in the kubernetes mode (the client), never by an embedded parse.
NOT_AT_PARSE = ("fastapi", "starlette", "kubernetes")

PROBE = f"NOT_AT_PARSE = {NOT_AT_PARSE!r}" + """
import json, sys, time
t0 = time.perf_counter()
from airflow.sdk import dag, task, Param  # noqa: F401
t1 = time.perf_counter()
if len(sys.argv) > 1:
    import importlib.util
    spec = importlib.util.spec_from_file_location("dag_under_bench", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
t2 = time.perf_counter()
print(json.dumps({"sdk": t1 - t0, "dag": t2 - t1, "loaded": [m for m in NOT_AT_PARSE if m in sys.modules]}))
"""

PLUGIN = f"NOT_AT_PARSE = {NOT_AT_PARSE!r}" + """
import json, sys, time
from airflow.sdk import dag, task, Param  # noqa: F401
t0 = time.perf_counter()
import llmops_airflow.plugin  # noqa: F401
print(json.dumps({"seconds": time.perf_counter() - t0, "loaded": [m for m in NOT_AT_PARSE if m in sys.modules]}))
"""

DAGBAG = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t0, "dags": len(bag.dags), "errors": len(bag.import_errors)}))
"""


def _probe(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import os
    import tempfile

    from llmops_tasks.local import embedded

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = embedded.airflow_env({**os.environ, "LLMOPS_HOME": tempfile.mkdtemp(prefix="llmops-bench-")})
    folder = embedded.dags_folder()
    files = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")

    print(f"{'file':<28} {'airflow.sdk (ms)':>17} {'own import (ms)':>16} {'ratio':>7}  loaded of {'/'.join(NOT_AT_PARSE)}")
    for path in files:
        runs = [_probe([PROBE, str(path)], env) for _ in range(args.repeat)]
        sdk = statistics.median(r["sdk"] for r in runs) * 1000
        own = statistics.median(r["dag"] for r in runs) * 1000
        print(f"{path.name:<28} {sdk:>17.0f} {own:>16.0f} {own / sdk:>7.2f}  {', '.join(runs[0]['loaded']) or 'none'}")
    bag = [_probe([DAGBAG, str(folder)], env) for _ in range(max(1, args.repeat // 2))]
    seconds = statistics.median(b["seconds"] for b in bag) * 1000
    print(f"DagBag({folder.name}/): {seconds:.0f} ms for {bag[0]['dags']} DAG(s), {bag[0]['errors']} import error(s)")
    plugin = [_probe([PLUGIN], env) for _ in range(args.repeat)]
    seconds = statistics.median(p["seconds"] for p in plugin) * 1000
    print(f"llmops plugin (every component): {seconds:.0f} ms on top of airflow.sdk, "
          f"loaded {', '.join(plugin[0]['loaded']) or 'none'} of {'/'.join(NOT_AT_PARSE)}")


if __name__ == "__main__":
    main()
