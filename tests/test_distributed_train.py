"""Two "nodes" on this machine, launched the way a Kubeflow Trainer TrainJob launches them.

Each node is its own ``torchrun --module llmops_tasks.cli train sft ...`` process group, started
with only the ``PET_*`` variables the Trainer's torch plugin injects into every node
(``PET_NNODES=2``, ``PET_NPROC_PER_NODE=1``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR=127.0.0.1``,
``PET_MASTER_PORT``): torchrun forms the rendezvous from them, the step trains in one gloo process
group on the CPU. Real TRL on the tiny model, MLflow on SQLite in a temp folder; nothing mocked.

Proven here: both ranks took part in the same process group (each rank's record in
``{output_dir}/ranks/``), rank 0 alone wrote the MLflow run, the result and the result log line;
the loss curve equals a one-process run with the same global batch within tolerance; a SIGKILL
of one rank after a checkpoint, then a rerun of both nodes (what a resubmitted TrainJob does),
resumes from that checkpoint and ends at ``max_steps``. The one-process reference runs while the
nodes start, to keep this file short; time per step is measured apart (ARCHITECTURE, Training).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops_tasks import train
from llmops_tasks.local.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_STEPS = 8
SAVE_STEPS = 2
GLOBAL_BATCH = 4
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def settings(workdir: dict, out: Path, per_device_batch: int) -> dict:
    return {"base_model": workdir["base"], "train_data": workdir["train_sft"], "output_dir": str(out),
            "trainer": {"max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 10, "logging_steps": 1,
                        "per_device_train_batch_size": per_device_batch, "max_length": 64},
            "system_metrics_interval": 0, "log_model": False}


def cli_args(values: dict) -> list[str]:
    args = ["train", "sft"]
    for key, value in values.items():
        if isinstance(value, dict):
            args += [a for name, item in value.items() for a in ("--" + key.replace("_", "-"), f"{name}={item}")]
        else:
            args += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def launch_nodes(values: dict, env: dict, logs: Path, tag: str) -> list[subprocess.Popen]:
    """One torchrun per "node", with what the TrainJob's torch runtime gives each node."""
    port = free_port()
    nodes = []
    for rank in (0, 1):
        node_env = {**env, "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
                    "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
        with open(logs / f"{tag}-node{rank}.log", "w") as out:
            nodes.append(subprocess.Popen([TORCHRUN, "--module", "llmops_tasks.cli", *cli_args(values)], env=node_env,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return nodes


def wait_all(nodes: list[subprocess.Popen], timeout: float, grace: float = 5.0) -> list[int]:
    """Wait for every node; once one has failed, the others get ``grace`` seconds and are then
    killed, as JobSet ends the other nodes of a failed job (a rank blocked in a collective with a
    dead peer would otherwise wait for the process group's timeout)."""
    deadline = time.monotonic() + timeout
    failed_at = None
    while any(n.poll() is None for n in nodes) and time.monotonic() < deadline:
        if failed_at is None and any(n.poll() not in (None, 0) for n in nodes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            break
        time.sleep(0.05)
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    return [node.returncode for node in nodes]


def losses(state_file: Path) -> dict[int, float]:
    state = json.loads(state_file.read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One MLflow store for the module (the first run creates its tables while it loads), and the
    environment of every launch: one thread per process, as on a node with one core per rank."""
    root = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "LLMOPS_MLFLOW_ARTIFACTS": str(root / "mlartifacts"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for key in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID", "LLMOPS_RESULT_FILE", "LLMOPS_RESULT_LOG",
                "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return {"root": root, "env": env}


def start_one_process(workdir: dict, store: dict) -> tuple[subprocess.Popen, Path]:
    """The reference: one process (the plain pod's command), the whole global batch on it."""
    out = store["root"] / "one" / "train"
    command = [sys.executable, "-m", "llmops_tasks.cli", *cli_args(settings(workdir, out, GLOBAL_BATCH)),
               "--result-file", str(store["root"] / "one.json")]
    with open(store["root"] / "one.log", "w") as log_file:
        return subprocess.Popen(command, env=store["env"], stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True), out


def test_two_nodes_train_as_one_job_and_resume_after_a_rank_is_killed(train_workdir, store, tmp_path):
    out = tmp_path / "train"
    values = settings(train_workdir, out, GLOBAL_BATCH // 2)
    env = {**store["env"], "LLMOPS_RESULT_LOG": "1",  # as the TrainJob sets it
           "LLMOPS_GPU_HOUR_PRICE": "2.5", "LLMOPS_COST_CURRENCY": "EUR"}

    # the reference runs meanwhile (its loss curve does not depend on the load; this file's time does)
    reference, one_out = start_one_process(train_workdir, store)

    # 1. both nodes start; once a checkpoint is complete, rank 1's training process is SIGKILLed
    nodes = launch_nodes(values, env, tmp_path, "first")
    first_state = out / "checkpoints" / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not first_state.is_file() and all(n.poll() is None for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.02)
    import psutil

    workers = psutil.Process(nodes[1].pid).children(recursive=True)
    assert workers, (tmp_path / "first-node1.log").read_text()[-3000:]
    for worker in workers:
        worker.send_signal(signal.SIGKILL)  # one rank lost: no handler, no cleanup, no final save
    codes = wait_all(nodes, timeout=90)
    assert codes[1] != 0, (tmp_path / "first-node1.log").read_text()[-3000:]
    assert not (out / "result.json").exists() and not (out / "model").exists()
    killed_at = train.last_complete_checkpoint(out / "checkpoints")
    assert killed_at, (tmp_path / "first-node0.log").read_text()[-3000:]
    step = int(Path(killed_at).name.removeprefix("checkpoint-"))
    assert SAVE_STEPS <= step < MAX_STEPS

    # 2. the job resubmitted: both nodes again, same command, same shared output folder
    rerun = launch_nodes(values, env, tmp_path, "rerun")
    codes = wait_all(rerun, timeout=300)
    leader_log, other_log = ((tmp_path / f"rerun-node{r}.log").read_text() for r in (0, 1))
    assert codes == [0, 0], leader_log[-3000:] + other_log[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from"] == killed_at and result["global_step"] == MAX_STEPS
    assert f"resuming from {killed_at}" in leader_log

    # every rank took part, in one gloo group of two, each running the same remaining steps
    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in sorted((out / "ranks").glob("rank-*.json")))}
    assert sorted(records) == [0, 1]
    assert {r["node_rank"] for r in records.values()} == {0, 1}
    for record in records.values():
        assert record["world_size"] == 2 and record["backend"] == "gloo"
        assert record["steps"] == list(range(step + 1, MAX_STEPS + 1))
    assert records[0]["pid"] != records[1]["pid"]

    # rank 0 alone: the MLflow run, the result, the result line the operator reads
    from llmops_airflow.operators.trainjob import result_from_log

    assert result_from_log(leader_log) == result and result_from_log(other_log) is None
    assert f"MLflow run {result['mlflow_run_id']}" in leader_log and "MLflow run" not in other_log
    import sqlite3

    with sqlite3.connect(store["root"] / "mlflow.db") as db:  # the store's own tables, read without MLflow
        steps = [row[0] for row in db.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = 'loss' "
                                              "ORDER BY step", (result["mlflow_run_id"],))]
    assert steps == list(range(step + 1, MAX_STEPS + 1))  # each step logged once: by rank 0 only
    # the cost figures, on the result and the run (CPUs: no GPU-hours to bill)
    assert result["gpus"] == 0 and result["gpu_hours"] == 0 and result["cost"] == 0
    assert result["gpu_hour_price"] == 2.5 and result["cost_currency"] == "EUR" and result["train_wall_seconds"] > 0
    with sqlite3.connect(store["root"] / "mlflow.db") as db:
        logged = dict(db.execute("SELECT key, value FROM metrics WHERE run_uuid = ? AND key IN ('gpu_hours', 'cost', "
                                 "'gpu_hour_price')", (result["mlflow_run_id"],)).fetchall())
        currency = db.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = 'llmops.cost_currency'",
                              (result["mlflow_run_id"],)).fetchone()
    assert logged == {"gpu_hours": 0.0, "cost": 0.0, "gpu_hour_price": 2.5} and currency == ("EUR",)

    # the same loss curve as one process with the same global batch
    assert wait_all([reference], timeout=300) == [0], (store["root"] / "one.log").read_text()[-3000:]
    assert not (one_out / "ranks").exists()  # the one-process path leaves no rank records
    one_result = json.loads((store["root"] / "one.json").read_text())
    two = losses(out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json")
    one = losses(one_out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json")
    assert sorted(two) == sorted(one) == list(range(1, MAX_STEPS + 1))
    assert two == pytest.approx(one, rel=0.02)
    assert result["final_loss"] == pytest.approx(one_result["final_loss"], rel=0.02)
