"""The approvals page (the plugin's FastAPI app) with Airflow's real auth manager and a real
MLflow registry on SQLite: it answers only to a valid Airflow JWT (header or the UI's cookie),
shows only what the caller may read (Airflow's DAG-level permissions on DAG runs), shows aliases,
approvals and governance exceptions, gate decisions and report links, escapes what it renders,
and serves the allowlisted report files of the run folders only: never data or weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks.core import data

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert('x')</script>"
RUN = "manual__2026-01-01T00_00_00_00_00"
DOCS = "validate/gx/uncommitted/data_docs/local_site"
CARD = f"""# page-chat v2

Fine-tuned with **sft**. {HOSTILE} <img src=x onerror=alert(1)> [x](javascript:alert(1)) <http://evil.example>

[ref]: javascript:alert(2)

See [ref] and ![i](http://evil.example/p.png).

| parameter | value |
| --- | --- |
| learning_rate | 5e-05 |
"""

# Reports a viewer may open, and what they must never get (data, quarantined rows, weights,
# tokenizer, optimizer state, GX's complete validation results, model predictions).
REPORT_PATHS = ("eda/eda.html", "eda/eda.json", "validate/validation.json", f"{DOCS}/index.html",
                f"{DOCS}/static/styles/data_docs_default_styles.css", f"{DOCS}/static/images/logo-long.png",
                "evaluate/report.html", "evaluate/metrics.json", "gate/decision.json", "gate/report.html",
                "register/lineage.json")
DATA_PATHS = ("split/train_sft.jsonl", "split/eval.parquet", "validate/quarantine.jsonl",
              "validate/eval_set/quarantine.jsonl", "validate/gx/uncommitted/validations/v/run.json",
              f"{DOCS}/data.csv", "evaluate/predictions_candidate.jsonl", "train/model/model.safetensors",
              "train/model/tokenizer.json", "train/model/tokenizer_config.json",
              "train/checkpoint-10/optimizer.pt", "train/checkpoint-10/trainer_state.json", "train/adapter/adapter_model.safetensors",
              "train/result.json")


@pytest.fixture(scope="module")
def auth_manager():
    """The session's Airflow (conftest), migrated: token validation checks the revoked-token table,
    the DAG-level checks read a DAG's team from the metadata DB."""
    migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                             capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


def jwt(auth_manager, role: str | None, username: str = "approver", teams: list[str] | None = None) -> str:
    """A real token of the simple auth manager; ``role=None`` is its user without any permission."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role, teams=teams))


@pytest.fixture
def token(auth_manager) -> str:
    return jwt(auth_manager, "op")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
    common = {"llmops.gate_reason": f"passed all rules {HOSTILE}", "llmops.method": "sft", "metric.bleu": "0.5",
              "llmops.dag_id": "llm_retraining", "llmops.gate_policy": "gate.yaml",
              "llmops.gate_policy_standard": "true", "llmops.gate_overrides": "{}", "llmops.exceptions": ""}
    versions = {
        "1": {"llmops.approval": "approved", "llmops.approval_by": "approver",
              "llmops.approval_at": "2026-01-01T10:00:00Z", "llmops.approval_comment": "looks good"},
        "2": {"llmops.approval": "waived", "llmops.approval_by": "airflow", "llmops.approval_at": "2026-01-02T10:00:00Z",
              "llmops.approval_comment": "auto: require_approval=false",
              "llmops.gate_policy": "team_gate.yaml", "llmops.gate_policy_standard": "false",
              "llmops.gate_overrides": '{"max_regression": {"value": 0.05, "standard": 0.02}}',
              "llmops.exceptions": ("approval waived by airflow (deployment allows waivers: "
                                    "LLMOPS_ALLOW_APPROVAL_WAIVER); non-standard gate policy: max_regression=0.05 "
                                    "(standard 0.02) (deployment allows it: LLMOPS_ALLOW_GATE_OVERRIDE)")},
        "3": {"llmops.approval": "rejected", "llmops.approval_by": "reviewer", "llmops.approval_at": "2026-01-03T10:00:00Z",
              "llmops.approval_comment": f"answers leak PII {HOSTILE}"},
    }
    for tags in versions.values():
        registry.create_model_version("page-chat", source=str(tmp_path / "model"), tags={**common, **tags})
    registry.set_registered_model_alias("page-chat", "production", "1")
    registry.set_registered_model_alias("page-chat", "staging", "2")

    root = tmp_path / "artifacts"
    run = root / "llm_retraining" / RUN
    data.write_json(str(run / "gate" / "decision.json"), {
        "passed": False, "reason": f"rougeL fell {HOSTILE}", "policy": "team_gate.yaml", "policy_standard": False,
        "overrides": {"max_regression": {"value": 0.05, "standard": 0.02}}})
    data.write_json(str(run / "evaluate" / "metrics.json"), {"candidate": {"bleu": 0.25}, "champion_label": "v1"})
    _write(run / "eda" / "eda.html", "<html>EDA</html>")
    for rel in REPORT_PATHS:
        if not (run / rel).exists():
            _write(run / rel, f"report {rel}")
    for rel in DATA_PATHS:
        _write(run / rel, f'{{"prompt": "secret row of {rel}"}}')
    _write(run / "register" / "model_card.md", CARD)
    # Symlinks: out of the root, and an allowlisted name pointing at data inside the run.
    (root / "secret.txt").write_text("outside the run folders")
    os.symlink(root / "secret.txt", run / "gate" / "report-link.html")
    os.symlink(run / "split" / "train_sft.jsonl", run / "eda" / "previous_eda.json")
    os.symlink(root / "secret.txt", run / "validate" / "eval_set" / "validation.json")
    # A run that used the standard gate, and a data file in its folder.
    other = root / "llm_retraining" / "scheduled__2026-01-08"
    data.write_json(str(other / "gate" / "decision.json"), {"passed": True, "reason": "ok"})
    return TestClient(approvals_app.app)


def test_refuses_requests_without_a_valid_airflow_token(client):
    assert client.get("/").status_code == 401
    assert client.get("/", headers=bearer("not-a-jwt")).status_code == 403
    assert client.get("/api/summary").status_code == 401
    assert client.get(f"/reports/{RUN}/eda/eda.html").status_code == 401


def test_page_shows_aliases_decisions_and_escapes_everything(client, token):
    response = client.get("/", headers=bearer(token))
    assert response.status_code == 200
    page = response.text
    assert "Signed in as approver" in page
    assert "production: v1" in page and "staging: v2" in page
    assert "http://mlflow.example/#/models/page-chat/versions/2" in page
    assert "rejected" in page and "bleu=0.250" in page
    assert f"/llmops/reports/{RUN}/eda/eda.html" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_mlflow_and_report_links_open_outside_airflows_iframe(client, token):
    page = client.get("/", headers=bearer(token)).text
    for href in ("http://mlflow.example/#/models/page-chat'", "http://mlflow.example/#/models/page-chat/versions/1'",
                 f"/llmops/reports/{RUN}/eda/eda.html'", f"/llmops/reports/{RUN}/register/model_card.md'"):
        assert f"{href} target='_blank' rel='noopener noreferrer'>" in page, href


def test_page_shows_waived_non_standard_gate_and_rejected_prominently(client, token):
    from llmops_airflow import approvals_app

    page = client.get("/", headers=bearer(token)).text
    rows = {line.split("versions/")[1].split("'")[0]: line for line in page.split("<tr") if "/versions/" in line}
    assert "class='governance-exception'" in rows["2"]
    assert "<span class='badge warn'>waived</span>" in rows["2"]
    assert "<span class='badge warn'>non-standard gate</span>" in rows["2"]
    assert "by airflow at 2026-01-02T10:00:00Z" in rows["2"] and "auto: require_approval=false" in rows["2"]
    assert "<div class='exceptions'>exception: approval waived by airflow" in rows["2"]
    assert "exception: non-standard gate policy: max_regression=0.05 (standard 0.02)" in rows["2"]
    assert "policy team_gate.yaml; not the deployment&#x27;s standard policy" in rows["2"]
    assert "class='governance-rejected'" in rows["3"] and "<span class='badge bad'>rejected</span>" in rows["3"]
    assert "by reviewer at 2026-01-03T10:00:00Z" in rows["3"] and "answers leak PII &lt;script&gt;" in rows["3"]
    assert "<span class='badge ok'>approved</span>" in rows["1"] and "governance-" not in rows["1"]
    assert ".badge.warn{" in approvals_app.STYLE and ".badge.bad{" in approvals_app.STYLE
    # The gate decisions table: the run whose gate ran a non-standard policy says so.
    decisions = page.split("Latest gate decisions")[1]
    (run_row,) = [row for row in decisions.split("<tr") if RUN in row.split("</td>")[0]]
    assert "<span class='badge warn'>non-standard gate</span>" in run_row
    assert "overridden: max_regression=0.05 (standard 0.02)" in run_row
    (standard_row,) = [row for row in decisions.split("<tr") if "scheduled__2026-01-08" in row]
    assert "non-standard" not in standard_row


def test_ui_session_cookie_is_accepted_and_the_summary_has_the_governance_fields(client, token):
    client.cookies.set("_token", token)
    summary = client.get("/api/summary").json()
    assert summary["may_read_runs"] is True
    model = summary["models"][0]
    assert model["aliases"] == {"production": "1", "staging": "2"}
    by_version = {row["version"]: row for row in model["versions"]}
    assert by_version["2"]["approval"] == "waived" and by_version["2"]["flags"] == ["waived", "non-standard gate"]
    assert by_version["2"]["gate_policy_standard"] is False
    assert by_version["2"]["gate_overrides"] == {"max_regression": {"value": 0.05, "standard": 0.02}}
    assert len(by_version["2"]["exceptions"]) == 2
    assert by_version["3"]["flags"] == ["rejected"] and by_version["1"]["flags"] == []
    decision = next(d for d in summary["decisions"] if d["run"] == RUN)
    assert decision["passed"] is False and decision["non_standard"] is True and decision["policy_standard"] is False
    assert decision["reports"] == {
        "EDA report": f"{RUN}/eda/eda.html", "Data Docs": f"{RUN}/{DOCS}/index.html",
        "Eval report": f"{RUN}/evaluate/report.html", "Model card": f"{RUN}/register/model_card.md"}
    assert next(d for d in summary["decisions"] if d["run"] != RUN)["non_standard"] is False


@pytest.mark.parametrize("role", ["viewer", "user", "admin"])
def test_reports_are_served_but_never_data_or_weights(client, auth_manager, role):
    headers = bearer(jwt(auth_manager, role, username=f"a-{role}"))
    for rel in REPORT_PATHS:
        response = client.get(f"/reports/{RUN}/{rel}", headers=headers)
        assert response.status_code == 200, rel
        assert response.headers["content-security-policy"] == "sandbox allow-scripts"
        assert response.headers["x-content-type-options"] == "nosniff"
    for rel in DATA_PATHS:
        response = client.get(f"/reports/{RUN}/{rel}", headers=headers)
        assert response.status_code in (403, 404), rel
        assert "secret row" not in response.text


def test_reports_are_sandboxed_and_bad_paths_are_404_never_500(client, token):
    headers = bearer(token)
    response = client.get(f"/reports/{RUN}/eda/eda.html", headers=headers)
    assert response.status_code == 200 and response.text == "<html>EDA</html>"
    assert response.headers["content-security-policy"] == "sandbox allow-scripts"
    bad = [
        "../secret.txt", "%2e%2e/secret.txt", f"{RUN}/../../secret.txt", f"{RUN}/%2e%2e/%2e%2e/secret.txt",
        f"{RUN}/eda/eda.html%00", f"{RUN}/eda/eda%00.html", "%00", f"{RUN}%00/eda/eda.html",
        "%2Fetc%2Fpasswd", "/etc/passwd", f"{RUN}/eda\\eda.html", f"{RUN}%5Ceda%5Ceda.html",
        f"{RUN}/gate/report-link.html",  # symlink out of the root
        f"{RUN}/eda/previous_eda.json",  # an allowlisted name, a symlink to training rows
        f"{RUN}/validate/eval_set/validation.json",  # an allowlisted name, a symlink out of the root
        f"{RUN}/nope.html", f"{RUN}/eda/nope.html", f"{RUN}/eda", f"{RUN}/{DOCS}/", f"{RUN}/{DOCS}/static",
        f"{RUN}/%2e/eda/eda.html", f"{RUN}//eda/eda.html", f"{RUN}/eda/eda.html/", "eda/eda.html", "",
        f"{RUN}/eda/" + "x" * 5000 + ".html",
    ]
    for path in bad:
        response = client.get(f"/reports/{path}", headers=headers)
        assert response.status_code == 404, (path, response.status_code)
        assert "outside the run folders" not in response.text and "secret row" not in response.text


def test_the_model_card_is_served_as_html_with_no_script_link_or_image(client, token):
    response = client.get(f"/reports/{RUN}/register/model_card.md", headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == "sandbox allow-scripts"
    html = response.text
    assert "<h1>page-chat v2</h1>" in html and "<strong>sft</strong>" in html
    assert "<table>" in html and "<td>learning_rate</td>" in html
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    lowered = html.lower()
    for markup in ("<script", "<img", "<a ", "href=", "<iframe"):
        assert markup not in lowered, markup


def test_a_user_without_read_access_to_dag_runs_gets_403_and_an_empty_page(client, auth_manager):
    """The simple auth manager's user without a role has no permission at all: Airflow's own
    ``is_authorized_dag`` says no to reading runs of llm_retraining, so the reports route answers
    403 (even for a report), and the page and the summary show no version, decision or report."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    nobody = SimpleAuthManagerUser(username="nobody", role=None)
    assert not auth_manager.is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                              details=DagDetails(id="llm_retraining"), user=nobody)
    headers = bearer(jwt(auth_manager, None, username="nobody"))
    assert client.get(f"/reports/{RUN}/eda/eda.html", headers=headers).status_code == 403
    assert client.get(f"/reports/{RUN}/split/train_sft.jsonl", headers=headers).status_code == 403
    summary = client.get("/api/summary", headers=headers).json()
    assert summary == {"models": [], "decisions": [], "may_read_runs": False}
    page = client.get("/", headers=headers).text
    assert "may not read runs of llm_retraining" in page
    assert "page-chat" not in page and RUN not in page and "/llmops/reports/" not in page


