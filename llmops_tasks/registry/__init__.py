"""MLflow model registry: register a gated candidate, promote it, roll back; every move audited.

Aliases, never the deprecated stages: ``staging`` is the latest registered candidate,
``production`` the serving version, ``previous-production`` the one it replaced (the rollback
target). Every operation is idempotent: registering the same DAG run twice returns the first
version; promoting the version that already holds ``production`` changes nothing; a retried
operation finds the audit line it already wrote.

Concurrency rule: every alias move of a model runs under its registry lock (``audit.registry_lock``,
a mutex built on the atomic creation of a registered model), and a promotion names the
``production`` version its gate compared against (``expected_production``). Under the lock,
production is read, compared and moved, so of two promotions racing from the same champion
exactly one wins and the other is refused; a stale candidate never replaces a newer champion.

Promotion rules (``rules.py``) are checked here, under the lock, on every path that moves
``production``: a rejected version never holds it, a waived approval or a non-standard gate policy
only where the deployment allows it.

Audit: each move tags the versions it touches (who, when, why, the DAG run, the gate decision) and
appends one line to the model's append-only ``audit.jsonl`` (see ``audit.py``); so does each
approval decision. Each version's description is its model card (``modelcard.py``), whose
governance section follows the version's approval.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmops_tasks.core import data, settings, tracking
from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.settings import RunContext
from llmops_tasks.registry import audit, modelcard, rules
from llmops_tasks.serving import flavor

STAGING = "staging"
PRODUCTION = "production"
PREVIOUS = "previous-production"
ALIASES = (STAGING, PRODUCTION, PREVIOUS)

# An input example makes MLflow load the model and run it once while logging (about 1.3 s for the
# tiny model, minutes and the model's memory for a large one): "auto" adds it below this size.
INPUT_EXAMPLE_MAX_BYTES = 1 << 30
EXAMPLE_PROMPT = "How do I reset my password?"


def _now() -> str:
    return audit.now()


def _actor(explicit: str = "") -> str:
    return explicit or os.environ.get("LLMOPS_ACTOR") or getpass.getuser()


def _run_label(ctx: RunContext) -> str:
    return f"{ctx.dag_id}/{ctx.run_id}" if ctx.run_id else "cli"


def folder_hash(path: str) -> str:
    """sha256 over a local model folder (relative file names and bytes); '' for a hub id."""
    root = Path(path)
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def alias_versions(name: str, mlflow_client=None) -> dict[str, str]:
    """alias -> version for the registered model ({} when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or tracking.client()
    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def find_version(name: str, tag: str, value: str, mlflow_client) -> str | None:
    """The newest version of ``name`` whose tag ``tag`` is ``value`` (the registry filters), else None."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    except MlflowException:
        return None
    return str(max(int(v.version) for v in found)) if found else None


def _model_version(name: str, version: str, mlflow_client, action: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, version)
    except MlflowException:
        raise StepFailed(f"registry {action}: {name} has no version {version!r}",
                         {"model_name": name, "version": version, "changed": False}) from None


def _set_tags(name: str, version: str, tags: dict[str, Any], mlflow_client) -> None:
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value)[:5000])


def _lock(name: str, mlflow_client, action: str):
    return audit.registry_lock(name, mlflow_client, holder=f"{action} by {_actor()} in {_run_label(RunContext.from_env())}")


def _record(name: str, mlflow_client, action: str, version: str, key: tuple, **fields: Any) -> None:
    """One audit line (idempotent by ``key``); call under the model's registry lock."""
    ctx = RunContext.from_env()
    audit.AuditLog(name, mlflow_client).append({
        "event_id": audit.event_id(name, action, version, *key),
        "action": action,
        "version": str(version),
        "dag_id": ctx.dag_id,
        "dag_run_id": ctx.run_id,
        "task_id": ctx.task_id,
        **fields,
    })


def audit_events(name: str = "", mlflow_client=None) -> list[dict]:
    """The model's audit log, oldest first (its hash chain verified)."""
    return audit.AuditLog(name or settings.model_name(), mlflow_client or tracking.client()).events()


# --------------------------------------------------------------------------- register


@dataclass
class RegistryConfig:
    """What every registry action has: the registered model it acts on."""

    model_name: str = field("", help="registered model name (default: $LLMOPS_MODEL_NAME or llmops-chat)")

    def __post_init__(self) -> None:
        self.model_name = (self.model_name or settings.model_name()).strip()
        require(bool(self.model_name) and not set(self.model_name) & set("/:%"),
                f"registry: model_name {self.model_name!r} cannot be a registered model name (no '/', ':' or '%')")


def _version_number(value: str, setting: str, *, words: tuple[str, ...] = ()) -> str:
    """A model version as given (``3`` or ``v3``), checked: digits, or one of ``words``, or empty."""
    value = str(value).strip().removeprefix("v")
    require(not value or value.isdigit() or value.lower() in words,
            f"registry: {setting} must be a version number{' or ' + ' / '.join(words) if words else ''}, "
            f"got {value!r}")
    return value


@dataclass
class AliasMoveConfig(RegistryConfig):
    """What every alias move has: how long it waits for the model's registry lock."""

    lock_timeout: float = field(120.0, help="seconds to wait for another alias move of this model to finish")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lock_timeout >= 0, f"registry: lock_timeout must be 0 or more, got {self.lock_timeout}")


