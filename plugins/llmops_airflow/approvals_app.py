"""The "LLMOps approvals" page: what someone needs before approving a promotion.

A FastAPI app that the plugin mounts on the API server at ``/llmops``: registered models, which
version holds ``staging`` / ``production`` / ``previous-production``, how each version was approved
(approved / rejected / waived, by whom, when, why) and its governance exceptions, the latest gate
decisions with their metrics, and links to each run's reports (EDA, Data Docs, evaluation report,
model card), served from the run folders under ``$LLMOPS_ARTIFACT_ROOT``.

Airflow does not protect a plugin's app: every route here resolves the caller's JWT (the
``Authorization: Bearer`` header, else the UI's ``_token`` cookie) with Airflow's own validator,
and asks Airflow's auth manager what the caller may read, as Airflow's own routes do
(``requires_access_dag``): reading a run's reports or gate decision needs read access to DAG runs
of ``llm_retraining``; a registered version is listed only to those who may read runs of the DAG
that registered it. ``/reports`` serves only the report files in :data:`REPORT_ALLOWLIST` (never
data sets, quarantined rows, weights, tokenizers or optimizer state); anything else is a 404.
Every value rendered is HTML-escaped, and a report is served under ``Content-Security-Policy:
sandbox``. MLflow and Airflow internals are imported inside the handlers: every Airflow component
imports the plugin, only the API server serves this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
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

# What /reports serves, and nothing else: step folder of a run -> the report files in it. An entry
# ending in "/" is a Great Expectations Data Docs site: its pages and their static assets
# (DATA_DOCS_KINDS) below that folder. Never served: data sets and splits (jsonl/parquet/csv),
# quarantine.jsonl (raw rows), predictions, GX stores outside data_docs (complete validation
# results), model weights, adapters, tokenizers, checkpoints and optimizer state (train/).
REPORT_ALLOWLIST: dict[str, tuple[str, ...]] = {
    "eda": ("eda.html", "eda.json", "previous_eda.json"),
    "validate": ("validation.json", "eval_set/validation.json",
                 "gx/uncommitted/data_docs/", "eval_set/gx/uncommitted/data_docs/"),
    "evaluate": ("report.html", "metrics.json"),
    "gate": ("report.html", "decision.json"),
    "register": ("model_card.md", "lineage.json"),  # the card is served rendered as HTML
}
DATA_DOCS_KINDS = frozenset({".html", ".css", ".js", ".png", ".gif", ".jpg", ".jpeg", ".svg", ".ico",
                             ".otf", ".ttf", ".woff", ".woff2"})
MODEL_CARD = "register/model_card.md"

# label -> files inside a run folder, first found wins; a report a run lacks is not linked. Each
# is on REPORT_ALLOWLIST (tests/test_approvals_app.py checks).
REPORTS: dict[str, tuple[str, ...]] = {
    "EDA report": ("eda/eda.html",),
    "Data Docs": ("validate/gx/uncommitted/data_docs/local_site/index.html", "validate/validation.json"),
    "Eval report": ("evaluate/report.html", "gate/report.html", "evaluate/metrics.json"),
    "Model card": (MODEL_CARD,),
}

# A report runs in an opaque origin: its scripts (charts) work, Airflow's session does not reach them.
REPORT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                  "Content-Security-Policy": "sandbox allow-scripts"}
NEW_TAB = "target='_blank' rel='noopener noreferrer'"  # MLflow refuses to be framed (X-Frame-Options)

app = FastAPI(title="LLMOps approvals", docs_url=None, redoc_url=None, openapi_url=None)


async def current_user(request: Request) -> Any:
    """The logged-in Airflow user, or 401/403 from Airflow's token validation."""
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    return await resolve_user_from_token(token)


CurrentUser = Annotated[Any, Depends(current_user)]


