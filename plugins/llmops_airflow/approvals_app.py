"""The "LLMOps approvals" page: what someone needs before approving a promotion.

A FastAPI app that the plugin mounts on the API server at ``/llmops``: registered models, which
version holds ``staging`` / ``production`` / ``previous-production``, the latest gate decisions
with their metrics, and links to each run's reports (EDA, Data Docs, evaluation report, model
card), served from the run folders under ``$LLMOPS_ARTIFACT_ROOT``.

Airflow does not protect a plugin's app: every route here resolves the caller's JWT (the
``Authorization: Bearer`` header, else the UI's ``_token`` cookie) with Airflow's own validator,
so only logged-in Airflow users get an answer. Every value rendered is HTML-escaped, and report
paths are confined to the artifact root. MLflow and Airflow internals are imported inside the
handlers: every Airflow component imports the plugin, only the API server serves this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from llmops_tasks.core.html import esc, page

URL_PREFIX = "/llmops"
DAG_ID = "llm_retraining"
RECENT_RUNS = 10
RECENT_VERSIONS = 10
COOKIE_NAME_JWT_TOKEN = "_token"  # the Airflow UI's session cookie (base_auth_manager.COOKIE_NAME_JWT_TOKEN)

# label -> file patterns inside a run folder, first match wins; a report a run lacks is not linked.
REPORTS: dict[str, tuple[str, ...]] = {
    "EDA report": ("eda/eda.html",),
    "Data Docs": ("validate/gx/**/index.html", "validate/**/index.html", "validate/validation.json"),
    "Eval report": ("evaluate/report.html", "gate/report.html", "evaluate/metrics.json"),
    "Model card": ("register/model_card.md", "**/model_card.md"),
}

app = FastAPI(title="LLMOps approvals", docs_url=None, redoc_url=None, openapi_url=None)


async def current_user(request: Request) -> Any:
    """The logged-in Airflow user, or 401/403 from Airflow's token validation."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    return await resolve_user_from_token(token)


CurrentUser = Annotated[Any, Depends(current_user)]


def _artifact_root() -> Path:
    from llmops_tasks.core import settings

    return Path(settings.artifact_root()).resolve()


def _mlflow_ui() -> str:
    return os.environ.get("LLMOPS_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")