@dataclass
class RegisterConfig(RegistryConfig):
    train_result: str = field("", path="input", help="train step's result.json (model_dir, method, hashes)")
    metrics: str = field("", path="input", help="evaluate step's metrics.json")
    decision: str = field("", path="input", help="gate step's decision.json; a candidate that failed its gate is never registered")
    dataset_hash: str = field("", help="content hash of the validated data set (lineage)")
    validation: str = field("", path="input", help="validate step's validation.json: data snapshot size and findings for the model card")
    snapshot: str = field("", path="input", help="manifest.json of the curated preference snapshot the data set is "
                          "(lineage: its content hash, rows, rows from feedback); empty: not a curated snapshot")
    trigger: str = field("", help="what started the pipeline run (a schedule, a person, a snapshot or a monitoring "
                         "retrain request), recorded on the version")
    input_example: Literal["auto", "true", "false"] = field(
        "auto", help="log an input example (MLflow then loads and runs the model once); auto: below 1 GiB of weights")
    intended_use: str = field(modelcard.INTENDED_USE, help="model card: what the model is for")
    limitations: str = field(modelcard.LIMITATIONS, help="model card: what it was not evaluated for")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_result", "metrics", "decision"):
            require(bool(getattr(self, name)), f"registry register: {name} is required (a JSON file path)")
        self.input_example = str(self.input_example).lower()  # type: ignore[assignment]
        require(self.input_example in ("auto", "true", "false"),
                f"registry register: input_example must be auto, true or false, got {self.input_example!r}")


def register(config: RegisterConfig) -> dict:
    """Log the candidate as a pyfunc model, register it with its card, point ``staging`` at it."""
    decision = data.read_json(config.decision)
    if not decision.get("passed"):
        raise StepFailed(
            f"registry: refusing to register: the candidate failed its gate ({decision.get('reason', 'no reason')})",
            {"registered": False, "reason": decision.get("reason", "")},
        )
    if why := rules.gate_refusal(decision):
        raise StepFailed(f"registry: refusing to register: {why}", {"registered": False, "reason": why})
    train = data.read_json(config.train_result)
    metrics = data.read_json(config.metrics)
    validation = data.read_json(config.validation) if config.validation else None
    ctx = RunContext.from_env()
    mlflow_client = tracking.client()
    name = config.model_name
    run_key = f"{ctx.dag_id}/{ctx.run_id}" if ctx.run_id else f"adhoc/{train['fingerprint']}"

    version = find_version(name, "llmops.source_run", run_key, mlflow_client)
    if version is None:
        version = _log_and_register(name, train, metrics, decision, validation, config, ctx, run_key)
    with _lock(name, mlflow_client, "register"):
        before = alias_versions(name, mlflow_client)
        if before.get(STAGING) != version:
            mlflow_client.set_registered_model_alias(name, STAGING, version)
            _set_tags(name, version, {"llmops.staging_at": _now()}, mlflow_client)
        _record(name, mlflow_client, "staged", version, (run_key,), actor=_actor(),
                aliases_before=before, gate={"passed": True, "reason": decision.get("reason", "")})
    return {"model_name": name, "version": version, "aliases": _aliases_of(name, version, mlflow_client)}


