"""``llmops up`` for real: Airflow's API server, scheduler (LocalExecutor), DAG processor and
triggerer plus the MLflow server on loopback, driven only through the REST API.

One start for the module (services are heavy on a small machine). The first run is triggered with
a conf, waits in the approval step, is approved through the HITL REST endpoint and must end with
the new version holding ``production``. The second run gets a data set whose answers equal their
rejected alternatives: it must fail at ``validate`` and leave ``production`` where it was. The
third is rejected by a person through the same endpoint: the rejection is recorded on the version
and in the audit log, and a rollback to that version is refused. Then one turn of the feedback
loop (``llmops demo --loop``'s own code) and a monitoring retrain request, each of which the
scheduler alone turns into an ``llm_retraining`` run. Nothing is mocked; the services are always
stopped (process groups), also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from urllib.parse import quote

import pytest

from llmops_tasks.core import data
from llmops_tasks.local import airflow_client as airflow
from llmops_tasks.local import samples, services
from llmops_tasks.local.loop import Services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "llm_retraining"
MODEL_NAME = "e2e-chat"
APPROVAL_COMMENT = "metrics look right; approved over REST"
REJECTION_COMMENT = "answers got terse; rejected over REST"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("services-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "LLMOPS"))}
    env.update({"LLMOPS_HOME": str(home), "LLMOPS_RETRAIN_SCHEDULE": "none", "LLMOPS_MODEL_NAME": MODEL_NAME,
                "HF_HUB_OFFLINE": "1"})
    # `llmops up` in its own session, so stopping it also stops anything it left behind.
    up = Services(env, home, ("--parallelism", "2"))
    try:
        api = up.start(timeout=300)
        yield {"api": api, "home": home, "env": env, "out": up.out, "mlflow": up.mlflow_url}
    finally:
        up.stop()  # SIGTERM, then the process group; then whatever services.json still names


def _production(stack) -> str | None:
    from llmops_tasks import registry
    from llmops_tasks.core import tracking

    with _registry_env(stack):
        return registry.alias_versions(MODEL_NAME, tracking.client()).get(registry.PRODUCTION)


def _registry_env(stack):
    from llmops_tasks.core.settings import temporary_env

    services_uri = f"sqlite:///{stack['home'] / 'mlflow.db'}"  # the URI the services used
    return temporary_env({"MLFLOW_TRACKING_URI": services_uri, "LLMOPS_MODEL_NAME": MODEL_NAME})


def _version_tags(stack, version: str) -> dict[str, str]:
    from llmops_tasks.core import tracking

    with _registry_env(stack):
        return dict(tracking.client().get_model_version(MODEL_NAME, version).tags)


def _audit(stack) -> list[dict]:
    from llmops_tasks import registry

    with _registry_env(stack):
        return registry.audit_events(MODEL_NAME)


def _run_path(run_id: str) -> str:
    return airflow.run_path(DAG_ID, run_id)


def _scheduler_tail(stack) -> str:
    log = (stack["home"] / "logs" / "services" / "scheduler.log").read_text(errors="replace")
    return f"scheduler log tail:\n{log[-3000:]}"


def _wait(stack, run_id: str, done, what: str, timeout: float, dag_id: str = DAG_ID):
    return airflow.wait(stack["api"], dag_id, run_id, done, what, timeout, diagnose=lambda: _scheduler_tail(stack))


def _parked(stack, run_id: str, timeout: float = 120) -> None:
    airflow.parked(stack["home"] / "logs" / "services" / "scheduler.log", DAG_ID, "approve", run_id, timeout)


def _trigger(api: airflow.Api, conf: dict, dag_id: str = DAG_ID) -> str:
    return airflow.trigger(api, dag_id, conf)


def test_rest_trigger_hitl_approval_and_bad_data(stack):
    api = stack["api"]
    deadline = time.monotonic() + 120
    while api.call("GET", f"/api/v2/dags/{DAG_ID}")[0] != 200:  # the DAG processor's first parse
        assert time.monotonic() < deadline, "llm_retraining never appeared in the API"
        time.sleep(2)
    api.ok("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    run_id = _trigger(api, {"require_approval": True, "max_steps": 20, "max_new_tokens": 8})
    _, states = _wait(stack, run_id, lambda run, s: s.get("approve") in ("deferred", "awaiting_input")
                      or run in ("failed", "success"), "approval waiting", timeout=420)
    assert states["approve"] in ("deferred", "awaiting_input"), states
    assert states["waive_approval"] == "skipped" and states["register"] == "success", states

    hitl = f"{_run_path(run_id)}/taskInstances/approve/-1/hitlDetails"
    _parked(stack, run_id)
    detail = api.ok("GET", hitl)
    assert set(detail["options"]) == {"Approve", "Reject"}, detail
    answer = api.ok("PATCH", hitl, {"chosen_options": ["Approve"], "params_input": {"comment": APPROVAL_COMMENT}})
    assert answer["responded_by"]["name"] == "admin"

    run_state, states = _wait(stack, run_id, lambda run, s: run in ("failed", "success"), "run end", timeout=240)
    assert run_state == "success", states
    assert states["promote"] == "success" and states["approve"] == "success", states
    production = _production(stack)
    assert production == "1"
    approved = _version_tags(stack, "1")
    assert (approved["llmops.approval"], approved["llmops.approval_by"], approved["llmops.approval_comment"]) == (
        "approved", "admin", APPROVAL_COMMENT)

    # The plugin page: refused without a token, and it shows the promoted version to a logged-in user.
    assert api.call("GET", "/llmops/", token="")[0] == 401
    assert api.call("GET", "/llmops/", token="not-a-jwt")[0] in (401, 403)
    status, page = api.call("GET", "/llmops/")
    assert status == 200 and MODEL_NAME in page and "production: v1" in page, page[:2000]
    summary = api.ok("GET", "/llmops/api/summary")
    assert summary["decisions"][0]["passed"] is True and "EDA report" in summary["decisions"][0]["reports"]

    bad = stack["home"] / "bad.jsonl"
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"]} for r in samples.preference_rows()[:40]]
    data.write_jsonl(str(bad), rows)
    bad_run = _trigger(api, {"require_approval": True, "max_steps": 20, "dataset_uri": str(bad)})
    run_state, states = _wait(stack, bad_run, lambda run, s: run in ("failed", "success"), "bad run end", timeout=180)
    assert run_state == "failed" and states["validate"] == "failed", states
    assert states["train"] in (None, "upstream_failed"), states
    assert _production(stack) == production

    # A person rejects the next candidate: recorded on the version, binding for a rollback.
    rejected_run = _trigger(api, {"require_approval": True, "max_steps": 20, "max_new_tokens": 8})
    _, states = _wait(stack, rejected_run, lambda run, s: s.get("approve") in ("deferred", "awaiting_input")
                      or run in ("failed", "success"), "second approval waiting", timeout=420)
    assert states["approve"] in ("deferred", "awaiting_input"), states
    hitl = f"{_run_path(rejected_run)}/taskInstances/approve/-1/hitlDetails"
    _parked(stack, rejected_run)
    api.ok("PATCH", hitl, {"chosen_options": ["Reject"], "params_input": {"comment": REJECTION_COMMENT}})
    run_state, states = _wait(stack, rejected_run, lambda run, s: run in ("failed", "success"), "rejected run end",
                              timeout=240)
    assert run_state == "success" and states["approve"] == "success", states  # a person's answer, not a failure
    assert states["promote"] == "skipped" and states["close_mlflow_run"] == "success", states
    rejected = _version_tags(stack, "2")
    assert (rejected["llmops.approval"], rejected["llmops.approval_by"], rejected["llmops.approval_comment"]) == (
        "rejected", "admin", REJECTION_COMMENT)
    assert [(e["action"], e["version"], e["actor"]) for e in _audit(stack)][-1] == ("rejected", "2", "admin")
    status, page = api.call("GET", "/llmops/")
    assert status == 200 and REJECTION_COMMENT in page, page[:2000]

    api.ok("PATCH", "/api/v2/dags/model_rollback", {"is_paused": False})
    rollback = api.ok("POST", "/api/v2/dags/model_rollback/dagRuns", {
        "logical_date": None, "conf": {"target_version": "2", "reason": "try the rejected one"}})["dag_run_id"]
    rollback_path = f"/api/v2/dags/model_rollback/dagRuns/{quote(rollback, safe='')}"
    deadline = time.monotonic() + 180
    while (state := api.ok("GET", rollback_path)["state"]) not in ("failed", "success"):
        assert time.monotonic() < deadline, f"rollback run still {state}"
        time.sleep(3)
    assert state == "failed"
    assert _production(stack) == production


def test_mlflow_killed_mid_task_is_restarted_while_airflow_and_the_run_carry_on(stack):
    """Kill the MLflow server's process group while a task of a run is running: `llmops up`
    restarts MLflow alone (logged, recorded in services.json), the API server keeps answering,
    and the task ends on its first try (the tasks use the MLflow store, not the server), so the
    run registers exactly one version and waits for approval as usual."""
    from llmops_tasks.core import tracking
    from llmops_tasks.core.settings import temporary_env

    api, home = stack["api"], stack["home"]
    deadline = time.monotonic() + 120
    while api.call("GET", f"/api/v2/dags/{DAG_ID}")[0] != 200:  # when this test runs alone
        assert time.monotonic() < deadline, "llm_retraining never appeared in the API"
        time.sleep(2)
    api.ok("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    run_id = _trigger(api, {"require_approval": True, "max_steps": 20, "max_new_tokens": 8})
    heavy = ("train", "evaluate")  # the steps that log to MLflow the longest
    _, states = _wait(stack, run_id, lambda run, s: any(s.get(t) == "running" for t in heavy)
                      or run in ("failed", "success"), "train or evaluate running", timeout=300)
    running = [t for t in heavy if states.get(t) == "running"]
    assert running, f"the run ended before a task could be caught running: {states}"

    record = json.loads((home / services.PID_FILE).read_text())
    mlflow = record["services"]["mlflow"]
    assert mlflow["state"] == "ready" and mlflow["pid"], record
    os.killpg(mlflow["pid"], signal.SIGKILL)

    status, health = api.call("GET", "/api/v2/monitor/health")  # Airflow did not go down with MLflow
    assert status == 200 and health["scheduler"]["status"] == "healthy", (status, health)
    deadline = time.monotonic() + 120
    while True:
        record = json.loads((home / services.PID_FILE).read_text())
        restarted = record["services"]["mlflow"]
        if restarted["state"] == "ready" and restarted["pid"] != mlflow["pid"]:
            break
        assert time.monotonic() < deadline, f"MLflow did not come back: {restarted}\n{stack['out'].read_text()[-3000:]}"
        time.sleep(1)
    assert services.mlflow_healthy(stack["mlflow"]), f"GET {stack['mlflow']}/health does not answer 200"
    assert [(r["restart"], r["exit_code"]) for r in restarted["restarts"]] == [(1, -signal.SIGKILL)], restarted
    assert "mlflow exited with code -9; restarting (1/5)" in stack["out"].read_text(errors="replace")
    assert all(record["services"][name]["restarts"] == [] for name in services.AIRFLOW_SERVICES), record

    run_state, states = _wait(stack, run_id, lambda run, s: s.get("approve") in ("deferred", "awaiting_input")
                              or run in ("failed", "success"), "approval waiting", timeout=420)
    assert states["approve"] in ("deferred", "awaiting_input"), (run_state, states)
    assert states["register"] == "success", states
    for task_id in running:  # no retry was spent on the outage
        task = api.ok("GET", f"{_run_path(run_id)}/taskInstances/{task_id}")
        assert (task["state"], task["try_number"]) == ("success", 1), task
    with temporary_env({"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}):
        versions = [v.version for v in tracking.client().search_model_versions(f"name='{MODEL_NAME}'")
                    if v.tags.get("llmops.dag_run_id") == run_id]
    assert len(versions) == 1, f"run {run_id} registered versions {versions}"

    # Leave no run waiting for a later test (max_active_runs=1): a person rejects this candidate.
    hitl = f"{_run_path(run_id)}/taskInstances/approve/-1/hitlDetails"
    _parked(stack, run_id)
    api.ok("PATCH", hitl, {"chosen_options": ["Reject"], "params_input": {"comment": "e2e: MLflow restart check"}})
    _wait(stack, run_id, lambda run, s: run in ("failed", "success"), "rejected run end", timeout=240)


MONITOR_POLICY = """\
# A deployment's monitoring policy, loose enough for the handful of answers of this test: the
# oracle's thumbs-down share alone asks for a retraining.
min_requests: 10
alpha: 0.5
cooldown_hours: 0
retrain_when: any
alert_when: any
signals:
  thumbs_down: {threshold: 0.05, severity: retrain, min_count: 5, baseline: 0.01}
