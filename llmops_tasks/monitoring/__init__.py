"""``llmops monitor``: signals of one window of production traffic, per model version, judged by
the monitoring policy.

For the window ``[end - window, end)`` the step reads the traffic experiment's production traces
(:mod:`llmops_tasks.serving.traces`), splits them by model version and, for each version, measures
traffic (requests, error rate, latency percentiles, tokens), input drift against the prompts the
version was trained on, output drift against its own evaluation answers, and feedback
(:mod:`.window`, the tests in :mod:`.drift`); the policy (:mod:`.policy`, ``monitor.yaml``) says
which signals fired and whether the window asks for retraining, an alert or a rollback.

Results: every signal as an MLflow metric of the version's monitoring run (experiment
``<model>-monitoring``, one run per version, step = window index: a time series the MLflow UI
charts), ``signals.json`` and ``report.html`` per version under ``out_dir`` (also artifacts of
that run, and tag ``llmops.monitor_report`` on the model version), and the decision as the
step's result. The step acts on nothing itself: the ``llm_monitoring`` DAG emits the retrain
request, fails the alert task and triggers the rollback from the result.

Cooldown rule: a retrain request is held while the window's end is within ``cooldown_hours`` of
the later of (a) the creation of the newest version of the model registered by ``llm_retraining``
and (b) the last retrain request of this model (tag ``llmops.retrain_requested_ms`` of its
monitoring runs, written when a window asks for retraining). Alerts have no cooldown.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from llmops_tasks.core import data, io, settings, tracking
from llmops_tasks.core.config import ConfigError, field, require
from llmops_tasks.core.settings import RunContext

log = logging.getLogger(__name__)
STEP = "monitor"
RETRAINING_DAG = "llm_retraining"
TAG_ROLE_MONITORING = "monitoring"
TAG_MODEL_NAME = "llmops.model_name"
TAG_MODEL_VERSION = "llmops.model_version"
TAG_RETRAIN_REQUESTED = "llmops.retrain_requested_ms"
TAG_REPORT = "llmops.monitor_report"
TAG_LAST_ALERT = "llmops.last_alert"
TAG_MONITOR_RUN = "llmops.monitor_run"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, setting: str = "window") -> int:
    """``90m``, ``24h``, ``7d`` -> seconds."""
    match = _DURATION.match(str(text))
    require(bool(match), f"monitor: {setting} must be a number and a unit among s, m, h, d, w (e.g. 24h, 90m), "
                         f"got {text!r}")
    seconds = int(float(match.group(1)) * _UNITS[match.group(2)])
    require(seconds > 0, f"monitor: {setting} must be longer than 0, got {text!r}")
    return seconds


def parse_end(text: str) -> int:
    """The window's end in epoch milliseconds: empty = now, else ISO 8601 (UTC when no zone) or epoch ms."""
    text = str(text).strip()
    if not text or text.lower() == "now":
        return int(time.time() * 1000)
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"monitor: end must be empty (now), an ISO 8601 time or epoch milliseconds, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")


