"""A small client of a running Airflow API server (``llmops up``), standard library only.

What the loop demo and the services tests do through Airflow's REST API: log in with the simple
auth manager's generated password, unpause, trigger, wait for a run or one of its tasks, answer a
human-in-the-loop approval, and find the run an asset event started.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from llmops_tasks.core.errors import StepFailed

FINISHED = ("failed", "success")
WAITING_FOR_A_PERSON = ("deferred", "awaiting_input")


class Api:
    """A REST client of the API server at ``base``, logged in with ``token`` (a JWT)."""

    def __init__(self, base: str, token: str = "") -> None:
        self.base, self.token = base.rstrip("/"), token

    @classmethod
    def login(cls, base: str, username: str, password: str) -> Api:
        status, answer = cls(base).call("POST", "/auth/token", {"username": username, "password": password})
        if status not in (200, 201) or not isinstance(answer, dict) or "access_token" not in answer:
            raise StepFailed(f"airflow: login as {username} at {base} failed ({status}): {answer}")
        return cls(base, answer["access_token"])

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
        token = self.token if token is None else token
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status = response.read().decode(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read().decode(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def ok(self, method: str, path: str, body: dict | None = None):
        status, payload = self.call(method, path, body)
        for _ in range(3):  # a read the API server failed (its SQLite store busy under load): ask again
            if method != "GET" or status < 500:
                break
            time.sleep(2)
            status, payload = self.call(method, path, body)
        if status >= 300:
            raise StepFailed(f"airflow: {method} {path} answered {status}: {payload}")
        return payload


def password(airflow_home: Path, username: str = "admin") -> str:
    """The simple auth manager's generated password of ``username`` (written on the API server's first start)."""
    from llmops_tasks.local import services

    return json.loads((Path(airflow_home) / services.PASSWORDS_FILE).read_text())[username]


def run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def wait_for_dag(api: Api, dag_id: str, timeout: float = 120) -> None:
    """Wait until the DAG processor has parsed ``dag_id`` and the API knows it."""
    deadline = time.monotonic() + timeout
    while api.call("GET", f"/api/v2/dags/{dag_id}")[0] != 200:
        if time.monotonic() > deadline:
            raise StepFailed(f"airflow: DAG {dag_id} did not appear in the API within {timeout:g} s")
        time.sleep(2)


def unpause(api: Api, dag_id: str) -> None:
    api.ok("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})


def trigger(api: Api, dag_id: str, conf: dict) -> str:
    """Start a manual run of ``dag_id`` with ``conf``; its run id."""
    return api.ok("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]


def task_states(api: Api, dag_id: str, run_id: str) -> dict[str, str | None]:
    payload = api.ok("GET", run_path(dag_id, run_id) + "/taskInstances?limit=100")
    return {t["task_id"]: t["state"] for t in payload["task_instances"]}


def wait(api: Api, dag_id: str, run_id: str, done: Callable[[str, dict], bool], what: str, timeout: float,
         poll: float = 3.0, diagnose: Callable[[], str] | None = None) -> tuple[str, dict]:
    """Poll the run until ``done(run_state, task_states)``; :class:`StepFailed` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        states = task_states(api, dag_id, run_id)
        run_state = api.ok("GET", run_path(dag_id, run_id))["state"]
        if done(run_state, states):
            return run_state, states
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise StepFailed(f"airflow: {what} not reached in {timeout:g} s; run {run_id} is {run_state}, "
                             f"tasks {states}{extra}")
        time.sleep(poll)


def wait_until_finished(api: Api, dag_id: str, run_id: str, timeout: float, **kwargs) -> tuple[str, dict]:
    return wait(api, dag_id, run_id, lambda run, _: run in FINISHED, f"the end of {dag_id} run", timeout, **kwargs)