def _lineage(train: dict, metrics: dict, decision: dict, validation: dict | None, config: RegisterConfig,
             ctx: RunContext, run_key: str) -> dict[str, str]:
    candidate = metrics.get("candidate", {})
    base = train.get("base_model", "")
    lineage = {
        "llmops.source_run": run_key,
        "llmops.dag_id": ctx.dag_id,
        "llmops.dag_run_id": ctx.run_id,
        "llmops.dataset_hash": config.dataset_hash or (validation or {}).get("dataset_hash") or "",
        "llmops.train_data_hash": train.get("train_data_hash", ""),
        "llmops.eval_data_hash": metrics.get("eval_hash", ""),
        "llmops.config_hash": train.get("config_hash", ""),
        "llmops.base_model": base,
        "llmops.base_model_hash": folder_hash(base) if base else "",
        "llmops.method": train.get("method", ""),
        "llmops.adapter": str(bool(train.get("adapter_dir"))).lower(),
        "llmops.package_version": tracking.__version__,
        "llmops.code_revision": os.environ.get("LLMOPS_CODE_REVISION", ""),
        "llmops.train_mlflow_run": train.get("mlflow_run_id", ""),
        "llmops.gate_passed": str(bool(decision.get("passed"))).lower(),
        "llmops.gate_reason": decision.get("reason", ""),
        "llmops.gate_policy": decision.get("policy_file") or decision.get("standard_policy_file") or "",
        "llmops.gate_policy_standard": str(bool(decision.get("policy_standard", True))).lower(),
        "llmops.gate_overrides": json.dumps(decision.get("overrides") or {}, sort_keys=True),
        **_snapshot_lineage(config.snapshot),
        "llmops.trigger": config.trigger,
        "llmops.champion": metrics.get("champion_label", ""),
        "llmops.champion_version": metrics.get("champion_version", ""),
        **{f"metric.{k}": str(round(float(v), 6)) for k, v in candidate.items() if isinstance(v, (int, float))},
    }
    lineage["llmops.exceptions"] = "; ".join(rules.exceptions(lineage))
    return {k: str(v) for k, v in lineage.items()}


def _snapshot_lineage(manifest_path: str) -> dict[str, str]:
    """Tags naming the curated snapshot a version was trained on (none when it was not one), from
    the manifest ``llmops curate`` wrote next to the snapshot's files."""
    if not manifest_path:
        return {}
    manifest = data.read_json(manifest_path)
    counts = manifest.get("counts") or {}
    preference = (manifest.get("files") or {}).get("preference", "data.parquet")
    return {
        "llmops.data_snapshot": str(Path(manifest_path).parent / preference),
        "llmops.data_snapshot_version": str(manifest.get("version", "")),
        "llmops.data_snapshot_hash": str(manifest.get("content_hash", "")),
        "llmops.data_snapshot_rows": str(counts.get("rows", "")),
        "llmops.data_snapshot_feedback_rows": str(counts.get("feedback_rows", "")),
    }


def _train_parameters(train: dict, mlflow_client) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    run_id = train.get("mlflow_run_id")
    if not run_id:
        return {}
    try:
        return dict(mlflow_client.get_run(run_id).data.params)
    except MlflowException:
        return {}


def _log_and_register(name, train, metrics, decision, validation, config, ctx, run_key) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow_client = tracking.client()
    candidate = metrics.get("candidate", {})
    lineage = _lineage(train, metrics, decision, validation, config, ctx, run_key)
    example = pd.DataFrame({"prompt": [EXAMPLE_PROMPT]})
    signature = infer_signature(example, ["Open the sign-in page."], params={"max_new_tokens": 64})
    with_example = config.input_example == "true" or (
        config.input_example == "auto" and _folder_bytes(train["model_dir"]) < INPUT_EXAMPLE_MAX_BYTES)
    artifacts = {"model": train["model_dir"]}
    if train.get("adapter_dir"):
        # The adapter next to the merged weights; its base is named by the lineage tags.
        artifacts["adapter"] = train["adapter_dir"]
    folder = Path(RunContext.from_env().step_dir("register"))
    folder.mkdir(parents=True, exist_ok=True)
    with tracking.step_run("register", params={"model_name": name}, tags={"method": train.get("method", "")}) as run_id:
        # Tags given to log_model land on the new version in the same request that creates it.
        lineage = {**lineage, "llmops.model_card_run": run_id, "llmops.input_example": str(with_example).lower()}
        with mlflow.start_run(run_id=run_id):
            info = flavor.log_generator(
                artifacts,
                signature=signature,
                input_example=example if with_example else None,
                registered_model_name=name,
                tags=lineage,
            )
            tracking.log_metrics(run_id, {k: v for k, v in candidate.items() if isinstance(v, (int, float))})
        version = str(info.registered_model_version)
        card = modelcard.render(
            model_name=name, version=version, train=train, metrics=metrics, decision=decision,
            validation=validation, lineage=lineage, hyperparameters=_train_parameters(train, mlflow_client),
            intended_use=config.intended_use, limitations=config.limitations,
        )
        card_path = folder / "model_card.md"
        card_path.write_text(card, encoding="utf-8")
        data.write_json(str(folder / "lineage.json"), lineage)
        mlflow_client.log_artifact(run_id, str(card_path))
        mlflow_client.log_artifact(run_id, str(folder / "lineage.json"))
    mlflow_client.update_model_version(
        name, version, description=modelcard.as_description(card, f"artifact model_card.md of run {run_id}"))
    return version


