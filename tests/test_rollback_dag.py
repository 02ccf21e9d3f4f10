"""The model_rollback DAG with real Airflow (``dag.test()`` in a fresh interpreter) and real MLflow.

The registry is a SQLite MLflow store in a temp folder holding three gated versions, v2 in
production with v1 as previous-production; versions point at an empty folder because moving
aliases never opens the weights. One interpreter runs the DAG twice: with the default target
(previous-production), then with a version that does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmops_tasks import registry
from llmops_tasks.core import tracking

pytestmark = pytest.mark.integration

MODEL = "rollback-dag-model"

RUNNER = """
import json, sys
from airflow.utils.db import upgradedb
upgradedb()  # what `airflow db migrate` runs; a no-op when the session's database is current
from airflow.dag_processing.dagbag import DagBag
from llmops_tasks.local.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder() / "model_rollback.py"))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["model_rollback"]
for conf in json.loads(sys.argv[1]):
    dag_run = dag.test(run_conf=conf)
    ti = dag_run.get_task_instance("rollback")
    print("RESULT " + json.dumps({"state": str(dag_run.state), "run_id": dag_run.run_id,
                                  "task": str(ti.state), "xcom": ti.xcom_pull(task_ids="rollback")}))
"""


def run_rollback_dag(env: dict, confs: list[dict]) -> tuple[list[dict], str]:
    """Run model_rollback once per conf in one fresh interpreter; (results, the whole output)."""
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(confs)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    results = [json.loads(line.removeprefix("RESULT ")) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == len(confs), f"dag.test() did not finish:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return results, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rollback-dag")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(folder / "mlartifacts"))
        env.setenv("LLMOPS_MODEL_NAME", MODEL)
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        client = tracking.client()
        client.create_registered_model(MODEL)
        (folder / "weights").mkdir()
        for _ in range(3):
            version = client.create_model_version(MODEL, str(folder / "weights")).version
            client.set_model_version_tag(MODEL, version, "llmops.gate_passed", "true")
        registry.promote(registry.PromoteConfig(version="1", expected_production="none"))
        registry.promote(registry.PromoteConfig(version="2", expected_production="1"))
        results, output = run_rollback_dag(dict(os.environ), [
            {"reason": "answers regressed after v2"},
            {"reason": "try an unknown version", "target_version": "9"},
            {"reason": "try the version nobody approved", "target_version": "3"},
        ])
        yield {"results": results, "output": output, "aliases": registry.alias_versions(MODEL),
               "tags": dict(client.get_model_version(MODEL, "1").tags), "events": registry.audit_events(MODEL)}


def test_the_default_target_is_previous_production(rolled_back):
    first = rolled_back["results"][0]
    assert (first["state"], first["task"]) == ("success", "success")
    assert first["xcom"] == {"model_name": MODEL, "version": "1", "changed": True, "replaced": "2"}


def test_the_rollback_leaves_production_on_the_restored_version(rolled_back):
    # the second run (unknown version) failed and moved nothing
    assert rolled_back["aliases"] == {"production": "1", "previous-production": "2"}


def test_an_unknown_target_version_fails_without_retry_and_says_which(rolled_back):
    second = rolled_back["results"][1]
    assert (second["state"], second["task"]) == ("failed", "failed")
    assert f"{MODEL} has no version '9'" in rolled_back["output"]


def test_the_rollback_is_audited_with_the_dag_run(rolled_back):
    run_id = rolled_back["results"][0]["run_id"]
    tags = rolled_back["tags"]
    assert tags["llmops.restore_reason"] == "answers regressed after v2"
    assert tags["llmops.restored_in_run"] == f"model_rollback/{run_id}"
    last = rolled_back["events"][-1]
    assert (last["action"], last["version"], last["replaced"]) == ("rolled_back", "1", "2")
    assert (last["dag_id"], last["dag_run_id"], last["reason"]) == ("model_rollback", run_id,
                                                                     "answers regressed after v2")
    # promoting by hand is the promoter's approval, recorded before each move
    assert [e["action"] for e in rolled_back["events"]] == ["approved", "promoted", "approved", "promoted",
                                                            "rolled_back"]


def test_a_version_nobody_approved_is_refused(rolled_back):
    third = rolled_back["results"][2]
    assert (third["state"], third["task"]) == ("failed", "failed")
    assert f"{MODEL} v3 cannot reach production: it was never approved" in rolled_back["output"]