@dataclass
class MonitorConfig:
    window: str = field("1h", help="length of the window that ends at `end` (e.g. 90m, 24h, 7d)")
    end: str = field("", help="end of the window: empty = now; ISO 8601 (UTC unless a zone is given) or epoch ms")
    traffic_experiment: str = field("", help="experiment of the production traces (default: $LLMOPS_TRAFFIC_EXPERIMENT,"
                                             " else <model name>-traffic)")
    model_name: str = field("", help="registered model (default: $LLMOPS_MODEL_NAME or llmops-chat)")
    model_version: str = field("", help="monitor only this version (default: every version with traffic in the window)")
    policy: str = field("", path="config", help="monitoring policy YAML (default: $LLMOPS_MONITOR_POLICY, else the "
                                                "packaged monitor.yaml)")
    out_dir: str = field("", path="output", help="folder for signals.json and report.html per version (default: the "
                                                 "run's monitor/ folder)")
    reference_data: str = field("", path="input", help="training data to compare prompts with (default: the "
                                                       "version's lineage: its training run's train_data)")
    reference_predictions: str = field("", path="input", help="evaluation predictions JSONL to compare answers with "
                                                              "(default: the version's evaluate run's artifact)")
    history: int = field(48, help="windows charted in the report (from the monitoring run's metric history)")

    def __post_init__(self) -> None:
        from llmops_tasks.monitoring import policy as policies

        self.window_s = parse_duration(self.window)
        self.end_ms = parse_end(self.end)
        self.model_name = (self.model_name or settings.model_name()).strip()
        require(bool(self.model_name) and not set(self.model_name) & set("/:%"),
                f"monitor: model_name {self.model_name!r} cannot be a registered model name (no '/', ':' or '%')")
        self.model_version = str(self.model_version).strip().removeprefix("v")
        require(not self.model_version or self.model_version.isdigit(),
                f"monitor: model_version must be a version number, got {self.model_version!r}")
        require(self.history >= 1, f"monitor: history must be 1 or more, got {self.history}")
        self.out_dir = self.out_dir.strip() or RunContext.from_env().step_dir(STEP)
        try:
            self.policy = policies.policy_file(self.policy)
        except FileNotFoundError as exc:
            raise ConfigError(f"monitor: policy: {exc}") from None
        self.rules = policies.load(self.policy)  # a bad policy is a configuration error, before any trace is read


def _traffic_experiment(config: MonitorConfig, client) -> str | None:
    from llmops_tasks.serving import traces

    if config.traffic_experiment:
        name = config.traffic_experiment
    elif os.environ.get(traces.TRAFFIC_EXPERIMENT_ENV, "").strip():
        name = traces.traffic_experiment()
    else:
        name = f"{config.model_name}-traffic"
    return tracking.get_or_create_experiment(name, client, create=False)


def monitoring_run(model_name: str, version: str, client) -> str:
    """The version's monitoring run (found by tags, created on first use)."""
    experiment = tracking.get_or_create_experiment(f"{model_name}-monitoring", client)
    query = (f"tags.`{tracking.TAG_ROLE}` = '{TAG_ROLE_MONITORING}' and tags.`{TAG_MODEL_NAME}` = "
             f"'{tracking.quote(model_name)}' and tags.`{TAG_MODEL_VERSION}` = '{tracking.quote(version)}'")
    found = client.search_runs([experiment], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment, run_name=f"monitor {model_name} v{version}", tags={
        tracking.TAG_ROLE: TAG_ROLE_MONITORING, TAG_MODEL_NAME: model_name, TAG_MODEL_VERSION: version,
        tracking.TAG_VERSION: tracking.__version__})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def cooldown_until(model_name: str, hours: float, client) -> tuple[int | None, dict[str, Any]]:
    """When the cooldown of ``model_name`` ends (epoch ms; ``None``: no retraining nor request yet)."""
    from mlflow.exceptions import MlflowException

    last_version = last_request = 0
    try:
        versions = client.search_model_versions(
            f"name = '{tracking.quote(model_name)}' and tags.`llmops.dag_id` = '{RETRAINING_DAG}'")
        last_version = max((int(v.creation_timestamp or 0) for v in versions), default=0)
    except MlflowException:
        pass
    experiment = tracking.get_or_create_experiment(f"{model_name}-monitoring", client, create=False)
    if experiment is not None:
        runs = client.search_runs([experiment], filter_string=f"tags.`{TAG_MODEL_NAME}` = '{tracking.quote(model_name)}'",
                                  max_results=1000)
        last_request = max((int(r.data.tags.get(TAG_RETRAIN_REQUESTED, 0) or 0) for r in runs), default=0)
    last = max(last_version, last_request)
    info = {"last_retraining_ms": last_version or None, "last_retrain_request_ms": last_request or None,
            "cooldown_hours": hours}
    return (int(last + hours * 3600 * 1000) if last else None), info


