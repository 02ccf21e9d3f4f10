"""``run_step``: a light step inside the Airflow task's own process, with the CLI's outcomes.

Real step code, real MLflow on SQLite; only the Airflow task context is a stand-in (no scheduler
runs here: the full DAG runs are tests/test_pipeline_integration.py).
"""

from __future__ import annotations

import json
import types

import pytest
from airflow.sdk.exceptions import AirflowFailException

from llmops_airflow import mlflow_connection
from llmops_airflow.steps import run_step
from llmops_tasks.core import data
from llmops_tasks.local import samples


class TaskInstance:
    dag_id, run_id, task_id, try_number, map_index = "llm_retraining", "manual__steps", "split", 1, -1

    def __init__(self):
        self.pushed: dict = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


@pytest.fixture
def ti(monkeypatch, mlflow_store):
    import airflow.sdk

    ti = TaskInstance()
    context = {"dag": types.SimpleNamespace(dag_id=ti.dag_id), "run_id": ti.run_id, "ti": ti}
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: context)
    # No Airflow API server here to ask for Connection mlflow_default: the embedded mode has none.
    monkeypatch.setattr(mlflow_connection, "read_connection", lambda conn_id=mlflow_connection.CONN_ID: None)
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):  # bind_run_context exports them
        monkeypatch.setenv(name, "")
    return ti


def test_a_step_runs_in_its_dag_runs_folder_and_publishes_its_mlflow_run(ti, tmp_path):
    dataset = tmp_path / "pairs.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows())
    result = run_step("split", overrides={"dataset": str(dataset), "eval_fraction": 0.2})
    assert "/llm_retraining/manual__steps/split/" in result["eval"]
    assert result["train_rows"] + result["eval_rows"] == len(samples.preference_rows())
    assert ti.pushed["mlflow_run_url"] == result["mlflow_run_url"]


def test_a_step_that_says_no_fails_without_retry_and_keeps_its_result(ti, tmp_path):
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text(json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(AirflowFailException, match="lacks chosen, rejected"):
        run_step("split", overrides={"dataset": str(dataset)})
    assert "lacks chosen, rejected" in ti.pushed["return_value"]["error"]


def test_a_rejection_is_the_answer_when_the_dag_branches_on_it(ti, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"candidate": {"bleu": 0.1, "rougeL": 0.2}, "champion": {"bleu": 0.5, "rougeL": 0.6},
                                   "champion_label": "production v1", "champion_version": "1"}))
    decision = run_step("gate", rejection_is_result=True, overrides={"metrics": str(metrics)})
    assert decision["passed"] is False and decision["failed_rules"]
    assert ti.pushed["mlflow_run_url"] == decision["mlflow_run_url"]
    with pytest.raises(AirflowFailException):  # without the flag, a rejection fails the task
        run_step("gate", overrides={"metrics": str(metrics)})


def test_a_waiver_the_deployment_does_not_allow_fails_the_task_by_name(ti, monkeypatch, tmp_path):
    """The DAG's waive_approval task: require_approval=false alone cannot skip the human."""
    from llmops_tasks.core import tracking

    client = tracking.client()
    client.create_registered_model("waiver-refused")
    version = client.create_model_version("waiver-refused", source=str(tmp_path)).version
    monkeypatch.delenv("LLMOPS_ALLOW_APPROVAL_WAIVER", raising=False)
    overrides = {"model_name": "waiver-refused", "version": version, "decision": "waived", "by": "auto"}
    with pytest.raises(AirflowFailException, match="requires a human approval before production; set "
                                                   "LLMOPS_ALLOW_APPROVAL_WAIVER=true"):
        run_step("registry", action="approval", overrides=overrides)
    assert "llmops.approval" not in client.get_model_version("waiver-refused", version).tags
    monkeypatch.setenv("LLMOPS_ALLOW_APPROVAL_WAIVER", "true")
    assert run_step("registry", action="approval", overrides=overrides)["approval"] == "waived"


@pytest.mark.parametrize(("states", "expected"), [
    ({"gate": "success", "register": "success", "approve": "success", "promote": "success"}, ("FINISHED", "promoted")),
    ({"gate": "success", "candidate_rejected": "failed", "register": "skipped", "promote": "skipped"},
     ("FINISHED", "rejected by the gate")),
    ({"approve": "success", "promote": "skipped", "waive_approval": "skipped"}, ("FINISHED", "not promoted")),
    ({"validate": "failed", "train": "upstream_failed", "promote": "upstream_failed"},
     ("FAILED", "failed at promote, train, validate")),
])
def test_the_mlflow_parent_run_ends_with_the_dag_runs_outcome(states, expected):
    from llmops_airflow.steps import pipeline_outcome

    assert pipeline_outcome(states) == expected
