"""MLflow model registry: register a gated candidate, promote it, roll back.

Aliases, never the deprecated stages: ``staging`` is the latest registered candidate,
``production`` the serving version, ``previous-production`` the one it replaced (the rollback
target). Every move is tagged on the version it touches (who, when, why, the DAG run), and every
operation is idempotent: registering the same DAG run twice returns the first version; promoting
the version that already holds ``production`` changes nothing.

Concurrency rule: a promotion names the ``production`` version its gate compared against
(``expected_production``). If ``production`` moved since, the promotion is refused, so a stale
candidate can never replace a newer champion (compare-and-set; the check and the move are not
one transaction in MLflow, so the window is the time between two registry calls).
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops_tasks import data, settings, tracking
from llmops_tasks.config import field, require
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

STAGING = "staging"
PRODUCTION = "production"
PREVIOUS = "previous-production"
ALIASES = (STAGING, PRODUCTION, PREVIOUS)

# Pinned into every logged model so a serving environment rebuilds what was tested.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "safetensors", "tokenizers", "pandas")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _actor(explicit: str = "") -> str:
    return explicit or os.environ.get("LLMOPS_ACTOR") or getpass.getuser()


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def alias_versions(name: str, mlflow_client=None) -> dict[str, str]:
    """alias -> version for the registered model ({} when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or tracking.client()
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _find_version(name: str, tag: str, value: str, mlflow_client) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in found)) if found else None


def _set_tags(name: str, version: str, tags: dict[str, Any], mlflow_client) -> None:
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value)[:5000])


# --------------------------------------------------------------------------- register


@dataclass
class RegisterConfig:
    train_result: str = field("", help="train step's result.json (model_dir, method, hashes)")
    metrics: str = field("", help="evaluate step's metrics.json")
    decision: str = field("", help="gate step's decision.json; a candidate that failed its gate is never registered")
    dataset_hash: str = field("", help="content hash of the validated data set (lineage)")
    model_name: str = field("", help="registered model name (default: $LLMOPS_MODEL_NAME or llmops-chat)")

    def __post_init__(self) -> None:
        for name in ("train_result", "metrics", "decision"):
            require(bool(getattr(self, name)), f"registry register: {name} is required (a JSON file path)")
        self.model_name = self.model_name or settings.model_name()


def register(config: RegisterConfig) -> dict:
    """Log the candidate as a pyfunc model, register it, point ``staging`` at it."""
    decision = data.read_json(config.decision)
    if not decision.get("passed"):
        raise StepFailed(
            f"registry: refusing to register: the candidate failed its gate ({decision.get('reason', 'no reason')})",
            {"registered": False, "reason": decision.get("reason", "")},
        )
    train = data.read_json(config.train_result)
    metrics = data.read_json(config.metrics)
    ctx = RunContext.from_env()
    mlflow_client = tracking.client()
    name = config.model_name
    run_key = f"{ctx.dag_id}/{ctx.run_id}" if ctx.run_id else f"adhoc/{train['fingerprint']}"

    version = _find_version(name, "llmops.source_run", run_key, mlflow_client)
    if version is None:
        version = _log_and_register(name, train, metrics, decision, config, ctx, run_key)
    mlflow_client.set_registered_model_alias(name, STAGING, version)
    _set_tags(name, version, {"llmops.staging_at": _now()}, mlflow_client)
    return {"model_name": name, "version": version, "aliases": _aliases_of(name, version, mlflow_client)}


def _log_and_register(name, train, metrics, decision, config, ctx, run_key) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    candidate = metrics.get("candidate", {})
    lineage = {
        "llmops.source_run": run_key,
        "llmops.dag_id": ctx.dag_id,
        "llmops.dag_run_id": ctx.run_id,
        "llmops.dataset_hash": config.dataset_hash,
        "llmops.train_data_hash": train.get("train_data_hash", ""),
        "llmops.eval_data_hash": metrics.get("eval_hash", ""),
        "llmops.config_hash": train.get("config_hash", ""),
        "llmops.base_model": train.get("base_model", ""),
        "llmops.method": train.get("method", ""),
        "llmops.package_version": tracking.__version__,
        "llmops.code_revision": os.environ.get("LLMOPS_CODE_REVISION", ""),
        "llmops.train_mlflow_run": train.get("mlflow_run_id", ""),
        "llmops.gate_passed": str(bool(decision.get("passed"))).lower(),
        "llmops.gate_reason": decision.get("reason", ""),
        "llmops.champion": metrics.get("champion_label", ""),
        "llmops.champion_version": metrics.get("champion_version", ""),
        **{f"metric.{k}": round(float(v), 6) for k, v in candidate.items() if isinstance(v, (int, float))},
    }
    signature = infer_signature(pd.DataFrame({"prompt": ["How do I reset my password?"]}), ["Open the sign-in page."])
    with tracking.step_run("register", params={"model_name": name}, tags={"method": train.get("method", "")}) as run_id:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving.py")),
                artifacts={"model": train["model_dir"]},
                pip_requirements=_pip_requirements(),
                signature=signature,
                input_example=None,
                registered_model_name=name,
                tags={k: str(v) for k, v in lineage.items()},
            )
            tracking.log_metrics(run_id, {k: v for k, v in candidate.items() if isinstance(v, (int, float))})
    version = str(info.registered_model_version)
    _set_tags(name, version, lineage, tracking.client())
    return version