def _log_window(client, run_id: str, found: dict, decision: dict, step: int, end_ms: int) -> None:
    from mlflow.entities import Metric

    metrics = []
    for s in found.values():
        if s.value is not None:
            metrics.append(Metric(s.name, float(s.value), end_ms, step))
        if s.p_value is not None:
            metrics.append(Metric(f"{s.name}.p_value", float(s.p_value), end_ms, step))
        if s.threshold is not None:
            metrics.append(Metric(f"{s.name}.fired", float(s.fired), end_ms, step))
    for key in ("retrain", "alert", "rollback", "retrain_held_by_cooldown"):
        metrics.append(Metric(f"decision.{key}", float(bool(decision[key])), end_ms, step))
    existing = {(m.step, m.timestamp) for m in client.get_metric_history(run_id, "requests")}
    if (step, end_ms) in existing:  # this window was already logged: a rerun adds no second point
        return
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _history(client, run_id: str, names: list[str], limit: int) -> dict[str, list[tuple[int, float]]]:
    charted = {}
    for name in names:
        points = sorted({m.step: m.value for m in client.get_metric_history(run_id, name)}.items())[-limit:]
        charted[name] = points
    return charted


def run(config: MonitorConfig) -> dict:
    from llmops_tasks.monitoring import reference, report, signals, traffic, window

    policy = config.rules
    client = tracking.client()
    start_ms = config.end_ms - config.window_s * 1000
    index = config.end_ms // (config.window_s * 1000)
    win = {"start": _iso(start_ms), "end": _iso(config.end_ms), "start_ms": start_ms, "end_ms": config.end_ms,
           "length": config.window, "index": int(index)}
    log.info("monitor: %s, window %s -> %s (%s), policy %s", config.model_name, win["start"], win["end"],
             config.window, config.policy)
    experiment = _traffic_experiment(config, client)
    if experiment is None:
        log.warning("monitor: no traffic experiment for %s yet: nothing to monitor", config.model_name)
        versions: dict[str, Any] = {}
    else:
        versions = traffic.read(experiment, start_ms, config.end_ms, config.model_name).by_version()
    if config.model_version:
        versions = {v: t for v, t in versions.items() if v == config.model_version}
    from llmops_tasks import registry

    aliases = registry.alias_versions(config.model_name, client)
    production = aliases.get(registry.PRODUCTION, "")
    until, cooldown = cooldown_until(config.model_name, policy.cooldown_hours, client)
    results: dict[str, Any] = {}
    out = config.out_dir.rstrip("/")
    for position, (version, traffic_of) in enumerate(versions.items(), start=1):
        started = time.monotonic()
        log.info("monitor: v%s (%d/%d): %d requests", version, position, len(versions), traffic_of.n)
        ref = reference.load(config.model_name, version, reference_data=config.reference_data,
                             reference_predictions=config.reference_predictions,
                             refusal_patterns=policy.refusal_patterns or signals.DEFAULT_REFUSAL_PATTERNS)
        found = window.measure(traffic_of, ref, policy)
        window.judge(found, traffic_of.n, policy)
        decision = window.decide(found, policy, cooldown_until_ms=until, window_end_ms=config.end_ms)
        for s in found.values():
            if s.fired:
                log.warning("monitor: v%s: %s FIRED (%s): %s", version, s.name, s.severity, s.why)
        run_id = monitoring_run(config.model_name, version, client)
        _log_window(client, run_id, found, decision, int(index), config.end_ms)
        if decision["alert"]:  # the embedded default's alert record: this tag, the log above, signals.json
            client.set_tag(run_id, TAG_LAST_ALERT, (f"{win['end']}: " + "; ".join(
                f"{r['signal']} ({r['why']})" for r in decision["reasons"] if r["severity"] == "alert"))[:5000])
        if decision["retrain"]:
            client.set_tag(run_id, TAG_RETRAIN_REQUESTED, str(config.end_ms))
            until = int(config.end_ms + policy.cooldown_hours * 3600 * 1000)  # one request per cooldown
        folder = f"{out}/{config.model_name}-v{version}"
        result = {"model_name": config.model_name, "model_version": version, "window": win,
                  "requests": traffic_of.n, "policy": config.policy, "production": version == production,
                  "reference": ref.sources, "decision": decision, "cooldown": cooldown,
                  "signals": {n: s.record() for n, s in found.items()}, "mlflow_run_id": run_id,
                  "signals_path": f"{folder}/signals.json", "report": f"{folder}/report.html"}
        charted = [n for n, s in found.items() if s.threshold is not None]
        io.write_text(result["report"], report.render(result, _history(client, run_id, charted, config.history)))
        data.write_json(result["signals_path"], result)
        artifact_dir = f"windows/{win['end'].replace(':', '-')}"
        for path in (result["report"], result["signals_path"]):
            client.log_artifact(run_id, path, artifact_path=artifact_dir)
        client.set_tag(run_id, TAG_REPORT, result["report"])
        if version in aliases.values():
            from mlflow.exceptions import MlflowException

            try:
                client.set_model_version_tag(config.model_name, version, TAG_REPORT, result["report"])
                client.set_model_version_tag(config.model_name, version, TAG_MONITOR_RUN, run_id)
            except MlflowException as exc:
                log.warning("monitor: could not tag %s v%s with its report: %s", config.model_name, version, exc)
        log.info("monitor: v%s: %d signals fired (%s); retrain=%s alert=%s rollback=%s; report %s (%.1f s)",
                 version, len(decision["fired"]), ", ".join(decision["fired"]) or "none", decision["retrain"],
                 decision["alert"], decision["rollback"], result["report"], time.monotonic() - started)
        results[version] = result
    return summarize(config, win, results, production)


