"""The llm_monitoring DAG with real Airflow (``dag.test()`` in a fresh interpreter), real MLflow
traces and the real policy: a window of longer prompts emits one ``llmops_retrain_request`` asset
event with the reasons in its extra; a clean window emits none (the task is skipped); a window
where an answer leaks a secret fails the run at ``alert``. That a real scheduler then starts
``llm_retraining`` from the event is the lead engineer's scheduler integration test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmops_tasks.core import settings, tracking
from llmops_tasks.monitoring import synthetic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "mon-dag-model"

RUNNER = """
import json, sys
from airflow.utils.db import upgradedb
upgradedb()
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from sqlalchemy import select
from llmops_tasks.local.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder() / "llm_monitoring.py"))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["llm_monitoring"]
for conf in json.loads(sys.argv[1]):
    dag_run = dag.test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    with create_session() as session:
        events = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.name == "llmops_retrain_request", AssetEvent.source_run_id == dag_run.run_id)).all()
        extras = [e.extra for e in events]
    print("RESULT " + json.dumps({"state": str(dag_run.state), "tasks": states, "events": extras}, default=str))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("monitoring-dag")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(folder / "mlartifacts"))
        env.setenv("LLMOPS_ARTIFACT_ROOT", str(folder / "artifacts"))
        env.setenv("LLMOPS_MODEL_NAME", MODEL)
        env.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        values = yaml.safe_load(Path(settings.packaged_policy("monitor.yaml")).read_text())
        values["min_requests"] = 25
        (folder / "policy.yaml").write_text(yaml.safe_dump(values))
        env.setenv("LLMOPS_MONITOR_POLICY", str(folder / "policy.yaml"))
        client = tracking.client()
        synthetic.register_production(folder, MODEL, client)
        experiment = tracking.get_or_create_experiment(f"{MODEL}-traffic", client)
        hour = synthetic.HOUR_MS
        t0 = (int(time.time() * 1000) // hour + 48) * hour
        rng = random.Random(11)
        ends = {"longer": t0, "clean": t0 + 2 * hour, "secret": t0 + 4 * hour}
        synthetic.write_window(experiment, MODEL, ends["longer"], rng, question=synthetic.long_prompt)
        synthetic.write_window(experiment, MODEL, ends["clean"], rng)
        synthetic.write_window(experiment, MODEL, ends["secret"], rng,
                               reply=lambda r, i: synthetic.SECRET_ANSWER if i == 0 else synthetic.answer(r))
        confs = [{"window": "1h", "end": str(ends[name])} for name in ("longer", "clean", "secret")]
        proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(confs)], env=dict(os.environ),
                              capture_output=True, text=True, timeout=600, check=False)
        results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")]
        assert len(results) == 3, f"dag.test() did not finish:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        tag = client.get_model_version(MODEL, "1").tags.get("llmops.monitor_report", "")
        yield dict(zip(("longer", "clean", "secret"), results)) | {
            "output": proc.stdout + proc.stderr, "report_tag": tag, "artifact_root": str(folder / "artifacts")}


def test_a_retrain_decision_emits_one_asset_event_with_the_reasons(runs):
    run = runs["longer"]
    assert run["state"] == "success"
    assert run["tasks"]["monitor"] == "success" and run["tasks"]["request_retraining"] == "success"
    assert run["tasks"]["alert"] == "success" and run["tasks"]["trigger_rollback"] == "skipped"
    assert len(run["events"]) == 1
    extra = run["events"][0]
    assert extra["model_version"] == "1" and extra["model_name"] == MODEL
    assert {r["signal"] for r in extra["reasons"]} == {"prompt_chars", "prompt_words"}
    assert all(r["value"] > r["threshold"] for r in extra["reasons"])
    assert extra["window"]["length"] == "1h"


def test_no_retrain_decision_emits_nothing(runs):
    run = runs["clean"]
    assert run["state"] == "success"
    assert run["tasks"]["request_retraining"] == "skipped" and run["events"] == []


def test_an_alert_fails_the_run_by_name(runs):
    run = runs["secret"]
    assert run["state"] == "failed"
    assert run["tasks"]["alert"] == "failed" and run["tasks"]["request_retraining"] == "skipped"
    assert run["events"] == []
    assert "secret_answers" in runs["output"] and "monitoring alert for " + MODEL in runs["output"]


def test_the_approvals_page_links_the_production_versions_latest_report(runs):
    """The DAG's report lands below the llm_monitoring run folders, which the approvals page serves."""
    from llmops_airflow import approvals_app

    tag = runs["report_tag"]
    assert "/llm_monitoring/" in tag and tag.endswith(f"{MODEL}-v1/report.html")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_ARTIFACT_ROOT", runs["artifact_root"])
        assert approvals_app.monitoring_report_target(tag) == Path(tag)
        assert approvals_app.monitoring_report_target(str(Path(runs["artifact_root"]) / "x" / "report.html")) is None
        assert approvals_app.monitoring_report_target(tag.replace("/monitor/", "/monitor/../monitor/")) is None
    assert "monitoring report" in approvals_app.monitoring_link(MODEL, {"aliases": ["production"], "version": "1"})
    assert approvals_app.monitoring_link(MODEL, {"aliases": ["staging"], "version": "2"}) == ""