def registry_overview() -> list[dict]:
    """Each registered model with its aliases and latest versions (tags hold gate and approval)."""
    from llmops_tasks.core import tracking

    client = tracking.client()
    models = []
    for model in client.search_registered_models(max_results=50):
        aliases = {alias: str(version) for alias, version in (getattr(model, "aliases", {}) or {}).items()}
        versions = client.search_model_versions(f"name = '{model.name}'", max_results=RECENT_VERSIONS,
                                                order_by=["version_number DESC"])
        rows = []
        for mv in versions:
            tags = mv.tags or {}
            rows.append({
                "version": str(mv.version),
                "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                "dag_run": tags.get("llmops.dag_run_id", ""),
                "method": tags.get("llmops.method", ""),
                "gate": tags.get("llmops.gate_reason", ""),
                "approval": " ".join(filter(None, (tags.get("llmops.approval", ""), tags.get("llmops.approval_by", "")))),
                "comment": tags.get("llmops.approval_comment", "") or tags.get("llmops.promotion_comment", ""),
                "metrics": {k.removeprefix("metric."): v for k, v in sorted(tags.items()) if k.startswith("metric.")},
            })
        models.append({"name": model.name, "aliases": aliases, "versions": rows})
    return models


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def gate_decisions(root: Path, limit: int = RECENT_RUNS) -> list[dict]:
    """The latest runs that reached the gate: decision, candidate metrics, report links."""
    runs_dir = root / DAG_ID
    decisions = sorted(runs_dir.glob("*/gate/decision.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    rows = []
    for path in decisions[:limit]:
        run_dir = path.parent.parent
        decision = _read_json(path)
        metrics = _read_json(run_dir / "evaluate" / "metrics.json")
        rows.append({
            "run": run_dir.name,
            "passed": bool(decision.get("passed")),
            "reason": decision.get("reason", ""),
            "candidate": metrics.get("candidate", {}),
            "champion": metrics.get("champion_label", ""),
            "reports": run_reports(run_dir),
        })
    return rows


def run_reports(run_dir: Path) -> dict[str, str]:
    """label -> path relative to the DAG's runs folder, for the reports this run has."""
    found = {}
    for label, patterns in REPORTS.items():
        for pattern in patterns:
            match = next((p for p in sorted(run_dir.glob(pattern)) if p.is_file()), None)
            if match is not None:
                found[label] = match.relative_to(run_dir.parent).as_posix()
                break
    return found


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2933}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.8rem}
table{border-collapse:collapse;width:100%;font-size:.9rem} td,th{border:1px solid #d9e2ec;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f4f8} .alias{display:inline-block;background:#e3f8ff;border-radius:.6rem;padding:0 .5rem;margin-right:.2rem}
.production{background:#c6f7e2} .passed{color:#0b7a3e;font-weight:600} .rejected{color:#b42318;font-weight:600}
.muted{color:#627d98}
"""


def render_page(models: list[dict], decisions: list[dict], user_name: str) -> str:
    ui = _mlflow_ui()
    parts = ["<h1>LLMOps approvals</h1>",
             (f"<p class='muted'>Signed in as {esc(user_name)}. Approve or reject a waiting promotion in "
              "Airflow's <em>Required actions</em>; this page shows what the decision rests on.</p>"),
             "<h2>Registered models</h2>"]
    if not models:
        parts.append("<p class='muted'>No registered model yet: a run registers one when its candidate passes the gate.</p>")
    for model in models:
        name = model["name"]
        aliases = " ".join(
            f"<span class='alias {esc(alias)}'>{esc(alias)}: v{esc(version)}</span>"
            for alias, version in sorted(model["aliases"].items()))
        parts.append(f"<h3><a href='{esc(ui)}/#/models/{esc(quote(name, safe=''))}'>{esc(name)}</a> {aliases}</h3>")
        parts.append("<table><tr><th>version</th><th>aliases</th><th>method</th><th>metrics</th><th>gate</th>"
                     "<th>approval</th><th>DAG run</th></tr>")
        for row in model["versions"]:
            link = f"{ui}/#/models/{quote(name, safe='')}/versions/{quote(row['version'], safe='')}"
            parts.append(
                f"<tr><td><a href='{esc(link)}'>v{esc(row['version'])}</a></td>"
                f"<td>{esc(', '.join(row['aliases']))}</td><td>{esc(row['method'])}</td>"
                f"<td>{esc(_metrics_text(row['metrics']))}</td><td>{esc(row['gate'])}</td>"
                f"<td>{esc(row['approval'])}<br><span class='muted'>{esc(row['comment'])}</span></td>"
                f"<td>{esc(row['dag_run'])}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Latest gate decisions</h2>")
    if not decisions:
        parts.append("<p class='muted'>No run has reached the gate yet.</p>")
    else:
        parts.append("<table><tr><th>run</th><th>decision</th><th>candidate metrics</th><th>compared with</th>"
                     "<th>reports</th></tr>")
        for row in decisions:
            verdict = "<span class='passed'>passed</span>" if row["passed"] else "<span class='rejected'>rejected</span>"
            links = " · ".join(
                f"<a href='{esc(URL_PREFIX)}/reports/{esc(quote(rel))}' target='_blank'>{esc(label)}</a>"
                for label, rel in row["reports"].items())
            parts.append(
                f"<tr><td>{esc(row['run'])}</td><td>{verdict}<br>{esc(row['reason'])}</td>"
                f"<td>{esc(_metrics_text(row['candidate']))}</td><td>{esc(row['champion'])}</td>"
                f"<td>{links}</td></tr>")
        parts.append("</table>")
    return page("LLMOps approvals", "\n".join(parts), STYLE)


@app.get("/", response_class=HTMLResponse)
def approvals_page(user: CurrentUser) -> HTMLResponse:
    html = render_page(registry_overview(), gate_decisions(_artifact_root()), user.get_name())
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@app.get("/api/summary")
def approvals_summary(user: CurrentUser) -> dict:
    """The page's data as JSON, for scripts and tests."""
    return {"models": registry_overview(), "decisions": gate_decisions(_artifact_root())}


@app.get("/reports/{path:path}")
def report_file(path: str, user: CurrentUser) -> FileResponse:
    """A file from a run folder of ``llm_retraining``; nothing outside it is served."""
    runs_dir = (_artifact_root() / DAG_ID).resolve()
    target = (runs_dir / path).resolve()
    if not target.is_relative_to(runs_dir) or not target.is_file():
        raise HTTPException(status_code=404, detail=f"no report {path!r} under the {DAG_ID} run folders")
    # A report runs in an opaque origin: its scripts (charts) work, Airflow's session does not reach them.
    return FileResponse(target, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                         "Content-Security-Policy": "sandbox allow-scripts"})