def summarize(config: MonitorConfig, win: dict, results: dict[str, Any], production: str) -> dict:
    """The step's result: one decision for the window, small enough for XCom."""

    def reasons(key: str) -> list[dict]:
        return [{**{k: r[k] for k in ("signal", "value", "threshold", "p_value", "severity")},
                 "model_version": v} for v, res in results.items() if res["decision"][key] for r in res["decision"]["reasons"]]

    retrain = [v for v, r in results.items() if r["decision"]["retrain"]]
    alert = [v for v, r in results.items() if r["decision"]["alert"]]
    # A rollback puts production's previous version back: only a signal of the version in production
    # asks for it (traffic of an older version still in the window must not roll back its successor).
    rollback = [v for v, r in results.items() if r["decision"]["rollback"] and v == production]
    ignored = [v for v, r in results.items() if r["decision"]["rollback"] and v != production]
    if ignored:
        log.warning("monitor: rollback signals fired for v%s, which is not in production (v%s): no rollback",
                    ", v".join(ignored), production or "none")
    asked = retrain or alert or rollback
    focus = production if production in results else (asked[0] if asked else (next(iter(results), "")))
    summary = {
        "model_name": config.model_name,
        "window": win,
        "requests": sum(r["requests"] for r in results.values()),
        "versions": {v: {"requests": r["requests"], "fired": r["decision"]["fired"], "retrain": r["decision"]["retrain"],
                         "retrain_held_by_cooldown": r["decision"]["retrain_held_by_cooldown"],
                         "alert": r["decision"]["alert"], "rollback": r["decision"]["rollback"],
                         "report": r["report"], "signals": r["signals_path"], "mlflow_run_id": r["mlflow_run_id"]}
                     for v, r in results.items()},
        "production_version": production,
        "model_version": retrain[0] if retrain else focus,
        "retrain": bool(retrain),
        "alert": bool(alert),
        "rollback": bool(rollback),
        "reasons": reasons("retrain"),
        "alerts": reasons("alert"),
        "rollback_reason": "; ".join(
            f"monitoring: v{v} {', '.join(results[v]['decision']['rollback_signals'])} in window {win['end']}"
            for v in rollback),
        "policy": config.policy,
        "report": results[focus]["report"] if focus in results else "",
    }
    if not results:
        log.info("monitor: no production traffic in the window: nothing measured, nothing fires")
    return summary


def command():
    from llmops_tasks.core.command import Command

    return Command(MonitorConfig, run, "compute traffic, drift, safety and feedback signals of production; "
                                       "apply the policy")