class RunReader:
    """Whether a user may read DAG runs of a DAG, asked of Airflow's auth manager the way its own
    routes do (``security.requires_access_dag("GET", DagAccessEntity.RUN)``: the DAG's team from
    the metadata DB, then ``is_authorized_dag``); one answer per DAG id and request."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self._answers: dict[str, bool] = {}

    def __call__(self, dag_id: str) -> bool:
        if dag_id not in self._answers:
            from airflow.api_fastapi.app import get_auth_manager
            from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
            from airflow.models.dag import DagModel

            details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
            self._answers[dag_id] = get_auth_manager().is_authorized_dag(
                method="GET", access_entity=DagAccessEntity.RUN, details=details, user=self.user)
        return self._answers[dag_id]


def run_reader(user: CurrentUser) -> RunReader:
    return RunReader(user)


Readable = Annotated[RunReader, Depends(run_reader)]


def _artifact_root() -> Path:
    from llmops_tasks.core import settings

    return Path(settings.artifact_root()).resolve()


def _runs_dir() -> Path:
    return _artifact_root() / DAG_ID


def _mlflow_ui() -> str:
    return os.environ.get("LLMOPS_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")


def is_report(relative: str) -> bool:
    """Whether ``relative`` (a path inside a run folder: ``<step>/<file>``) is on the allowlist."""
    step, _, rest = relative.partition("/")
    for allowed in REPORT_ALLOWLIST.get(step, ()):
        if allowed.endswith("/"):
            if rest.startswith(allowed) and PurePosixPath(rest).suffix.lower() in DATA_DOCS_KINDS:
                return True
        elif rest == allowed:
            return True
    return False


def report_target(runs_dir: Path, path: str) -> Path | None:
    """The file ``path`` (``<run>/<step>/<file>``, relative to the DAG's runs folder) names, or
    ``None`` unless it is an allowlisted report that exists as a regular file reached without a
    symlink, ``..``, an absolute path, a backslash or a NUL byte."""
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        return None
    parts = path.split("/")
    if len(parts) < 3 or any(part in ("", ".", "..") for part in parts) or parts[0].startswith("."):
        return None
    if not is_report("/".join(parts[1:])):
        return None
    candidate = runs_dir.joinpath(*parts)
    try:
        # Equal only when no component below the (resolved) runs folder is a symlink.
        if candidate.resolve(strict=True) != candidate or not candidate.is_file():
            return None
    except (OSError, ValueError, RuntimeError):
        return None
    return candidate


def _flag(value: Any) -> bool | None:
    text = str(value if value is not None else "").strip().lower()
    return {"true": True, "false": False}.get(text)


def _overrides(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {"unreadable": str(value)}
    return parsed if isinstance(parsed, dict) else {}


def governance_flags(approval: str, policy_standard: bool | None, overrides: dict, exceptions: list[str]) -> list[str]:
    """The warning badges of a version: ``rejected``, ``waived``, ``non-standard gate``, and
    ``exception`` for an exception named in the tags that neither of those covers."""
    flags = []
    if approval == "rejected":
        flags.append("rejected")
    if approval == "waived":
        flags.append("waived")
    if policy_standard is False or overrides:
        flags.append("non-standard gate")
    if exceptions and not {"waived", "non-standard gate"} & set(flags):
        flags.append("exception")
    return flags


def _version_row(mv: Any, aliases: dict[str, str]) -> dict:
    from llmops_tasks.registry import modelcard

    tags = mv.tags or {}
    approval = tags.get("llmops.approval", "")
    standard = _flag(tags.get("llmops.gate_policy_standard"))
    overrides = _overrides(tags.get("llmops.gate_overrides"))
    exceptions = modelcard.exception_items(tags.get("llmops.exceptions", ""))
    return {
        "version": str(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "dag_id": tags.get("llmops.dag_id") or DAG_ID,
        "dag_run": tags.get("llmops.dag_run_id", ""),
        "method": tags.get("llmops.method", ""),
        "gate": tags.get("llmops.gate_reason", ""),
        "gate_policy": tags.get("llmops.gate_policy", ""),
        "gate_policy_standard": standard,
        "gate_overrides": overrides,
        "approval": approval,
        "approval_by": tags.get("llmops.approval_by", ""),
        "approval_at": tags.get("llmops.approval_at", ""),
        "comment": tags.get("llmops.approval_comment", "") or tags.get("llmops.promotion_comment", ""),
        "exceptions": exceptions,
        "flags": governance_flags(approval, standard, overrides, exceptions),
        "metrics": {k.removeprefix("metric."): v for k, v in sorted(tags.items()) if k.startswith("metric.")},
        "cost": {key: tags[f"llmops.{key}"] for key in COST_KEYS if tags.get(f"llmops.{key}") not in (None, "")},
        "train_run": tags.get("llmops.train_mlflow_run", ""),
    }


# What a version's training cost: version tags llmops.<key> where register copied them, else the
# train run's metrics of the same names (and its tag llmops.cost_currency).
COST_KEYS = ("gpus", "train_wall_seconds", "gpu_hours", "gpu_hour_price", "cost", "cost_currency")


def _train_run_cost(client: Any, run_id: str) -> dict:
    """The cost figures the train step logged on its MLflow run; {} when the run is gone or has none."""
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a deleted run only means no cost to show
        return {}
    found: dict[str, Any] = {k: v for k, v in run.data.metrics.items() if k in COST_KEYS}
    if "cost" in found:
        found["cost_currency"] = run.data.tags.get("llmops.cost_currency", "") or "USD"
    return found


def registry_overview(may_read: Callable[[str], bool] = lambda dag_id: True) -> list[dict]:
    """Each registered model with its aliases and latest versions (tags hold gate and approval),
    only the versions (and aliases) whose DAG's runs ``may_read`` allows; a model with none is left out."""
    from llmops_tasks.core import tracking

    client = tracking.client()
    models = []
    for model in client.search_registered_models(max_results=50):
        aliases = {alias: str(version) for alias, version in (getattr(model, "aliases", {}) or {}).items()}
        versions = client.search_model_versions(f"name = '{model.name}'", max_results=RECENT_VERSIONS,
                                                order_by=["version_number DESC"])
        rows = [_version_row(mv, aliases) for mv in versions]
        for row in rows:
            if not row["cost"] and row["train_run"]:
                row["cost"] = _train_run_cost(client, row["train_run"])
        dag_of = {row["version"]: row["dag_id"] for row in rows}
        for version in set(aliases.values()) - set(dag_of):
            try:
                dag_of[version] = (client.get_model_version(model.name, version).tags or {}).get("llmops.dag_id") or DAG_ID
            except Exception:  # noqa: BLE001 - a version deleted meanwhile is simply not shown
                dag_of[version] = ""
        visible = [row for row in rows if may_read(row["dag_id"])]
        shown_aliases = {a: v for a, v in aliases.items() if dag_of.get(v) and may_read(dag_of[v])}
        if visible or shown_aliases:
            models.append({"name": model.name, "aliases": shown_aliases, "versions": visible})
    return models


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def gate_decisions(root: Path, limit: int = RECENT_RUNS) -> list[dict]:
    """The latest runs that reached the gate: decision, its policy, candidate metrics, report links."""
    runs_dir = root / DAG_ID
    decisions = sorted(runs_dir.glob("*/gate/decision.json"), key=_mtime, reverse=True)
    rows = []
    for path in decisions[:limit]:
        run_dir = path.parent.parent
        decision = _read_json(path)
        metrics = _read_json(run_dir / "evaluate" / "metrics.json")
        standard = decision.get("policy_standard")
        overrides = _overrides(decision.get("overrides") or {})
        policy = decision.get("policy") or decision.get("policy_file") or ""
        rows.append({
            "run": run_dir.name,
            "passed": bool(decision.get("passed")),
            "reason": decision.get("reason", ""),
            "policy": policy if isinstance(policy, str) else json.dumps(policy, sort_keys=True),
            "policy_standard": standard if isinstance(standard, bool) else None,
            "overrides": overrides,
            "non_standard": standard is False or bool(overrides),
            "candidate": metrics.get("candidate", {}) if isinstance(metrics.get("candidate"), dict) else {},
            "champion": metrics.get("champion_label", ""),
            "reports": run_reports(run_dir),
        })
    return rows


def run_reports(run_dir: Path) -> dict[str, str]:
    """label -> path relative to the DAG's runs folder, for the reports this run has and /reports serves."""
    found = {}
    for label, patterns in REPORTS.items():
        for pattern in patterns:
            match = next((p for p in sorted(run_dir.glob(pattern))
                          if report_target(run_dir.parent, p.relative_to(run_dir.parent).as_posix())), None)
            if match is not None:
                found[label] = match.relative_to(run_dir.parent).as_posix()
                break
    return found


def _cost_cell(cost: dict) -> str:
    from llmops_tasks.registry import modelcard

    return modelcard.cost_text(cost) or "-"


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2933}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.8rem}
table{border-collapse:collapse;width:100%;font-size:.9rem} td,th{border:1px solid #d9e2ec;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f4f8} .alias{display:inline-block;background:#e3f8ff;border-radius:.6rem;padding:0 .5rem;margin-right:.2rem}
.production{background:#c6f7e2} .passed{color:#0b7a3e;font-weight:600} .rejected{color:#b42318;font-weight:600}
.muted{color:#627d98}
.badge{display:inline-block;border-radius:.3rem;padding:.05rem .45rem;margin:0 .25rem .15rem 0;font-weight:700;font-size:.8rem;text-transform:uppercase;letter-spacing:.02em}
.badge.ok{background:#e3f9e5;color:#0b7a3e;border:1px solid #0b7a3e}
.badge.warn{background:#fff3c4;color:#8d2b0b;border:1px solid #de911d}
.badge.bad{background:#b42318;color:#fff;border:1px solid #b42318}
.badge.pending{background:#f0f4f8;color:#486581;border:1px solid #9fb3c8}
tr.governance-exception td{background:#fffbea} tr.governance-exception td:first-child{border-left:4px solid #de911d}
tr.governance-rejected td{background:#fff5f5} tr.governance-rejected td:first-child{border-left:4px solid #b42318}
.exceptions{margin:.3rem 0 0;padding:.25rem .4rem;background:#fff3c4;border-left:3px solid #de911d;color:#8d2b0b;font-weight:600}
"""

BADGE_CLASS = {"approved": "ok", "rejected": "bad", "waived": "warn", "non-standard gate": "warn", "exception": "warn"}


def _badge(label: str) -> str:
    return f"<span class='badge {BADGE_CLASS.get(label, 'pending')}'>{esc(label)}</span>"


def _approval_cell(row: dict) -> str:
    decision = row["approval"]
    parts = [_badge(decision) if decision else _badge("pending")]
    parts += [_badge(flag) for flag in row["flags"] if flag not in (decision, "rejected")]
    who = " ".join(filter(None, (f"by {row['approval_by']}" if row["approval_by"] else "",
                                 f"at {row['approval_at']}" if row["approval_at"] else "")))
    if who:
        parts.append(f"<br>{esc(who)}")
    if row["comment"]:
        parts.append(f"<br><span class='muted'>{esc(row['comment'])}</span>")
    if row["exceptions"]:
        parts.append("<div class='exceptions'>" + "<br>".join(f"exception: {esc(e)}" for e in row["exceptions"])
                     + "</div>")
    return "".join(parts)


def _gate_policy_text(policy: str, standard: bool | None, overrides: dict) -> str:
    from llmops_tasks.registry import modelcard

    bits = []
    if policy:
        bits.append(f"policy {policy}")
    if standard is False:
        bits.append("not the deployment's standard policy")
    if overrides:
        bits.append("overridden: " + modelcard.overrides_text(overrides))
    return "; ".join(bits)


def _row_class(flags: list[str]) -> str:
    if "rejected" in flags:
        return " class='governance-rejected'"
    return " class='governance-exception'" if flags else ""


def render_page(models: list[dict], decisions: list[dict], user_name: str, runs_visible: bool = True) -> str:
    ui = _mlflow_ui()
    parts = ["<h1>LLMOps approvals</h1>",
             (f"<p class='muted'>Signed in as {esc(user_name)}. Approve or reject a waiting promotion in "
              "Airflow's <em>Required actions</em>; this page shows what the decision rests on.</p>"),
             "<h2>Registered models</h2>"]
    if not models:
        parts.append("<p class='muted'>No registered model you may see yet: a run registers one when its candidate "
                     "passes the gate.</p>")
    for model in models:
        name = model["name"]
        aliases = " ".join(
            f"<span class='alias {esc(alias)}'>{esc(alias)}: v{esc(version)}</span>"
            for alias, version in sorted(model["aliases"].items()))
        parts.append(f"<h3><a href='{esc(ui)}/#/models/{esc(quote(name, safe=''))}' {NEW_TAB}>{esc(name)}</a> "
                     f"{aliases}</h3>")
        parts.append("<table><tr><th>version</th><th>aliases</th><th>method</th><th>metrics</th><th>gate</th>"
                     "<th>approval and governance</th><th>training cost</th><th>DAG run</th></tr>")
        for row in model["versions"]:
            link = f"{ui}/#/models/{quote(name, safe='')}/versions/{quote(row['version'], safe='')}"
            policy = _gate_policy_text(row["gate_policy"], row["gate_policy_standard"], row["gate_overrides"])
            parts.append(
                f"<tr{_row_class(row['flags'])}><td><a href='{esc(link)}' {NEW_TAB}>v{esc(row['version'])}</a></td>"
                f"<td>{esc(', '.join(row['aliases']))}{monitoring_link(name, row)}</td><td>{esc(row['method'])}</td>"
                f"<td>{esc(_metrics_text(row['metrics']))}</td>"
                f"<td>{esc(row['gate'])}{f'<br><span class=muted>{esc(policy)}</span>' if policy else ''}</td>"
                f"<td>{_approval_cell(row)}</td><td>{esc(_cost_cell(row.get('cost') or {}))}</td>"
                f"<td>{esc(row['dag_run'])}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Latest gate decisions</h2>")
    if not runs_visible:
        parts.append(f"<p class='muted'>Your Airflow role may not read runs of {esc(DAG_ID)}: its gate decisions "
                     "and reports are not shown.</p>")
    elif not decisions:
        parts.append("<p class='muted'>No run has reached the gate yet.</p>")
    else:
        parts.append("<table><tr><th>run</th><th>decision</th><th>gate policy</th><th>candidate metrics</th>"
                     "<th>compared with</th><th>reports</th></tr>")
        for row in decisions:
            verdict = "<span class='passed'>passed</span>" if row["passed"] else "<span class='rejected'>rejected</span>"
            policy = _gate_policy_text(row["policy"], row["policy_standard"], row["overrides"])
            if row["non_standard"]:
                policy_cell = f"{_badge('non-standard gate')}<br>{esc(policy)}"
            else:
                policy_cell = esc(policy or ("standard" if row["policy_standard"] else ""))
            links = " · ".join(
                f"<a href='{esc(URL_PREFIX)}/reports/{esc(quote(rel))}' {NEW_TAB}>{esc(label)}</a>"
                for label, rel in row["reports"].items())
            parts.append(
                f"<tr{_row_class(['non-standard gate'] if row['non_standard'] else [])}><td>{esc(row['run'])}</td>"
                f"<td>{verdict}<br>{esc(row['reason'])}</td><td>{policy_cell}</td>"
                f"<td>{esc(_metrics_text(row['candidate']))}</td><td>{esc(row['champion'])}</td>"
                f"<td>{links}</td></tr>")
        parts.append("</table>")
    return page("LLMOps approvals", "\n".join(parts), STYLE)


CARD_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:60rem;color:#1f2933;line-height:1.45}
table{border-collapse:collapse;font-size:.9rem} td,th{border:1px solid #d9e2ec;padding:.3rem .5rem;text-align:left}
th{background:#f0f4f8} code{background:#f0f4f8;padding:0 .2rem;border-radius:.2rem}
"""


def render_model_card(markdown: str, title: str) -> str:
    """The model card as a page: CommonMark + tables (markdown-it-py), with raw HTML, links,
    images and autolinks switched off, so nothing in the card can add markup or point elsewhere."""
    from markdown_it import MarkdownIt

    renderer = (MarkdownIt("commonmark", {"html": False, "linkify": False})
                .enable("table")
                .disable(["html_block", "html_inline", "link", "image", "autolink", "reference"]))
    return page(title, renderer.render(markdown), CARD_STYLE)


def _summary(reader: RunReader) -> tuple[list[dict], list[dict], bool]:
    runs_visible = reader(DAG_ID)
    decisions = gate_decisions(_artifact_root()) if runs_visible else []
    return registry_overview(reader), decisions, runs_visible


@app.get("/", response_class=HTMLResponse)
def approvals_page(user: CurrentUser, reader: Readable) -> HTMLResponse:
    models, decisions, runs_visible = _summary(reader)
    html = render_page(models, decisions, user.get_name(), runs_visible)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@app.get("/api/summary")
def approvals_summary(user: CurrentUser, reader: Readable) -> dict:
    """The page's data as JSON, for scripts and tests: only what the caller may read."""
    models, decisions, runs_visible = _summary(reader)
    return {"models": models, "decisions": decisions, "may_read_runs": runs_visible}


@app.get("/reports/{path:path}")
def report_file(path: str, reader: Readable) -> Any:
    """A report file of a run of ``llm_retraining`` (:data:`REPORT_ALLOWLIST`), to a caller who may
    read that DAG's runs (else 403); any other path is a 404. The model card comes rendered as HTML."""
    if not reader(DAG_ID):
        raise HTTPException(status_code=403, detail=f"Forbidden: you may not read runs of {DAG_ID}")
    target = report_target(_runs_dir(), path)
    if target is None:
        raise HTTPException(status_code=404, detail=f"no report {path!r} under the {DAG_ID} run folders")
    if path.endswith("/" + MODEL_CARD):
        try:
            markdown = target.read_text(encoding="utf-8", errors="replace")
        except OSError:
            raise HTTPException(status_code=404, detail=f"no report {path!r}") from None
        run = path.split("/", 1)[0]
        return HTMLResponse(render_model_card(markdown, f"Model card of {run}"), headers=REPORT_HEADERS)
    return FileResponse(target, headers=REPORT_HEADERS)


# --------------------------------------------------------------------------- monitoring reports
# llm_monitoring tags each monitored version with the path of its latest window's report
# (``llmops.monitor_report``, under {artifact_root}/llm_monitoring/); the page links it for the
# version holding production, and /monitoring serves it to those who may read llm_monitoring's runs.
MONITORING_DAG_ID = "llm_monitoring"
MONITOR_REPORT_TAG = "llmops.monitor_report"


def monitoring_link(model: str, row: dict) -> str:
    """The "monitoring" link of a production version's row ('' for any other version)."""
    if "production" not in row.get("aliases", ()):
        return ""
    href = f"{URL_PREFIX}/monitoring/{quote(model, safe='')}/{quote(str(row['version']), safe='')}"
    return f"<br><a href='{esc(href)}' {NEW_TAB}>monitoring report</a>"


def monitoring_report_target(report: str) -> Path | None:
    """The report a version's tag names, only if it is a ``report.html`` below the llm_monitoring
    run folders reached without a symlink or ``..``."""
    if not report or "\x00" in report or "\\" in report:
        return None
    root = _artifact_root() / MONITORING_DAG_ID
    candidate = Path(report)
    if candidate.name != "report.html" or ".." in candidate.parts or not candidate.is_absolute():
        return None
    try:
        if candidate.resolve(strict=True) != candidate or not candidate.is_file():
            return None
        candidate.relative_to(root)
    except (OSError, ValueError, RuntimeError):
        return None
    return candidate


@app.get("/monitoring/{model}/{version}")
def monitoring_report(model: str, version: str, reader: Readable) -> Any:
    """The latest monitoring report of a model version, to a caller who may read runs of llm_monitoring."""
    from llmops_tasks.core import tracking

    if not reader(MONITORING_DAG_ID):
        raise HTTPException(status_code=403, detail=f"Forbidden: you may not read runs of {MONITORING_DAG_ID}")
    try:
        tags = tracking.client().get_model_version(model, version).tags or {}
    except Exception:  # noqa: BLE001 - no such model or version: nothing to serve
        tags = {}
    target = monitoring_report_target(tags.get(MONITOR_REPORT_TAG, ""))
    if target is None:
        raise HTTPException(status_code=404, detail=f"no monitoring report for {model} v{version} yet")
    return FileResponse(target, headers=REPORT_HEADERS)