def _aliases_of(name: str, version: str, mlflow_client) -> list[str]:
    return sorted(a for a, v in alias_versions(name, mlflow_client).items() if v == str(version))


# --------------------------------------------------------------------------- promote / rollback


@dataclass
class PromoteConfig:
    version: str = field("", help="model version to promote (default: the one holding 'staging')")
    expected_production: str = field(
        "", help="version the gate compared against ('none' if there was no production); refuse if production moved"
    )
    approved_by: str = field("", help="who approved the promotion (default: $LLMOPS_ACTOR or the OS user)")
    comment: str = field("", help="why: the approval comment, recorded on the version")
    model_name: str = field("", help="registered model name (default: $LLMOPS_MODEL_NAME or llmops-chat)")

    def __post_init__(self) -> None:
        self.model_name = self.model_name or settings.model_name()
        self.version = str(self.version).strip()


def promote(config: PromoteConfig) -> dict:
    mlflow_client = tracking.client()
    name = config.model_name
    aliases = alias_versions(name, mlflow_client)
    version = config.version or aliases.get(STAGING, "")
    if not version:
        raise StepFailed(f"registry promote: no version given and no '{STAGING}' alias on {name}")
    mv = mlflow_client.get_model_version(name, version)
    if (mv.tags or {}).get("llmops.gate_passed") != "true":
        raise StepFailed(f"registry promote: {name} v{version} has no passed gate decision; it cannot reach production")
    current = aliases.get(PRODUCTION, "")
    if current == version:
        return {"model_name": name, "version": version, "changed": False, "aliases": _aliases_of(name, version, mlflow_client)}
    if config.expected_production:
        expected = "" if config.expected_production.lower() == "none" else config.expected_production
        if current != expected:
            raise StepFailed(
                f"registry promote: production is v{current or 'none'} but the gate of v{version} compared against "
                f"v{expected or 'none'}; refusing to replace a newer champion with a stale candidate",
                {"model_name": name, "version": version, "changed": False, "production": current},
            )
    actor = _actor(config.approved_by)
    if current:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
        _set_tags(name, current, {"llmops.replaced_at": _now(), "llmops.replaced_by_version": version}, mlflow_client)
    mlflow_client.set_registered_model_alias(name, PRODUCTION, version)
    ctx = RunContext.from_env()
    _set_tags(name, version, {
        "llmops.promoted_by": actor,
        "llmops.promoted_at": _now(),
        "llmops.promotion_comment": config.comment,
        "llmops.promoted_in_run": f"{ctx.dag_id}/{ctx.run_id}" if ctx.run_id else "cli",
        "llmops.replaced_version": current or "none",
    }, mlflow_client)
    return {"model_name": name, "version": version, "changed": True, "replaced": current,
            "aliases": _aliases_of(name, version, mlflow_client)}


def record_approval(version: str, *, approved: bool, by: str, comment: str = "", model_name: str = "") -> None:
    """Record an approval decision (or its waiver) on the version, before any alias moves."""
    name = model_name or settings.model_name()
    ctx = RunContext.from_env()
    _set_tags(name, version, {
        "llmops.approval": "approved" if approved else "rejected",
        "llmops.approval_by": _actor(by),
        "llmops.approval_at": _now(),
        "llmops.approval_comment": comment,
        "llmops.approval_run": f"{ctx.dag_id}/{ctx.run_id}" if ctx.run_id else "cli",
    }, tracking.client())


@dataclass
class RollbackConfig:
    to_version: str = field("", help="version to put back in production (default: 'previous-production')")
    reason: str = field("", help="why: recorded on both versions")
    actor: str = field("", help="who rolled back (default: $LLMOPS_ACTOR or the OS user)")
    model_name: str = field("", help="registered model name (default: $LLMOPS_MODEL_NAME or llmops-chat)")

    def __post_init__(self) -> None:
        self.model_name = self.model_name or settings.model_name()
        self.to_version = str(self.to_version).strip()


