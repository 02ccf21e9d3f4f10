"""DAG integrity, in the style of Airflow's own example-DAG tests.

Every DAG file imports without error, reads no Connection or Variable while parsing, and pulls in
none of the heavy libraries (those belong inside tasks), nor the web or Kubernetes libraries that
only the API server and the pods' mode need. Import cost is measured by bench/dag_parse.py, not
asserted here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks.local import embedded

DAG_FILES = sorted(p for p in embedded.dags_folder().glob("*.py") if p.name != "__init__.py")
HEAVY = ("torch", "transformers", "trl", "peft", "pandas", "great_expectations", "mlflow", "evaluate",
         "datasets", "sacrebleu", "rouge_score",
         # the approvals page's web framework (the API server's alone), and the Kubernetes client
         # (the kubernetes mode builds pod specs at parse; the embedded mode, checked here, must not)
         "fastapi", "starlette", "kubernetes")
# Environment of the fresh interpreters below: the embedded mode, whatever the caller's shell says.
PARSE_ENV = {**os.environ, "LLMOPS_EXECUTION": "local"}


def test_there_are_dag_files():
    assert [p.name for p in DAG_FILES], "no DAG files found in the shipped dags folder"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(embedded.dags_folder()))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_retraining_dag_shape(dagbag):
    dag = dagbag.dags.get("llm_retraining")
    assert dag is not None
    assert dag.doc_md and "gate" in dag.doc_md
    assert {"llmops", "retraining"} <= set(dag.tags)
    expected = ["resolve_inputs", "validate", "eda", "split", "train", "evaluate", "gate", "candidate_rejected",
                "register", "approval_route", "approve", "waive_approval", "promote", "close_mlflow_run"]
    assert sorted(dag.task_ids) == sorted(expected)
    # the pipeline order the docs promise
    order = ["validate", "split", "train", "evaluate", "gate", "register", "approval_route"]
    for upstream, downstream in itertools.pairwise(order):
        assert upstream in dag.get_task(downstream).upstream_task_ids or upstream in {
            t for t in dag.get_task(downstream).get_flat_relative_ids(upstream=True)}
    # the gate branches: on to register, or to the task that fails the run by name
    assert dag.get_task("gate").downstream_task_ids == {"register", "candidate_rejected"}
    assert dag.get_task("candidate_rejected").retries == 0
    assert dag.get_task("promote").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("promote").upstream_task_ids == {"register", "approve", "waive_approval"}
    # the approval records its own answer (a Reject skips promote, so nothing after it could)
    approve = dag.get_task("approve")
    assert type(approve).__name__ == "RecordedApproval" and approve.version_task_id == "register"
    assert "comment" in approve.params
    assert params_default(dag, "require_approval") is True
    # the MLflow parent run is closed whatever happened
    close = dag.get_task("close_mlflow_run")
    assert close.is_teardown and close.upstream_task_ids == {"promote", "candidate_rejected"}
    # empty gate fields: the policy decides
    assert params_default(dag, "gate_min_bleu") is None and params_default(dag, "gate_max_regression") is None
    assert dag.get_task("train").retries >= 1
    # the trigger form: every Param typed, with the method restricted to known choices
    params = dag.params.dump()
    assert params["method"] == "sft"
    schema = {k: dag.params.get_param(k).schema for k in params}
    assert schema["method"]["enum"] == ["sft", "dpo", "kto", "orpo", "grpo", "rloo"]
    assert all("type" in s for s in schema.values())
    assert dag.schedule is not None or dag.timetable is not None


def test_unpausing_creates_no_run_before_the_next_cron_time(dagbag):
    """The UI unpauses a DAG when someone triggers it: that must not start a scheduled run (with
    default Params) for the latest past cron time ahead of the user's own run."""
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["llm_retraining"]
    assert dag.start_date is None and dag.catchup is False
    # the scheduler's view: the serialized DAG with its restriction (start date, catchup)
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    first = scheduled.next_dagrun_info(last_automated_run_info=None)
    assert first is not None and first.run_after > pendulum.now("UTC")


