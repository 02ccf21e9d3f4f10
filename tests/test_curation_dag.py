"""The feedback_curation DAG with real Airflow (``dag.test()`` in a fresh interpreter), real MLflow
traces and feedback (SQLite in a temp folder), the real curate step and its GX validation.

One interpreter runs the DAG twice: after feedback was given (a snapshot and one
``llmops_preference_data`` event whose extra names it), then with no new feedback (no snapshot,
``publish_snapshot`` skipped, no event). The asset events are read from Airflow's metadata database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from llmops_tasks.core import data

pytestmark = pytest.mark.integration

RUNNER = """
import json, sys
from airflow.utils.db import upgradedb
upgradedb()
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from llmops_tasks.local.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder() / "feedback_curation.py"))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["feedback_curation"]

def events():
    with create_session() as session:
        return [e.extra for e in session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.name == "llmops_preference_data").filter(AssetEvent.source_dag_id == dag.dag_id)
                .order_by(AssetEvent.id)]

before = len(events())
for _ in range(2):
    dag_run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    found = events()
    print("RESULT " + json.dumps({"state": str(dag_run.state), "states": states, "events": found[before:],
                                  "curate": dag_run.get_task_instance("curate").xcom_pull(task_ids="curate")},
                                 default=str))
    before = len(found)
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from llmops_tasks import feedback
    from llmops_tasks.core import tracking
    from llmops_tasks.local import samples
    from llmops_tasks.serving import traces

    root = tmp_path_factory.mktemp("curation-dag")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(root / "mlartifacts"))
        env.setenv("LLMOPS_ARTIFACT_ROOT", str(root / "artifacts"))
        env.setenv("LLMOPS_TRAFFIC_EXPERIMENT", "curation-dag-traffic")
        env.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        env.setenv("LLMOPS_HOME", str(root))  # the step's default base set: the embedded sample under it
        data.write_jsonl(str(root / "data" / "preference.jsonl"), samples.preference_rows())
        experiment = tracking.get_or_create_experiment("curation-dag-traffic")
        ids = []
        for prompt, answer in [("Where is the printer?", "On floor 3, by the kitchen."),
                               ("Where is the printer?", "No idea."),
                               ("How do I book a meeting room?", "Ask someone.")]:
            now = time.time_ns()
            ids.append(traces.record_answer(prompt=prompt, answer=answer, model_name="m", model_version="1",
                                            model_uri="models:/m@production", tokens_in=3, tokens_out=3,
                                            start_ns=now, end_ns=now + 1_000_000, experiment_id=experiment))
        for trace_id, thumbs in ((ids[0], "up"), (ids[1], "down")):
            feedback.log_feedback(feedback.FeedbackConfig(trace_id=trace_id, thumbs=thumbs, by="ann"))
        feedback.log_feedback(feedback.FeedbackConfig(
            trace_id=ids[2], correction="Open the calendar, choose Rooms, and pick a free one.", by="bob"))
        proc_env = {**os.environ, "LLMOPS_CURATION_SCHEDULE": "none"}
        proc = subprocess.run([sys.executable, "-c", RUNNER], env=proc_env, capture_output=True, text=True,
                              timeout=600, check=False, cwd=root)
        results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")]
        assert len(results) == 2, f"dag.test() did not finish:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        yield {"results": results, "ids": ids, "root": root, "output": proc.stdout + proc.stderr}


def test_a_run_with_feedback_writes_a_snapshot_and_emits_one_event(two_runs):
    first = two_runs["results"][0]
    assert first["state"] == "success", two_runs["output"][-3000:]
    assert first["states"] == {"curate": "success", "publish_snapshot": "success"}
    result = first["curate"]
    assert result["written"] is True
    assert result["new_rows"] == {"pairs from correction": 1, "pairs from thumbs": 1, "sft rows": 1}
    assert len(first["events"]) == 1
    extra = first["events"][0]
    assert set(extra) == {"uri", "content_hash", "rows", "feedback_rows", "manifest"}
    assert extra["uri"] == result["uri"] and extra["content_hash"] == data.content_hash(result["uri"])
    assert (extra["rows"], extra["feedback_rows"]) == (218, 2)
    manifest = data.read_json(extra["manifest"])
    assert manifest["content_hash"] == extra["content_hash"]
    assert sorted(manifest["traces"]) == sorted(two_runs["ids"])


def test_a_second_run_without_new_feedback_writes_nothing_and_emits_no_event(two_runs):
    second = two_runs["results"][1]
    assert second["state"] == "success"
    assert second["states"] == {"curate": "success", "publish_snapshot": "skipped"}
    assert second["curate"]["written"] is False
    assert second["events"] == []
    snapshots = sorted((two_runs["root"] / "artifacts" / "datasets" / "preference").glob("v*"))
    assert [p.name for p in snapshots] == [two_runs["results"][0]["curate"]["version"]]