def rollback(config: RollbackConfig) -> dict:
    mlflow_client = tracking.client()
    name = config.model_name
    aliases = alias_versions(name, mlflow_client)
    target = config.to_version or aliases.get(PREVIOUS, "")
    if not target:
        raise StepFailed(f"registry rollback: {name} has no '{PREVIOUS}' alias and no --to-version was given")
    current = aliases.get(PRODUCTION, "")
    if current == target:
        return {"model_name": name, "version": target, "changed": False}
    actor = _actor(config.actor)
    mlflow_client.set_registered_model_alias(name, PRODUCTION, target)
    if current:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
        _set_tags(name, current, {"llmops.rolled_back_at": _now(), "llmops.rolled_back_by": actor,
                                  "llmops.rollback_reason": config.reason}, mlflow_client)
    _set_tags(name, target, {"llmops.restored_at": _now(), "llmops.restored_by": actor,
                             "llmops.restore_reason": config.reason, "llmops.replaced_version": current or "none"},
              mlflow_client)
    return {"model_name": name, "version": target, "changed": True, "replaced": current}


@dataclass
class StatusConfig:
    model_name: str = field("", help="registered model name (default: $LLMOPS_MODEL_NAME or llmops-chat)")
    json: bool = field(False, help="print only the JSON (each alias and its version)")

    def __post_init__(self) -> None:
        self.model_name = self.model_name or settings.model_name()


def status(config: StatusConfig) -> dict:
    mlflow_client = tracking.client()
    aliases = alias_versions(config.model_name, mlflow_client)
    versions = {}
    for version in sorted(set(aliases.values()), key=int):
        mv = mlflow_client.get_model_version(config.model_name, version)
        tags = mv.tags or {}
        versions[version] = {
            "aliases": sorted(a for a, v in aliases.items() if v == version),
            "dag_run": tags.get("llmops.source_run", ""),
            "metrics": {k.removeprefix("metric."): v for k, v in tags.items() if k.startswith("metric.")},
            "promoted_by": tags.get("llmops.promoted_by", ""),
        }
    return {"model_name": config.model_name, "tracking_uri": settings.tracking_uri(), "aliases": aliases,
            "versions": versions}


def render_status(result: dict) -> str:
    lines = [f"{result['model_name']}  ({result['tracking_uri']})"]
    if not result["aliases"]:
        lines.append("  no registered versions with aliases yet")
    for alias in ALIASES:
        version = result["aliases"].get(alias)
        if version:
            info = result["versions"][version]
            metrics = ", ".join(f"{k}={v}" for k, v in sorted(info["metrics"].items()))
            lines.append(f"  {alias:<20} v{version}  {info['dag_run']}  {metrics}")
    return "\n".join(lines)


def resolve_champion(fallback: str, model_name: str = "") -> dict:
    """The model the candidate must beat: ``production`` if one exists, else ``fallback`` (the base)."""
    import mlflow

    name = model_name or settings.model_name()
    mlflow_client = tracking.client()
    version = alias_versions(name, mlflow_client).get(PRODUCTION)
    if not version:
        return {"model_dir": fallback, "label": "base", "version": ""}
    cache = settings.home() / "cache" / "registry" / name / str(version)
    if not (cache / "MLmodel").exists():
        cache.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(cache))
    model_dir = _hf_model_dir(cache)
    if model_dir is None:
        raise StepFailed(f"registry: {name} v{version} has no Hugging Face model artifact named 'model'")
    return {"model_dir": str(model_dir), "label": f"production v{version}", "version": str(version)}


def _hf_model_dir(local_model: Path) -> Path | None:
    """The folder of pyfunc artifact ``model``, as the MLmodel file records it."""
    import yaml

    meta = yaml.safe_load((local_model / "MLmodel").read_text())
    relative = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("model", {})
    path = local_model / relative.get("path", "artifacts/model")
    return path if (path / "config.json").exists() else None


def command():
    from llmops_tasks.cli import Command

    return {
        "register": Command(RegisterConfig, register, "register a gated candidate and alias it 'staging'"),
        "status": Command(StatusConfig, status, "show each alias (staging, production, previous-production) and its version",
                          render=render_status),
        "promote": Command(PromoteConfig, promote, "move 'production' to a version (compare-and-set, audited)"),
        "rollback": Command(RollbackConfig, rollback, "move 'production' back to 'previous-production' (audited)"),
    }