def params_default(dag, name):
    return dag.params.dump()[name]


def test_retraining_dag_eval_set_param(dagbag):
    """Optional fixed eval set: empty by default, typed like the other optional text Params."""
    dag = dagbag.dags["llm_retraining"]
    param = dag.params.get_param("eval_dataset_uri")
    assert param.value == ""
    assert param.schema["type"] == ["null", "string"] == dag.params.get_param("dataset_uri").schema["type"]
    assert param.schema["title"] == "Held-out eval set"
    assert "instead of the split's held-out part" in param.description
    assert "eval_dataset_uri" in dag.doc_md and "prompt_not_in_against" in dag.doc_md


class _XComs:
    """Stands in for the task instance at render time: only its ``xcom_pull`` is read (the full run
    is tests/test_pipeline_integration.py)."""

    def __init__(self, values: dict):
        self.values = values

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.values[task_ids]


@pytest.mark.parametrize(("eval_dataset", "expected"), [
    ("", "/runs/split/eval.jsonl"),  # no fixed eval set: the split's held-out part
    ("s3://evals/fixed.jsonl", "s3://evals/fixed.jsonl"),
])
def test_evaluate_scores_the_fixed_eval_set_when_given(dagbag, eval_dataset, expected):
    dag = dagbag.dags["llm_retraining"]
    arguments = dag.get_task("evaluate").arguments
    template = arguments[arguments.index("--eval-data") + 1]
    ti = _XComs({"resolve_inputs": {"eval_dataset": eval_dataset}, "split": {"eval": "/runs/split/eval.jsonl"}})
    assert dag.get_template_env().from_string(template).render(ti=ti) == expected


def test_rollback_dag_shape(dagbag):
    dag = dagbag.dags.get("model_rollback")
    assert dag is not None and dag.schedule is None
    assert dag.task_ids == ["rollback"]
    assert dag.doc_md and "previous-production" in dag.doc_md
    params = dag.params.dump()
    assert params["target_version"] is None  # empty: the previous-production version
    assert dag.params.get_param("reason").schema["minLength"] >= 1
    # the trigger form with its defaults and a reason is valid: empty optional fields are allowed
    from airflow.sdk.definitions.param import ParamsDict

    form = ParamsDict({k: dag.params.get_param(k) for k in params})
    form["reason"] = "answers got worse"
    assert form.validate()["target_version"] is None
    with pytest.raises(Exception, match="does not match"):
        form["target_version"] = "v2"
    assert dag.get_task("rollback").retries == 0


def test_dag_files_read_no_connection_or_variable_at_parse(monkeypatch):
    """A DAG file that reads a Connection or Variable at parse pays for it at every parse."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Connection, Variable

    def forbidden(*args, **kwargs):
        raise AssertionError(f"read at parse time: {args}")

    monkeypatch.setattr(Connection, "get", forbidden)
    monkeypatch.setattr(BaseHook, "get_connection", forbidden)
    monkeypatch.setattr(Variable, "get", forbidden)
    bag = DagBag(dag_folder=str(embedded.dags_folder()))
    assert bag.import_errors == {}
    assert {"llm_retraining", "model_rollback"} <= set(bag.dag_ids)


@pytest.mark.integration  # a subprocess: not a unit test
@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_library(dag_file: Path):
    """Checked in a fresh interpreter: what importing the DAG file adds after airflow.sdk."""
    code = f"""
import importlib.util, json, sys
import airflow.sdk  # noqa: F401  the baseline every DAG pays
from airflow.sdk import dag, task, Param  # noqa: F401
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dag_under_test", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=PARSE_ENV)
    added = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted({m.split(".")[0] for m in added} & set(HEAVY))
    assert heavy == [], f"{dag_file.name} imports {heavy} at parse time"