def _aliases_of(name: str, version: str, mlflow_client) -> list[str]:
    return sorted(a for a, v in alias_versions(name, mlflow_client).items() if v == str(version))


# --------------------------------------------------------------------------- promote / rollback


@dataclass
class PromoteConfig(AliasMoveConfig):
    version: str = field("", help="model version to promote (default: the one holding 'staging')")
    expected_production: str = field(
        "", help="version the gate compared against ('none' if there was no production); refuse if production moved"
    )
    approved_by: str = field("", help="who approved the promotion (default: $LLMOPS_ACTOR or the OS user)")
    comment: str = field("", help="why: the approval comment, recorded on the version")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.version = _version_number(self.version, "version")
        self.expected_production = _version_number(self.expected_production, "expected_production", words=("none",))


def promote(config: PromoteConfig) -> dict:
    """Move ``production`` to a gated version: compare-and-set against ``expected_production``."""
    mlflow_client = tracking.client()
    name = config.model_name
    version = config.version or alias_versions(name, mlflow_client).get(STAGING, "")
    if not version:
        raise StepFailed(f"registry promote: no version given and no '{STAGING}' alias on {name}")
    _model_version(name, version, mlflow_client, "promote")
    ctx = RunContext.from_env()
    run = _run_label(ctx)
    with audit.registry_lock(name, mlflow_client, holder=f"promote v{version} by {_actor(config.approved_by)} in {run}",
                             timeout_s=config.lock_timeout):
        tags = _model_version(name, version, mlflow_client, "promote").tags or {}
        _refuse_production(name, version, tags, "promote", require_decision=False)
        # Promoting a version no one decided on (`llmops registry promote` by hand) is the promoter's approval.
        approve_now = not tags.get("llmops.approval")
        actor = (_actor(config.approved_by) if config.approved_by or approve_now
                 else tags.get("llmops.approval_by") or _actor())
        comment = config.comment or tags.get("llmops.approval_comment", "")
        gate = {"passed": True, "reason": tags.get("llmops.gate_reason", "")}
        aliases = alias_versions(name, mlflow_client)
        current = aliases.get(PRODUCTION, "")
        if current == version:
            if tags.get("llmops.promoted_in_run") == run:  # a retry: make sure its audit line exists
                _record(name, mlflow_client, "promoted", version, (run,), actor=tags.get("llmops.promoted_by", actor),
                        comment=tags.get("llmops.promotion_comment", ""), replaced=tags.get("llmops.replaced_version", ""),
                        gate=gate)
            return {"model_name": name, "version": version, "changed": False,
                    "aliases": _aliases_of(name, version, mlflow_client)}
        expected = "" if config.expected_production.lower() == "none" else config.expected_production
        if config.expected_production and current != expected:
            _record(name, mlflow_client, "promotion_refused", version, (run, current), actor=actor,
                    production=current or "none", expected_production=expected or "none", gate=gate)
            raise StepFailed(
                f"registry promote: production is v{current or 'none'} but the gate of v{version} compared against "
                f"v{expected or 'none'}; refusing to replace a newer champion with a stale candidate",
                {"model_name": name, "version": version, "changed": False, "production": current},
            )
        if approve_now:
            tags = _write_approval(name, version, rules.APPROVED, actor, comment, mlflow_client)
        gate.update(approval=tags.get("llmops.approval", ""), exceptions=rules.exceptions(tags))
        # Tags first: a crash after them and before the alias move is finished by the retry.
        _set_tags(name, version, {
            "llmops.promoted_by": actor,
            "llmops.promoted_at": _now(),
            "llmops.promotion_comment": comment,
            "llmops.promoted_in_run": run,
            "llmops.replaced_version": current or "none",
        }, mlflow_client)
        if current:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
            _set_tags(name, current, {"llmops.replaced_at": _now(), "llmops.replaced_by_version": version},
                      mlflow_client)
        mlflow_client.set_registered_model_alias(name, PRODUCTION, version)
        _record(name, mlflow_client, "promoted", version, (run,), actor=actor, comment=comment,
                replaced=current or "none", aliases_before=aliases, gate=gate)
    return {"model_name": name, "version": version, "changed": True, "replaced": current,
            "aliases": _aliases_of(name, version, mlflow_client)}


