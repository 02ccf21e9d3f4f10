"""Preemption, for real: the training process is SIGKILLed after a checkpoint and the same command,
run again (what an Airflow retry does), resumes from that checkpoint by itself and ends at the
same total step count, with the same final weights' loss as a run that was never interrupted.

Real subprocesses of ``python -m llmops_tasks.cli train sft`` on the tiny local model; MLflow on
SQLite in a temp folder. Nothing is mocked.
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

from llmops_tasks import split, train
from llmops_tasks.core import data
from llmops_tasks.core.config import load
from llmops_tasks.local import bootstrap, samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_STEPS = 8
SAVE_STEPS = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = bootstrap.build_tiny_model(root / "base", samples.corpus_text())
    dataset = root / "preference.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows())
    paths = split.run(split.SplitConfig(dataset=str(dataset), out_dir=str(root / "split")))
    return {"root": root, "base": str(model), **paths}


def settings(workdir, out: Path) -> dict:
    return {"base_model": workdir["base"], "train_data": workdir["train_sft"], "output_dir": str(out),
            "trainer": {"max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 10, "logging_steps": 1,
                        "per_device_train_batch_size": 4, "max_length": 64},
            "system_metrics_interval": 0, "log_model": False}


def command(values: dict) -> list[str]:
    def text(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    args = [sys.executable, "-m", "llmops_tasks.cli", "train", "sft"]
    for key, value in values.items():
        if isinstance(value, dict):  # a section: --trainer KEY=VALUE per setting
            for name, item in value.items():
                args += ["--" + key.replace("_", "-"), f"{name}={text(item)}"]
        else:
            args += ["--" + key.replace("_", "-"), text(value)]
    return args


def test_sigkill_after_a_checkpoint_then_retry_resumes_there(workdir, tmp_path):
    out = tmp_path / "killed"
    values = settings(workdir, out)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "LLMOPS_MLFLOW_ARTIFACTS": str(tmp_path / "mlartifacts"), "PYTHONUNBUFFERED": "1"}
    for key in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID", "LLMOPS_RESULT_FILE"):
        env.pop(key, None)
    first_state = out / "checkpoints" / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command(values), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not first_state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # preemption: no handler, no cleanup, no final save
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "result.json").exists() and not (out / "model").exists()
    killed_at = train.last_complete_checkpoint(out / "checkpoints")
    step = int(Path(killed_at).name.removeprefix("checkpoint-"))
    assert SAVE_STEPS <= step < MAX_STEPS
    # everything resume needs is in the checkpoint
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors"):
        assert (Path(killed_at) / name).is_file(), name

    retry = subprocess.run(command(values) + ["--result-file", str(tmp_path / "retry.json")], env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert retry.returncode == 0, retry.stderr[-3000:]
    result = json.loads((tmp_path / "retry.json").read_text())
    assert result["resumed_from"] == killed_at
    assert f"resuming from {killed_at}" in retry.stderr  # the step's log
    assert result["global_step"] == MAX_STEPS
    state = json.loads((out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # the retry trained only the remaining steps: its MLflow run starts after the checkpoint
    from mlflow.tracking import MlflowClient

    steps = [m.step for m in MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(result["mlflow_run_id"], "loss")]
    assert steps == list(range(step + 1, MAX_STEPS + 1))

    # an uninterrupted run of the same config ends at the same step with the same loss curve
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reference_values = {**values, "output_dir": str(tmp_path / "uninterrupted")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mp.setenv("LLMOPS_MLFLOW_ARTIFACTS", env["LLMOPS_MLFLOW_ARTIFACTS"])
        reference = train.train(load(train.TrainConfig, None, reference_values), "sft")
    assert reference["global_step"] == result["global_step"] == MAX_STEPS and not reference["resumed_from"]
    reference_state = json.loads((tmp_path / "uninterrupted" / "checkpoints" / f"checkpoint-{MAX_STEPS}"
                                  / "trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}
    reference_losses = {e["step"]: e["loss"] for e in reference_state["log_history"] if "loss" in e}
    assert sorted(losses) == sorted(reference_losses) == list(range(1, MAX_STEPS + 1))
    assert losses == pytest.approx(reference_losses, rel=1e-3)  # same data order and RNG after the resume