@pytest.fixture
def team_owned_dag(auth_manager):
    """A DAG owned by team ``team_b`` in the metadata DB (a bundle of that team, as Airflow's
    multi-team mode records it), removed after the test."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    with create_session() as session:
        team = Team(name="team_b")
        bundle = DagBundleModel(name="team_b_bundle")
        bundle.teams.append(team)
        session.add_all([team, bundle])
        session.flush()
        session.add(DagModel(dag_id="team_b_dag", bundle_name="team_b_bundle", fileloc="/dags/team_b_dag.py"))
    yield "team_b_dag"
    with create_session() as session:
        session.query(DagModel).filter(DagModel.dag_id == "team_b_dag").delete()
        session.query(DagBundleModel).filter(DagBundleModel.name == "team_b_bundle").delete()
        session.query(Team).filter(Team.name == "team_b").delete()


def test_a_version_is_listed_only_to_those_who_may_read_runs_of_its_dag(client, auth_manager, team_owned_dag,
                                                                        tmp_path):
    """DAG-level permissions per version: a version registered by a DAG of team ``team_b`` is
    hidden from a viewer of another team and shown to a viewer of team_b (the simple auth manager
    checks the DAG's team, read from the metadata DB, against the user's teams)."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowClient(tracking_uri=store, registry_uri=store)
    registry.create_registered_model("team-b-model")
    registry.create_model_version("team-b-model", source=str(tmp_path / "model"),
                                  tags={"llmops.dag_id": team_owned_dag, "llmops.approval": "approved"})
    registry.set_registered_model_alias("team-b-model", "production", "1")

    def names(teams):
        summary = client.get("/api/summary", headers=bearer(jwt(auth_manager, "viewer", "v", teams))).json()
        return {model["name"]: model for model in summary["models"]}

    assert set(names(["team_a"])) == {"page-chat"}
    shown = names(["team_b"])["team-b-model"]
    assert shown["aliases"] == {"production": "1"} and [v["version"] for v in shown["versions"]] == ["1"]


def test_every_linked_report_is_on_the_allowlist():
    from llmops_airflow import approvals_app

    for patterns in approvals_app.REPORTS.values():
        for pattern in patterns:
            assert approvals_app.is_report(pattern), pattern
    assert not approvals_app.is_report("validate/quarantine.jsonl")
    assert not approvals_app.is_report("validate/gx/uncommitted/validations/x.json")
    assert not approvals_app.is_report("train/model/model.safetensors")


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