def _refuse_production(name: str, version: str, tags: dict[str, str], action: str, *, require_decision: bool) -> None:
    if why := rules.refusal(tags, require_decision=require_decision):
        raise StepFailed(f"registry {action}: {name} v{version} cannot reach production: {why}",
                         {"model_name": name, "version": str(version), "changed": False, "refused": why})


def _write_approval(name: str, version: str, decision: str, actor: str, comment: str, mlflow_client) -> dict[str, str]:
    """Tag the decision, refresh the exceptions and the card's governance section, write the audit
    line; call under the model's registry lock. Returns the version's tags after."""
    ctx = RunContext.from_env()
    run = _run_label(ctx)
    mv = _model_version(name, version, mlflow_client, "approval")
    tags = dict(mv.tags or {})
    if tags.get("llmops.approval") == decision and tags.get("llmops.approval_run") == run:
        decided = tags  # a retry: the tags are written, make sure the audit line is too
    else:
        decided = {**tags, "llmops.approval": decision, "llmops.approval_by": actor, "llmops.approval_at": _now(),
                   "llmops.approval_comment": comment, "llmops.approval_run": run}
        decided["llmops.exceptions"] = "; ".join(rules.exceptions(decided))
        _set_tags(name, version, {k: decided[k] for k in (
            "llmops.approval", "llmops.approval_by", "llmops.approval_at", "llmops.approval_comment",
            "llmops.approval_run", "llmops.exceptions")}, mlflow_client)
        mlflow_client.update_model_version(name, version,
                                           description=modelcard.with_governance(mv.description or "", decided))
    _record(name, mlflow_client, decision, version, (run,), actor=decided["llmops.approval_by"],
            comment=decided["llmops.approval_comment"], exceptions=rules.exceptions(decided),
            production=alias_versions(name, mlflow_client).get(PRODUCTION, "none"))
    return decided


def record_approval(version: str, *, decision: str, by: str, comment: str = "", model_name: str = "") -> dict:
    """Record a human's decision on a version (``approved`` / ``rejected``) or the waiver of it
    (``waived``, only where the deployment allows it) on the version, its model card and in the
    audit log; moves no alias. A rejection is final: approving a rejected version is refused."""
    require(decision in rules.DECISIONS, f"registry approval: decision must be one of {rules.DECISIONS}, got {decision!r}")
    name = model_name or settings.model_name()
    version = str(version)
    mlflow_client = tracking.client()
    actor = _actor(by)
    _model_version(name, version, mlflow_client, "approval")
    if decision == rules.WAIVED and (why := rules.waiver_refusal()):
        raise StepFailed(f"registry approval: cannot waive the approval of {name} v{version}: {why}",
                         {"model_name": name, "version": version, "approval": "", "refused": why})
    with _lock(name, mlflow_client, decision):
        tags = _model_version(name, version, mlflow_client, "approval").tags or {}
        if tags.get("llmops.approval") == rules.REJECTED and decision != rules.REJECTED:
            raise StepFailed(
                f"registry approval: {name} v{version} was rejected by {tags.get('llmops.approval_by') or '?'} at "
                f"{tags.get('llmops.approval_at') or '?'}; a rejection is final (register a new candidate instead)",
                {"model_name": name, "version": version, "approval": rules.REJECTED})
        decided = _write_approval(name, version, decision, actor, comment, mlflow_client)
    return {"model_name": name, "version": version, "approval": decision, "by": decided["llmops.approval_by"],
            "exceptions": rules.exceptions(decided)}


