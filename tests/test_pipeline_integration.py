"""The whole llm_retraining DAG with real Airflow (``dag.test()``), real GX, TRL, evaluate, MLflow.

Nothing is mocked: heavy steps run as local subprocesses of ``llmops``, exactly as the embedded
mode runs them (only the Kubernetes path is left to the pod-spec tests, since no cluster exists
here). Each DAG run executes in a fresh interpreter because Airflow reads its configuration at
import; the MLflow store is a SQLite file in a temp folder shared by the runs of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks import data, samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNNER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from llmops_tasks.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder()))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["llm_retraining"]
dag_run = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
print("RESULT " + json.dumps({"state": str(dag_run.state), "run_id": dag_run.run_id, "tasks": states}))
"""


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory):
    store = tmp_path_factory.mktemp("pipeline")
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "LLMOPS_MLFLOW_ARTIFACTS": str(store / "mlartifacts"),
        "LLMOPS_ARTIFACT_ROOT": str(store / "artifacts"),
        "LLMOPS_MODEL_NAME": "itest-chat",
    })
    migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env,
                             capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    return env


def run_dag(env: dict, conf: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(conf)], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"dag.test() did not finish (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["log"] = proc.stdout + proc.stderr
    return result


def registry_state(env: dict) -> tuple[dict, object]:
    from llmops_tasks import registry

    from llmops_tasks import tracking
    from llmops_tasks.settings import temporary_env

    keys = ("MLFLOW_TRACKING_URI", "LLMOPS_MODEL_NAME", "LLMOPS_MLFLOW_ARTIFACTS")
    with temporary_env({k: env[k] for k in keys}):
        client = tracking.client()
        return registry.alias_versions(env["LLMOPS_MODEL_NAME"], client), client


@pytest.fixture(scope="module")
def first_run(pipeline_env):
    return run_dag(pipeline_env, {"require_approval": False, "max_steps": 120})


def test_first_run_promotes_to_production(first_run, pipeline_env):
    assert first_run["state"] == "success", first_run["log"][-5000:]
    tasks = first_run["tasks"]
    assert tasks["approve"] == "skipped" and tasks["auto_approve"] == "success"
    assert tasks["promote"] == "success"
    aliases, client = registry_state(pipeline_env)
    assert aliases["production"] == aliases["staging"] == "1"
    version = client.get_model_version("itest-chat", "1")
    tags = version.tags
    assert tags["llmops.dag_run_id"] == first_run["run_id"]
    assert tags["llmops.dag_id"] == "llm_retraining"
    assert tags["llmops.gate_passed"] == "true"
    assert float(tags["metric.bleu"]) > 0.1  # trained on the help-desk answers, scored against them
    assert len(tags["llmops.dataset_hash"]) == 64
    assert tags["llmops.approval"] == "approved" and "require_approval=false" in tags["llmops.approval_by"]


def test_regressing_candidate_is_stopped_at_the_gate(first_run, pipeline_env):
    """Five training steps cannot match production v1: the gate rejects, nothing is registered."""
    assert first_run["state"] == "success"
    result = run_dag(pipeline_env, {"require_approval": False, "max_steps": 5})
    assert result["state"] == "success", result["log"][-5000:]  # a rejection is a decision, not a crash
    tasks = result["tasks"]
    assert tasks["gate"] == "success"
    for task_id in ("register", "approval_route", "approve", "auto_approve", "promote"):
        assert tasks[task_id] == "skipped", (task_id, tasks)
    aliases, client = registry_state(pipeline_env)
    assert aliases["production"] == "1"
    assert [str(v.version) for v in client.search_model_versions("name = 'itest-chat'")] == ["1"]
    assert "REJECTED" in result["log"] and "max_regression" in result["log"]


def test_invalid_data_fails_at_validation(first_run, pipeline_env, tmp_path):
    rows = samples.preference_rows()[:40]
    for row in rows[:3]:
        row["rejected"] = row["chosen"]  # identical pairs teach nothing and must be refused
    bad = tmp_path / "bad.jsonl"
    data.write_jsonl(str(bad), rows)
    result = run_dag(pipeline_env, {"require_approval": False, "dataset_uri": str(bad)})
    assert result["state"] == "failed"
    tasks = result["tasks"]
    assert tasks["validate"] == "failed"
    assert all(tasks[t] in ("upstream_failed", "skipped", "None") for t in ("eda", "split", "train", "register"))
    assert "chosen_differs_from_rejected" in result["log"]
    aliases, _ = registry_state(pipeline_env)
    assert aliases["production"] == "1"
