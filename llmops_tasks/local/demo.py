"""``llmops demo``: run the ``llm_retraining`` DAG end to end on the embedded defaults.

It creates ``$LLMOPS_HOME`` on first use (sample data, tiny base model, Airflow and MLflow
metadata on SQLite), runs one DAG run with real Airflow (``airflow dags test``), then prints
what happened: rows validated, reports, training loss, metrics against the champion, the gate's
decision and the registered version with its aliases.

Approval is waived for the demo run through the DAG's ``require_approval`` Param, so the run never
waits for a human (with ``--require-approval`` it waits in Airflow's Required actions until someone
answers). A waiver needs the deployment's consent: the demo is its own one-machine deployment and
gives it (``LLMOPS_ALLOW_APPROVAL_WAIVER=true`` for its Airflow run, unless the environment says
otherwise); the waiver is recorded on the model version, its model card and in the audit log.

``llmops demo --loop`` runs one turn of the feedback loop instead, on ``llmops up`` services
(:mod:`llmops_tasks.local.loop`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmops_tasks.core import data, settings
from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import embedded

log = logging.getLogger(__name__)

DAG_ID = "llm_retraining"


@dataclass
class DemoConfig:
    method: Literal["sft", "dpo"] = field("sft", help="training method for this run")
    max_steps: int = field(120, help="training steps")
    dataset_uri: str = field("", path="input", help="preference data set; empty: the embedded sample data set")
    require_approval: bool = field(False, help="wait for a human approval in the Airflow UI (the run then blocks)")
    loop: bool = field(False, help="one turn of the feedback loop on `llmops up` services: serve production, "
                                   "send the eval prompts, oracle feedback, curation, and the retraining the "
                                   "snapshot's asset event starts (approved over Airflow's HITL REST API)")

    def __post_init__(self) -> None:
        require(self.max_steps > 0, f"demo: max_steps must be positive, got {self.max_steps}")


def _airflow(args: list[str], env: dict[str, str], log) -> int:
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow) if airflow.exists() else "airflow", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def _latest_run_dir(root: Path) -> Path | None:
    runs = [p for p in (root / DAG_ID).glob("*") if p.is_dir()] if (root / DAG_ID).is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def _read(path: Path) -> dict:
    return data.read_json(str(path)) if path.is_file() else {}


def run(config: DemoConfig) -> dict:
    from llmops_tasks import registry
    from llmops_tasks.local import bootstrap, loop, samples

    if config.loop:
        require(not config.dataset_uri and config.method == "sft" and not config.require_approval,
                "demo: --loop takes no --dataset-uri, --method or --require-approval (the loop trains on its "
                "snapshot with the DAG's defaults, and answers the approval over REST)")
        return {"loop": True, **loop.run(max_steps=config.max_steps)}

    env = embedded.airflow_env()
    if not config.require_approval:
        env.setdefault(settings.ALLOW_APPROVAL_WAIVER, "true")
    os.environ.update({k: env[k] for k in ("LLMOPS_HOME", "MLFLOW_TRACKING_URI")})
    home = Path(env["LLMOPS_HOME"])
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"demo-{time.strftime('%Y%m%dT%H%M%S')}.log"
    started = time.monotonic()
    log.info("llmops demo: home %s  (full log: %s)", home, log_path)
    samples.ensure_sample_data()
    bootstrap.ensure_tiny_model()

    conf = {"method": config.method, "max_steps": config.max_steps, "dataset_uri": config.dataset_uri,
            "require_approval": config.require_approval}
    with open(log_path, "w", encoding="utf-8") as log_file:
        if not Path(env["AIRFLOW_HOME"], "airflow.db").exists():
            log.info("llmops demo: creating the Airflow metadata database (first run only)")
        if _airflow(["db", "migrate"], env, log_file) != 0:
            raise StepFailed(f"demo: `airflow db migrate` failed; see {log_path}")
        log.info("llmops demo: running DAG %s with conf %s", DAG_ID, json.dumps(conf))
        code = _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf)], env, log_file)
    elapsed = time.monotonic() - started

    run_dir = _latest_run_dir(Path(settings.artifact_root()))
    summary = _summary(run_dir, config)
    summary.update({"log": str(log_path), "seconds": round(elapsed, 1), "home": str(home),
                    "mlflow_tracking_uri": env["MLFLOW_TRACKING_URI"]})
    summary["registry"] = registry.status(registry.StatusConfig())["aliases"]
    # A gate rejection fails the DAG run on purpose (task candidate_rejected); for the demo it is
    # an outcome to show, like a promotion.
    rejected = (summary.get("gate") or {}).get("passed") is False
    if (code != 0 and not rejected) or summary.get("state") == "failed":
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise StepFailed(f"demo: the DAG run failed (exit {code}); last log lines:\n" + "\n".join(tail), summary)
    return summary


def _summary(run_dir: Path | None, config: DemoConfig) -> dict:
    if run_dir is None:
        return {"state": "failed", "reason": "no run folder was written"}
    validation = _read(run_dir / "validate" / "validation.json")
    train = _read(run_dir / "train" / "result.json")
    metrics = _read(run_dir / "evaluate" / "metrics.json")
    decision = _read(run_dir / "gate" / "decision.json")
    return {
        "run_dir": str(run_dir),
        "rows_validated": validation.get("rows"),
        "data_valid": validation.get("valid"),
        "reports": {
            "validation": str(run_dir / "validate" / "validation.json"),
            "eda": str(run_dir / "eda" / "eda.html"),
            "predictions": str(run_dir / "evaluate"),
        },
        "method": config.method,
        "train_loss": train.get("train_loss"),
        "final_loss": train.get("final_loss"),
        "global_step": train.get("global_step"),
        "candidate": metrics.get("candidate", {}),
        "champion": metrics.get("champion", {}),
        "champion_label": metrics.get("champion_label", ""),
        "gate": {"passed": decision.get("passed"), "reason": decision.get("reason")},
    }


def render(result: dict) -> str:
    if result.get("loop"):
        from llmops_tasks.local import loop

        return loop.render(result)

    def fmt(metrics: dict) -> str:
        return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))

    aliases = result.get("registry", {})
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    versions = "; ".join(f"v{v}: {', '.join(sorted(a))}" for v, a in sorted(by_version.items(), key=lambda x: int(x[0])))
    home = result["home"]
    lines = [
        "",
        f"llm_retraining finished in {result['seconds']} s",
        f"  data           {result.get('rows_validated')} rows validated (valid={result.get('data_valid')})",
        f"  reports        EDA {result['reports']['eda']}",
        f"                 validation {result['reports']['validation']}",
        (f"  training       {result['method']}, {result.get('global_step')} steps, "
         f"train loss {result.get('train_loss') or float('nan'):.3f}, "
         f"final loss {result.get('final_loss') or float('nan'):.3f}"),
        f"  candidate      {fmt(result.get('candidate', {}))}",
        f"  champion       {fmt(result.get('champion', {}))} ({result.get('champion_label')})",
        f"  gate           {'PASSED' if result['gate'].get('passed') else 'REJECTED'}: {result['gate'].get('reason')}",
        f"  registry       {versions or 'no aliases'}",
        "",
        "Look around:",
        f"  MLflow UI      mlflow ui --backend-store-uri {result['mlflow_tracking_uri']} --port 5000",
        f"  Airflow UI     LLMOPS_HOME={home} llmops up   (or: make airflow)",
        "  registry       llmops registry status",
        f"  full log       {result['log']}",
    ]
    return "\n".join(lines)


def command():
    from llmops_tasks.core.command import Command

    return Command(DemoConfig, run, "run the llm_retraining DAG end to end on the embedded defaults", render=render)