@dataclass
class ApprovalConfig(RegistryConfig):
    version: str = field("", help="model version the decision is about (required)")
    decision: Literal["approved", "rejected", "waived"] = field(
        "approved", help="approved; rejected (final: never promoted after); waived (no human decided; only where "
                         "the deployment sets LLMOPS_ALLOW_APPROVAL_WAIVER=true)")
    by: str = field("", help="who decided (default: $LLMOPS_ACTOR or the OS user)")
    comment: str = field("", help="why: recorded on the version and in its audit log")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.version = _version_number(self.version, "version")
        require(bool(self.version), "registry approval: version is required")
        require(self.decision in rules.DECISIONS,
                f"registry approval: decision must be one of {', '.join(rules.DECISIONS)}, got {self.decision!r}")


def approval(config: ApprovalConfig) -> dict:
    """``llmops registry approval``: record a human's decision (or a waiver) on a version; moves no alias."""
    return record_approval(config.version, decision=config.decision, by=config.by, comment=config.comment,
                           model_name=config.model_name)


@dataclass
class RollbackConfig(AliasMoveConfig):
    to_version: str = field("", help="version to put back in production (default: 'previous-production')")
    reason: str = field("", help="why: recorded on both versions and in the audit log")
    actor: str = field("", help="who rolled back (default: $LLMOPS_ACTOR or the OS user)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.to_version = _version_number(self.to_version, "to_version")


def rollback(config: RollbackConfig) -> dict:
    """Put ``to_version`` (default ``previous-production``) back in production; the replaced one becomes previous."""
    mlflow_client = tracking.client()
    name = config.model_name
    actor = _actor(config.actor)
    run = _run_label(RunContext.from_env())
    with audit.registry_lock(name, mlflow_client, holder=f"rollback by {actor} in {run}", timeout_s=config.lock_timeout):
        aliases = alias_versions(name, mlflow_client)
        target = config.to_version or aliases.get(PREVIOUS, "")
        if not target:
            raise StepFailed(f"registry rollback: {name} has no '{PREVIOUS}' alias and no --to-version was given",
                             {"model_name": name, "changed": False})
        tags = _model_version(name, target, mlflow_client, "rollback").tags or {}
        _refuse_production(name, target, tags, "rollback", require_decision=True)
        current = aliases.get(PRODUCTION, "")
        if current == target:
            return {"model_name": name, "version": target, "changed": False}
        _set_tags(name, target, {"llmops.restored_at": _now(), "llmops.restored_by": actor,
                                 "llmops.restore_reason": config.reason, "llmops.restored_in_run": run,
                                 "llmops.replaced_version": current or "none"}, mlflow_client)
        mlflow_client.set_registered_model_alias(name, PRODUCTION, target)
        if current:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, current)
            _set_tags(name, current, {"llmops.rolled_back_at": _now(), "llmops.rolled_back_by": actor,
                                      "llmops.rollback_reason": config.reason}, mlflow_client)
        _record(name, mlflow_client, "rolled_back", target, (run, current, _now()), actor=actor,
                reason=config.reason, replaced=current or "none", aliases_before=aliases)
    return {"model_name": name, "version": target, "changed": True, "replaced": current}


@dataclass
class StatusConfig(RegistryConfig):
    json: bool = field(False, help="print only the JSON (each alias and its version)")



def _without_credentials(uri: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri  # as given: urlunsplit would drop the empty authority of sqlite:///path
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


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
            "approval": tags.get("llmops.approval", ""),
            "exceptions": tags.get("llmops.exceptions", ""),
        }
    events = audit.AuditLog(config.model_name, mlflow_client).events() if aliases else []
    last = events[-1] if events else {}
    return {"model_name": config.model_name, "tracking_uri": _without_credentials(settings.tracking_uri()),
            "aliases": aliases, "versions": versions, "audit_events": len(events),
            "last_event": {k: last[k] for k in ("at", "action", "version", "actor") if k in last}}


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
    last = result.get("last_event")
    if last:
        lines.append(f"  last move: {last.get('action')} v{last.get('version')} by {last.get('actor')} at "
                     f"{last.get('at')} ({result['audit_events']} audit events)")
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
    from llmops_tasks.core.command import Command

    return {
        "register": Command(RegisterConfig, register, "register a gated candidate and alias it 'staging'"),
        "status": Command(StatusConfig, status, "show each alias (staging, production, previous-production) and its version",
                          render=render_status),
        "promote": Command(PromoteConfig, promote, "move 'production' to a version (compare-and-set, audited)"),
        "approval": Command(ApprovalConfig, approval, "record an approval or a rejection of a version (audited)"),
        "rollback": Command(RollbackConfig, rollback, "move 'production' back to 'previous-production' (audited)"),
    }
