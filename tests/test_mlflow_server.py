"""The registry against a real MLflow tracking server with its basic-auth app, on loopback.

``mlflow server --app-name basic-auth`` starts on 127.0.0.1 and a free port with a temp backend
store, artifact folder and auth database; the admin creates a user, and register / promote /
status / rollback run as that user with credentials from the environment MLflow's client reads.
Then the model_rollback DAG runs (real Airflow, ``dag.test()``) with the server given only by the
Airflow Connection ``mlflow_default``: the worker's own MLFLOW_TRACKING_URI points at an empty
SQLite file, so only the Connection can make the rollback land. The password must appear in no
task output and no XCom.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmops_tasks import cli, registry
from llmops_tasks.core import data
from llmops_tasks.local import bootstrap, samples
from llmops_tasks.local.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "served-registry-model"
USER, PASSWORD = "promoter", "Pr0moter-secret-9d1f"
ADMIN, ADMIN_PASSWORD = "admin", "Adm1n-secret-5e2a"

DAG_RUNNER = """
import json, sys
from airflow.utils.db import upgradedb
upgradedb()
from airflow.dag_processing.dagbag import DagBag
from llmops_tasks.local.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder() / "model_rollback.py"))
assert not bag.import_errors, bag.import_errors
dag_run = bag.dags["model_rollback"].test(run_conf={"reason": "rollback drill through the Connection"})
ti = dag_run.get_task_instance("rollback")
print("RESULT " + json.dumps({"state": str(dag_run.state), "xcom": ti.xcom_pull(task_ids="rollback")}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A basic-auth MLflow server on loopback; yields its URL; stopped (process group) at the end."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    (folder / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{folder}/auth.db\n"
        f"admin_username = {ADMIN}\nadmin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # cache verified credentials: without it each request pays a PBKDF2 check (about 1 s here)
        "auth_cache_ttl_seconds = 300\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(folder / "basic_auth.ini")
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.urandom(16).hex()  # the auth app's CSRF key
    log = open(folder / "server.log", "w")  # noqa: SIM115 (the server's output while it runs; closed with it)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not start:\n" + (folder / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        yield {"url": url, "folder": folder}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # uvicorn and job-runner children of the server
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def as_user(server, tmp_path_factory):
    """The admin creates the promoting user; the registry then runs with that user's credentials."""
    from mlflow.server import get_app_client

    folder = tmp_path_factory.mktemp("as-user")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", server["url"])
        env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        get_app_client("basic-auth", tracking_uri=server["url"]).create_user(USER, PASSWORD)
        env.setenv("MLFLOW_TRACKING_USERNAME", USER)
        env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        env.setenv("LLMOPS_HOME", str(folder))
        env.setenv("LLMOPS_MODEL_NAME", MODEL)
        env.setenv("LLMOPS_ACTOR", USER)
        env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        model_dir = bootstrap.build_tiny_model(folder / "model", samples.corpus_text())
        yield {"folder": folder, "model_dir": model_dir}


def register_candidate(folder: Path, model_dir: Path, fingerprint: str) -> str:
    out = folder / fingerprint
    out.mkdir()
    data.write_json(str(out / "result.json"), {"model_dir": str(model_dir), "fingerprint": fingerprint,
                                               "method": "sft", "base_model": str(model_dir)})
    data.write_json(str(out / "metrics.json"), {"candidate": {"bleu": 0.3}, "champion": {"bleu": 0.1}})
    data.write_json(str(out / "decision.json"), {"passed": True, "reason": "passed all rules"})
    return registry.register(registry.RegisterConfig(
        train_result=str(out / "result.json"), metrics=str(out / "metrics.json"),
        decision=str(out / "decision.json"), input_example="false"))["version"]


def test_the_server_refuses_requests_without_credentials(server):
    request = urllib.request.Request(f"{server['url']}/api/2.0/mlflow/registered-models/search")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_register_promote_status_rollback_against_the_server(as_user, capsys):
    first = register_candidate(as_user["folder"], as_user["model_dir"], "server-a")
    second = register_candidate(as_user["folder"], as_user["model_dir"], "server-b")
    assert (first, second) == ("1", "2")
    registry.promote(registry.PromoteConfig(version="1", expected_production="none"))
    assert cli.main(["registry", "promote", "--version", "2", "--expected-production", "1",
                     "--comment", "better on the eval set"]) == 0
    capsys.readouterr()
    assert cli.main(["registry", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["aliases"] == {"staging": "2", "production": "2", "previous-production": "1"}
    assert status["versions"]["2"]["promoted_by"] == USER
    assert PASSWORD not in json.dumps(status)
    # each hand promotion is its promoter's approval, recorded before the move
    assert [e["action"] for e in registry.audit_events(MODEL)] == ["staged", "staged", "approved", "promoted",
                                                                   "approved", "promoted"]
    assert registry.alias_versions(MODEL)["production"] == "2"


def test_the_rollback_dag_reaches_the_server_through_the_airflow_connection(server, as_user):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({
        # the worker's own setting points elsewhere: only the Connection leads to the server
        "MLFLOW_TRACKING_URI": f"sqlite:///{as_user['folder']}/not-the-server.db",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": int(server["url"].rsplit(":", 1)[1]),
            "login": USER, "password": PASSWORD}),
        "LLMOPS_MODEL_NAME": MODEL,
    })
    proc = subprocess.run([sys.executable, "-c", DAG_RUNNER], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"dag.test() did not finish:\n{output[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["state"] == "success", output[-4000:]
    assert result["xcom"] == {"model_name": MODEL, "version": "1", "changed": True, "replaced": "2"}
    assert PASSWORD not in output
    assert registry.alias_versions(MODEL) == {"staging": "2", "production": "1", "previous-production": "2"}
    last = registry.audit_events(MODEL)[-1]
    assert (last["action"], last["dag_id"], last["reason"]) == ("rolled_back", "model_rollback",
                                                                 "rollback drill through the Connection")


@pytest.mark.unit
@pytest.mark.parametrize(("fields", "uri"), [
    ({"host": "mlflow.internal", "port": 5000}, "http://mlflow.internal:5000"),
    ({"host": "mlflow.example.com", "schema": "https"}, "https://mlflow.example.com"),
    ({"host": "https://mlflow.example.com:8443/"}, "https://mlflow.example.com:8443"),
    ({"host": "gateway", "port": 80, "extra": '{"path": "/mlflow/"}'}, "http://gateway:80/mlflow"),
])
def test_the_connection_gives_the_tracking_uri(fields, uri):
    from airflow.sdk import Connection

    from llmops_airflow.mlflow_connection import settings_from

    settings = settings_from(Connection(conn_id="mlflow_default", conn_type="http", **fields))
    assert settings == {"MLFLOW_TRACKING_URI": uri}


@pytest.mark.unit
def test_credentials_go_to_mlflow_variables_only():
    from airflow.sdk import Connection

    from llmops_airflow.mlflow_connection import settings_from

    connection = Connection(conn_id="mlflow_default", conn_type="http", host="mlflow", port=5000,
                            login=USER, password=PASSWORD, extra='{"registry_uri": "http://registry:5000"}')
    assert settings_from(connection) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_REGISTRY_URI": "http://registry:5000",
        "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}


@pytest.mark.unit
def test_a_connection_without_host_or_with_another_scheme_is_named():
    from airflow.sdk import Connection

    from llmops_airflow.mlflow_connection import settings_from

    with pytest.raises(ValueError, match="'mlflow_default': host is empty"):
        settings_from(Connection(conn_id="mlflow_default", conn_type="http"))
    with pytest.raises(ValueError, match="schema must be http or https"):
        settings_from(Connection(conn_id="mlflow_default", conn_type="http", host="h", schema="ftp"))