def wait_for_approval(api: Api, dag_id: str, run_id: str, task_id: str, timeout: float, **kwargs) -> tuple[str, dict]:
    """Wait until ``task_id`` waits for a person (or the run ended first: the caller checks which)."""
    return wait(api, dag_id, run_id, lambda run, s: s.get(task_id) in WAITING_FOR_A_PERSON or run in FINISHED,
                f"{task_id} waiting for a person", timeout, **kwargs)


def parked(scheduler_log: Path, dag_id: str, task_id: str, run_id: str, timeout: float = 120) -> None:
    """Wait until the scheduler has taken in the exit of the approval task's parked process.

    A person answers minutes after the task parks in Required actions. An answer within the
    scheduler's next loop races Airflow itself: the resumed task is running when the executor's
    "success" of the parked process arrives, and the scheduler marks the running task FAILED
    (LocalExecutor, Airflow 3.3.2). So a program answers only once that event is in the scheduler log.
    """
    line = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
            f"task_id='{task_id}', run_id='{run_id}'")
    deadline = time.monotonic() + timeout
    while line not in Path(scheduler_log).read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise StepFailed(f"airflow: the scheduler never saw {dag_id}.{task_id} of {run_id} park")
        time.sleep(1)


def api_value(api: Api, dag_id: str, run_id: str, task_id: str) -> dict:
    """A task's return value (its ``return_value`` XCom) when it is a mapping, else ``{}``."""
    status, payload = api.call("GET", f"{run_path(dag_id, run_id)}/taskInstances/{task_id}/xcomEntries/return_value")
    value = payload.get("value") if status == 200 and isinstance(payload, dict) else None
    return value if isinstance(value, dict) else {}


def answer(api: Api, dag_id: str, run_id: str, task_id: str, option: str, comment: str) -> dict:
    """Answer a human-in-the-loop task (e.g. Approve / Reject) through the HITL REST endpoint."""
    hitl = f"{run_path(dag_id, run_id)}/taskInstances/{task_id}/-1/hitlDetails"
    detail = api.ok("GET", hitl)
    if option not in detail.get("options", []):
        raise StepFailed(f"airflow: {dag_id}.{task_id} offers {detail.get('options')}, not {option!r}")
    return api.ok("PATCH", hitl, {"chosen_options": [option], "params_input": {"comment": comment}})


def runs(api: Api, dag_id: str, run_type: str | None = None, limit: int = 100) -> list[dict]:
    """The DAG's ``limit`` newest runs, oldest first; only ``run_type`` (e.g. ``asset_triggered``) when given."""
    payload = api.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-id&limit={int(limit)}")
    found = list(reversed(payload["dag_runs"]))
    return [r for r in found if run_type is None or r.get("run_type") == run_type]


def wait_for_new_run(api: Api, dag_id: str, known: set[str], run_type: str, timeout: float) -> dict:
    """Wait for a run of ``dag_id`` of ``run_type`` that is not in ``known`` (e.g. one an asset event started)."""
    deadline = time.monotonic() + timeout
    while True:
        new = [r for r in runs(api, dag_id, run_type) if r["dag_run_id"] not in known]
        if new:
            return new[0]
        if time.monotonic() > deadline:
            raise StepFailed(f"airflow: no new {run_type} run of {dag_id} within {timeout:g} s")
        time.sleep(2)


def asset_events(api: Api, asset_name: str, source_dag_id: str = "", source_run_id: str = "",
                 limit: int = 100) -> list[dict]:
    """The ``limit`` newest events of the asset named ``asset_name`` (only those a given DAG run
    emitted, when named), oldest first."""
    assets = api.ok("GET", f"/api/v2/assets?name_pattern={quote(asset_name)}")["assets"]
    asset = next((a for a in assets if a["name"] == asset_name), None)
    if asset is None:
        return []
    found = api.ok("GET", f"/api/v2/assets/events?asset_id={asset['id']}&order_by=-timestamp&limit={int(limit)}")
    return [e for e in reversed(found["asset_events"])
            if (not source_dag_id or e.get("source_dag_id") == source_dag_id)
            and (not source_run_id or e.get("source_run_id") == source_run_id)]
