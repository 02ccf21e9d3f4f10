"""The approvals page (the plugin's FastAPI app) with Airflow's real auth manager and a real
MLflow registry on SQLite: it answers only to a valid Airflow JWT (header or the UI's cookie),
shows aliases, gate decisions and report links, escapes what it renders, and serves report files
from the run folders only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks.core import data

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def auth_manager():
    """The session's Airflow (conftest), migrated: token validation checks the revoked-token table."""
    migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                             capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.fixture
def token(auth_manager) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="approver", role="op"))


@pytest.fixture
def client(tmp_path, monkeypatch, auth_manager):
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from llmops_airflow import approvals_app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("LLMOPS_MLFLOW_UI", "http://mlflow.example")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowClient(tracking_uri=store, registry_uri=store)
    registry.create_registered_model("page-chat")
    for version in ("1", "2"):
        registry.create_model_version("page-chat", source=str(tmp_path / "model"), tags={
            "llmops.gate_reason": f"passed all rules {HOSTILE}", "llmops.method": "sft",
            "metric.bleu": "0.5", "llmops.approval": "approved", "llmops.approval_by": "approver"})
    registry.set_registered_model_alias("page-chat", "production", "1")
    registry.set_registered_model_alias("page-chat", "staging", "2")

    run = tmp_path / "artifacts" / "llm_retraining" / "manual__2026-01-01T00_00_00_00_00"
    data.write_json(str(run / "gate" / "decision.json"), {"passed": False, "reason": f"rougeL fell {HOSTILE}"})
    data.write_json(str(run / "evaluate" / "metrics.json"), {"candidate": {"bleu": 0.25}, "champion_label": "v1"})
    (run / "eda").mkdir(parents=True)
    (run / "eda" / "eda.html").write_text("<html>EDA</html>")
    (tmp_path / "artifacts" / "secret.txt").write_text("outside the run folders")
    return TestClient(approvals_app.app)


def test_refuses_requests_without_a_valid_airflow_token(client):
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert client.get("/api/summary").status_code == 401
    assert client.get("/reports/x/eda/eda.html").status_code == 401


def test_page_shows_aliases_decisions_and_escapes_everything(client, token):
    response = client.get("/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    page = response.text
    assert "Signed in as approver" in page
    assert "production: v1" in page and "staging: v2" in page
    assert "http://mlflow.example/#/models/page-chat/versions/2" in page
    assert "rejected" in page and "bleu=0.250" in page
    assert "/llmops/reports/manual__2026-01-01T00_00_00_00_00/eda/eda.html" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_ui_session_cookie_is_accepted(client, token):
    client.cookies.set("_token", token)
    summary = client.get("/api/summary").json()
    model = summary["models"][0]
    assert model["aliases"] == {"production": "1", "staging": "2"}
    assert summary["decisions"][0]["passed"] is False
    assert summary["decisions"][0]["reports"] == {"EDA report": "manual__2026-01-01T00_00_00_00_00/eda/eda.html",
                                                  "Eval report": "manual__2026-01-01T00_00_00_00_00/evaluate/metrics.json"}


def test_reports_are_served_sandboxed_and_only_from_run_folders(client, token):
    headers = {"Authorization": f"Bearer {token}"}
    response = client.get("/reports/manual__2026-01-01T00_00_00_00_00/eda/eda.html", headers=headers)
    assert response.status_code == 200 and response.text == "<html>EDA</html>"
    assert response.headers["content-security-policy"] == "sandbox allow-scripts"
    assert client.get("/reports/../secret.txt", headers=headers).status_code == 404
    assert client.get("/reports/%2e%2e/secret.txt", headers=headers).status_code == 404
    assert client.get("/reports/manual__2026-01-01T00_00_00_00_00/nope.html", headers=headers).status_code == 404


def test_api_server_mounts_the_page_the_plugin_builds_on_demand():
    """What Airflow's API server does with plugins: ``init_plugins`` mounts each ``fastapi_apps``
    entry, the UI lists ``external_views``, ``/api/v2/plugins`` dumps them. The plugin builds these
    from the approvals app when first read (no other component reads them, so no other imports
    FastAPI: tests/test_dag_integrity.py); the app they give is the page."""
    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_plugins
    from fastapi import FastAPI
    from starlette.routing import Mount

    from llmops_airflow import approvals_app

    api = FastAPI()
    init_plugins(api)
    mounts = {route.path: route.app for route in api.routes if isinstance(route, Mount)}
    assert mounts[approvals_app.URL_PREFIX] is approvals_app.app
    external_views, _ = plugins_manager._get_ui_plugins()
    assert {"url_route": "llmops-approvals", "href": approvals_app.URL_PREFIX + "/", "destination": "nav",
            "category": "browse", "name": "LLMOps approvals"} in external_views
    (info,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "llmops"]
    assert info["fastapi_apps"] == [{"app": "fastapi.applications.FastAPI", "url_prefix": approvals_app.URL_PREFIX,
                                     "name": "LLMOps approvals"}]