@pytest.mark.integration  # a subprocess: not a unit test
def test_dag_processor_with_our_plugin_loaded_imports_no_heavy_library(tmp_path):
    """Airflow's DAG processor loads every plugin when it starts (``Job.__init__`` ->
    ``get_listener_manager()``) and forks its parsing processes from itself, so what the plugin
    imports, each parse carries. DagBag itself loads plugins only for a task with
    ``end_from_trigger``; serialization only when deserializing links. All three are done here, in
    a fresh interpreter (in a folder of its own: the checkout's egg-info would register the plugin
    twice), with our plugin really loaded from its entry point."""
    code = f"""
import json, sys
from airflow.listeners.listener import get_listener_manager
from airflow import plugins_manager
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.sdk.plugins_manager import integrate_macros_plugins
get_listener_manager()  # what the DAG processor's (and the scheduler's) Job does when it starts
integrate_macros_plugins()  # what each task process does
bag = DagBag(dag_folder={str(embedded.dags_folder())!r})
serialized = [DagSerialization.to_dict(d) for d in bag.dags.values()]
print(json.dumps({{"plugins": [p.name for p in plugins_manager._get_plugins()[0]], "dags": sorted(bag.dag_ids),
                  "errors": bag.import_errors, "modules": sorted(sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=PARSE_ENV,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "llmops" in report["plugins"] and "llmops_airflow.plugin" in report["modules"]
    assert {"llm_retraining", "model_rollback"} <= set(report["dags"]) and report["errors"] == {}
    heavy = sorted({m.split(".")[0] for m in report["modules"]} & set(HEAVY))
    assert heavy == [], f"the DAG processor with the llmops plugin loaded imports {heavy}"
    assert "llmops_airflow.approvals_app" not in report["modules"]


def test_retraining_runs_on_new_data_or_its_cron(dagbag):
    """A curated snapshot or a monitoring retrain request starts a retraining, as does the cron,
    whichever comes first (the scheduler's serialized view)."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.assets import AssetOrTimeSchedule

    from llmops_airflow.assets import PREFERENCE_DATA, RETRAIN_REQUEST

    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["llm_retraining"]))
    timetable = scheduled.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    names = {asset.name for _, asset in timetable.asset_condition.iter_assets()}
    assert names == {PREFERENCE_DATA.name, RETRAIN_REQUEST.name}
    assert "0 3 * * 1" in timetable.summary


def test_run_trigger_names_the_snapshot_and_the_monitoring_reasons():
    """What started a run, from its triggering asset events: the newest snapshot wins; monitoring's
    reasons are named; without events the run type decides."""
    import datetime
    from types import SimpleNamespace

    from llmops_airflow.assets import PREFERENCE_DATA, RETRAIN_REQUEST, run_trigger

    t0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)

    def event(extra, minutes):
        return SimpleNamespace(extra=extra, timestamp=t0 + datetime.timedelta(minutes=minutes))

    older = event({"uri": "/s/v0001/data.parquet", "content_hash": "a" * 64, "rows": 10, "feedback_rows": 0}, 0)
    newer = event({"uri": "/s/v0002/data.parquet", "content_hash": "b" * 64, "rows": 14, "feedback_rows": 4,
                   "manifest": "/s/v0002/manifest.json"}, 5)
    request = event({"reasons": [{"signal": "input_drift.prompt_chars", "value": 0.4}], "model_version": "3",
                     "window": "24h"}, 6)
    trigger = run_trigger({"triggering_asset_events": {PREFERENCE_DATA: [newer, older], RETRAIN_REQUEST: [request]}})
    assert trigger["kind"] == "asset" and trigger["snapshot"]["uri"] == "/s/v0002/data.parquet"
    assert "bbbbbbbbbbbb" in trigger["summary"] and "4 from feedback" in trigger["summary"]
    assert "input_drift.prompt_chars" in trigger["summary"] and "v3" in trigger["summary"]
    scheduled = run_trigger({"dag_run": SimpleNamespace(run_type=SimpleNamespace(value="scheduled"))})
    assert scheduled == {"kind": "schedule", "snapshot": None, "retrain_requests": [],
                         "summary": "the retraining schedule"}
    assert run_trigger({})["kind"] == "manual"
