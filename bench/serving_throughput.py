"""Serving throughput: ``llmops serve`` (HTTP, MLflow pyfunc, one trace per answer) against the bare model.

    .venv/bin/python bench/serving_throughput.py [--prompts 64] [--batch-size 16] [--max-new-tokens 32] [--json-out F]

In one run, on the same prompts from the sample data, ``--repeats`` times each (best time kept):

(a) the bare model: Hugging Face ``model.generate``, greedy, left-padded batches of ``--batch-size``;
(b) the server, batched: ``POST /invocations`` with ``--batch-size`` prompts per request, one after another;
(c) the server, one prompt per request, one after another;
(d) as (b) with the server's trace writing switched off: a diagnostic of what tracing costs;
(e) as (b), timed until every trace of its answers is in the store (the writer's flush).

The server runs in this process (uvicorn in a thread, on loopback) on a version registered in a
temporary MLflow store, with its traces written as in production: each answer's record handed to
the trace writer's process, which writes it with MLflow's async export to ``--store sqlite``
(default) the embedded mode's SQLite file, or ``--store server`` an ``mlflow server`` subprocess on
loopback over that file, the production layout.
Traces still being written when a way ends are flushed before the next way starts (untimed).
Prints answers/s, each way's ratio to (a) (target for (b): >= 0.9x), what tracing costs per answer
on the request's path, and how many served answers equal the bare model's; ``--json-out`` also
writes these figures as JSON (keys ``bare``, ``server_batched``, ``server_single``,
``server_batched_untraced``, ``server_batched_stored``). (d) is a diagnostic only (the served
command always traces): the gap between (b) and (d) is what tracing costs the server; (e) against
(b) says whether the writer keeps up with the answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def bare_generate(model_dir: str, prompts: list[str], *, batch_size: int, max_new_tokens: int):
    """(a): what a team would write with transformers alone; loaded once, outside the timing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()

    def run() -> list[str]:
        answers = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
                output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
                answers += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [a.strip() for a in answers]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steady on a shared CPU)")
    parser.add_argument("--model", default="", help="model folder; default: a fresh tiny model from the sample data")
    parser.add_argument("--store", choices=("sqlite", "server"), default="sqlite",
                        help="where traces go: the SQLite file from this process, or an mlflow server subprocess")
    parser.add_argument("--json-out", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llmops-bench-serve-") as tmp, \
            tracking_store(args.store, Path(tmp)) as uri:
        os.environ.update({
            "MLFLOW_TRACKING_URI": uri, "LLMOPS_HOME": tmp,
            "LLMOPS_MLFLOW_ARTIFACTS": f"{tmp}/mlartifacts", "LLMOPS_MODEL_NAME": "bench-serve",
        })
        os.environ.pop("LLMOPS_TRAFFIC_EXPERIMENT", None)
        bench(args, Path(tmp))


@contextlib.contextmanager
def tracking_store(kind: str, tmp: Path):
    """The tracking URI: the SQLite file, or an ``mlflow server`` on it (started here, stopped after)."""
    database = f"sqlite:///{tmp}/mlflow.db"
    if kind == "sqlite":
        yield database
        return
    from llmops_tasks.local.services import free_port

    port = free_port()
    log = open(tmp / "mlflow-server.log", "w")  # noqa: SIM115 (the server's output while it runs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", database, "--artifacts-destination", str(tmp / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("mlflow server did not start:\n" + (tmp / "mlflow-server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def bench(args, tmp: Path) -> None:
    import httpx
    import mlflow
    import torch

    from llmops_tasks.core import tracking
    from llmops_tasks.local import bootstrap, samples
    from llmops_tasks.serving import flavor
    from llmops_tasks.serving.server import ServeConfig, Server

    torch.set_num_threads(args.threads)
    rows = samples.preference_rows()
    prompts = [rows[i % len(rows)]["prompt"] for i in range(args.prompts)]
    model_dir = args.model or str(bootstrap.build_tiny_model(tmp / "tiny", samples.corpus_text()))

    client = tracking.client()
    with mlflow.start_run(experiment_id=tracking.get_or_create_experiment("bench-serve-models", client)):
        info = flavor.log_generator({"model": model_dir}, registered_model_name="bench-serve")
    client.set_registered_model_alias("bench-serve", "production", info.registered_model_version)
    server = Server(ServeConfig(port=0, max_batch_size=args.batch_size, max_prompts=max(args.batch_size, 1),
                                max_new_tokens=args.max_new_tokens, poll_interval=0, access_log=False)).start()
    service = server.service
    trace_ns: list[int] = []  # per answer: building its record and handing it to the trace writer
    write = service._write

    def timed_write(records):
        start = time.perf_counter_ns()
        try:
            return write(records)
        finally:
            trace_ns.extend([(time.perf_counter_ns() - start) // max(1, len(records))] * len(records))

    service._write = timed_write  # measure what tracing adds on the request's path
    bare = bare_generate(model_dir, prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    params = {"max_new_tokens": args.max_new_tokens}

    with httpx.Client(base_url=server.url, timeout=600) as http:
        def served(per_request: int) -> list[str]:
            answers = []
            for start in range(0, len(prompts), per_request):
                response = http.post("/invocations", json={"inputs": prompts[start:start + per_request], "params": params})
                response.raise_for_status()
                answers += [p["answer"] for p in response.json()["predictions"]]
            return answers

        def untraced() -> list[str]:  # diagnostic: what the traces cost, the same requests without them
            service._write = lambda records: None
            try:
                return served(args.batch_size)
            finally:
                service._write = timed_write

        def stored() -> list[str]:  # (b) until its traces are in the store, not only answered
            answers = served(args.batch_size)
            if not service.flush():
                raise SystemExit("the trace writer did not write the traces of (e)")
            return answers

        ways = {
            f"(a) bare model.generate, batches of {args.batch_size}": bare,
            f"(b) server, {args.batch_size} prompts per request": lambda: served(args.batch_size),
            "(c) server, 1 prompt per request": lambda: served(1),
            "(d) as (b), no traces (diagnostic)": untraced,
            "(e) as (b), until its traces are stored": stored,
        }
        bare(), served(min(2, len(prompts)))  # warm-up: first calls, kernels, the HTTP connection
        trace_ns.clear()
        best = {name: float("inf") for name in ways}
        answers: dict[str, list[str]] = {}
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                answers[name] = way()
                best[name] = min(best[name], time.perf_counter() - start)
                service.flush()  # untimed: no way's trace backlog runs into the next one's time
    writer_here = service.writer.in_process  # before stopping: a stopped writer writes here
    server.stop()

    names = list(ways)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"serving throughput, {args.prompts} prompts, max_new_tokens={args.max_new_tokens}, "
          f"{args.threads} torch thread(s), {device}, traces to {args.store}, best of {args.repeats}:")
    for name in names:
        ratio = best[names[0]] / best[name]
        print(f"  {name:44s} {best[name]:8.3f} s  {args.prompts / best[name]:8.1f} answers/s  {ratio:5.2f}x of (a)")
    if trace_ns:
        print(f"  tracing on the request's path: {sum(trace_ns) / len(trace_ns) / 1e6:.3f} ms per answer "
              f"(mean of {len(trace_ns)}; the trace writer's process writes them"
              f"{', here: it was not running' if writer_here else ''})")
    identical = {name: sum(a == b for a, b in zip(answers[names[0]], answers[name])) for name in names[1:]}
    for name, same in identical.items():
        print(f"  identical to (a): {name[:3]} {same}/{args.prompts}")
    if args.json_out:
        keys = dict(zip(names, ("bare", "server_batched", "server_single", "server_batched_untraced",
                                "server_batched_stored")))
        summary = {
            "prompts": args.prompts, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
            "threads": args.threads, "device": device, "repeats": args.repeats, "store": args.store,
            **{keys[n]: {"seconds": best[n], "answers_per_s": args.prompts / best[n],
                         "ratio_to_bare": best[names[0]] / best[n]} for n in names},
            "trace_ms_per_answer": sum(trace_ns) / len(trace_ns) / 1e6 if trace_ns else None,
            "trace_writer_process": not writer_here,
            "identical_to_bare": {keys[n]: same for n, same in identical.items()},
        }
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