"""


def test_the_loop_retrains_on_its_snapshot_and_on_a_monitoring_request_through_the_scheduler(stack):
    """The feedback loop on the real services (what ``llmops demo --loop`` runs): production
    answers the eval and training prompts on a loopback scoring server, one trace each; the
    oracle's thumbs and corrections are MLflow assessments; ``feedback_curation`` (triggered over
    REST) writes a snapshot and its asset event; the scheduler alone starts ``llm_retraining``,
    which trains on that snapshot, is approved over the HITL endpoint, becomes production (the
    running server switches to it) and names the snapshot in its lineage. Then ``llm_monitoring``
    with a deployment policy that fires on the thumbs-down share emits a retrain request, and the
    scheduler starts one more retraining from it, on the newest snapshot."""
    from llmops_tasks.core.settings import temporary_env
    from llmops_tasks.local import loop

    api, home = stack["api"], stack["home"]
    for dag_id in (loop.CURATION, "llm_monitoring"):
        airflow.wait_for_dag(api, dag_id)
        airflow.unpause(api, dag_id)
    with _registry_env(stack), temporary_env({"LLMOPS_HOME": str(home)}):
        before = _production(stack)
        result = loop.turn(loop.Stack.of(api, home), MODEL_NAME, batch_size=8, timeout=480)

    assert result.traffic["answers"] == result.traffic["prompts"] > 0
    assert result.feedback["untraced"] == 0 and result.feedback["up"] + result.feedback["down"] == result.traffic["answers"]
    assert result.feedback["corrections"] == result.feedback["down"] > 0
    assert result.snapshot["feedback_rows"] > 0 and result.snapshot["content_hash"]
    run = api.ok("GET", _run_path(result.retraining_run))
    assert run["run_type"] == "asset_triggered" and result.retraining_state == "success", run
    consumed = api.ok("GET", _run_path(result.retraining_run) + "/upstreamAssetEvents")["asset_events"]
    assert [e["extra"]["content_hash"] for e in consumed if e["extra"].get("content_hash")] == [
        result.snapshot["content_hash"]], consumed

    after = result.after
    assert "production" in after["aliases"] and after["version"] != before
    assert result.served_after == after["version"]  # the running server followed the alias
    tags = after["tags"]
    assert tags["llmops.data_snapshot"] == result.snapshot["uri"]
    assert tags["llmops.data_snapshot_hash"] == result.snapshot["content_hash"]
    assert (tags["llmops.data_snapshot_rows"], tags["llmops.data_snapshot_feedback_rows"]) == (
        str(result.snapshot["rows"]), str(result.snapshot["feedback_rows"]))
    assert tags["llmops.trigger"].startswith("new preference snapshot"), tags["llmops.trigger"]
    assert tags["llmops.approval_comment"] == loop.APPROVED_BY_DEMO

    # Monitoring asks for a retraining; the scheduler starts it from the retrain-request event.
    policy = home / "monitor-e2e.yaml"
    policy.write_text(MONITOR_POLICY, encoding="utf-8")
    known = {r["dag_run_id"] for r in airflow.runs(api, DAG_ID)}
    monitoring = _trigger(api, {"policy": str(policy), "window": "2h"}, dag_id="llm_monitoring")
    run_state, states = _wait(stack, monitoring, lambda run, s: run in airflow.FINISHED, "monitoring end", 240,
                              dag_id="llm_monitoring")
    assert run_state == "success" and states["request_retraining"] == "success", states
    requested = airflow.wait_for_new_run(api, DAG_ID, known, "asset_triggered", 120)["dag_run_id"]
    _wait(stack, requested, lambda run, s: s.get("resolve_inputs") in ("success", "failed") or run in airflow.FINISHED,
          "resolve_inputs of the requested retraining", 180)
    consumed = api.ok("GET", _run_path(requested) + "/upstreamAssetEvents")["asset_events"]
    reasons = [r["signal"] for e in consumed for r in (e["extra"].get("reasons") or [])]
    assert "thumbs_down" in reasons, consumed
    inputs = api.ok("GET", _run_path(requested) + "/taskInstances/resolve_inputs/xcomEntries/return_value")["value"]
    assert "retrain request from monitoring" in inputs["trigger"] and "thumbs_down" in inputs["trigger"], inputs
    assert inputs["dataset"] == result.snapshot["uri"], inputs  # the newest snapshot, though none started it
    assert inputs["snapshot_manifest"] == result.snapshot["manifest"], inputs
    # Stop it here: training it is what the snapshot-triggered run above already proved.
    api.ok("PATCH", _run_path(requested), {"state": "failed"})
    _wait(stack, requested, lambda run, s: run in airflow.FINISHED and not any(
        v in ("running", "queued", "scheduled", "deferred") for v in s.values()), "the stopped run to settle", 120)
