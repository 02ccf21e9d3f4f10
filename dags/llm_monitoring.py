"""
### Watch production: traffic, drift, safety and feedback signals; retrain, alert or roll back

`monitor -> request_retraining | alert | rollback_wanted -> trigger_rollback`.

`monitor` runs `llmops monitor` in the worker on the window that ends at the run's time
(`window` Param, default `$LLMOPS_MONITOR_WINDOW` or 1h): it reads the production traces of the
window from MLflow and, per model version, measures traffic (requests, error rate, latency
percentiles, tokens), input drift against the prompts the version was trained on, output drift
against its own evaluation answers (empty, repetitive, refusing, echoing answers, PII and
secrets) and feedback (thumbs down, rating, corrections). The monitoring policy (`policy` Param,
else `$LLMOPS_MONITOR_POLICY`, else the packaged `monitor.yaml`) says which signals fired. Every
signal is a metric of the version's monitoring run in MLflow (experiment `<model>-monitoring`), and
each window has an HTML report (linked from the approvals page).

- `request_retraining` emits an event of the `llmops_retrain_request` asset (extra: reasons,
  model_version, window), which `llm_retraining` is scheduled on, when the policy asks for
  retraining (and no cooldown holds it); otherwise it is *skipped* and emits nothing.
- `alert` fails the run with the alert (the fired signals and why) when the policy raises one.
  `LLMOPS_MONITOR_NOTIFIER` (`package.module:name`, an Airflow notifier or any callable taking the
  task context) is called first; with `LLMOPS_MONITOR_ALERT_ACTION=notify` the task notifies and
  succeeds instead of failing. Never silent: without a notifier the task fails.
- `trigger_rollback` runs the governed `model_rollback` DAG (to `previous-production`, the reason
  naming the signals) when the policy enables rollback and a severe signal fired; off by default.

Hourly (`LLMOPS_MONITOR_SCHEDULE`, a cron; `none` for manual runs only).
"""

from __future__ import annotations

import os

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from llmops_airflow.assets import RETRAIN_REQUEST
from llmops_airflow.steps import run_step

DAG_ID = "llm_monitoring"
SCHEDULE = os.environ.get("LLMOPS_MONITOR_SCHEDULE", "0 * * * *")
WINDOW = os.environ.get("LLMOPS_MONITOR_WINDOW", "1h")
OPTIONAL_TEXT = ["null", "string"]
SETTINGS = ("window", "end", "policy", "model_name", "model_version", "traffic_experiment")


def _schedule():
    """The cron as a trigger timetable with no start date (unpausing waits for the next cron time)."""
    if SCHEDULE.strip().lower() == "none":
        return None
    return CronTriggerTimetable(SCHEDULE, timezone="UTC", run_immediately=False)


def _notifier():
    """The deployment's notifier (``LLMOPS_MONITOR_NOTIFIER=package.module:name``), imported at run time."""
    import importlib

    target = os.environ.get("LLMOPS_MONITOR_NOTIFIER", "").strip()
    if not target:
        return None
    module, _, name = target.partition(":")
    found = importlib.import_module(module)
    for part in (name or "notifier").split("."):
        found = getattr(found, part)
    return found


@dag(
    dag_id=DAG_ID,
    schedule=_schedule(),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["llmops", "monitoring"],
    default_args={"retries": 1},
    params={
        "window": Param(WINDOW, type="string", pattern=r"^\s*\d+(\.\d+)?\s*[smhdw]\s*$", title="Window",
                        description="Length of the window that ends at the run's time: 90m, 24h, 7d."),
        "end": Param(None, type=OPTIONAL_TEXT, title="Window end",
                     description="ISO 8601 time (UTC unless a zone is given). Empty: the run's time."),
        "policy": Param(None, type=OPTIONAL_TEXT, title="Monitoring policy",
                        description="YAML file. Empty: $LLMOPS_MONITOR_POLICY, else the packaged monitor.yaml."),
        "model_name": Param(None, type=OPTIONAL_TEXT, title="Registered model",
                            description="Empty: $LLMOPS_MODEL_NAME (default llmops-chat)."),
        "model_version": Param(None, type=OPTIONAL_TEXT, pattern=r"^[0-9]*$", title="Model version",
                               description="Only this version. Empty: every version with traffic in the window."),
        "traffic_experiment": Param(None, type=OPTIONAL_TEXT, title="Traffic experiment",
                                    description="Empty: $LLMOPS_TRAFFIC_EXPERIMENT, else <model name>-traffic."),
    },
)
def llm_monitoring():
    @task
    def monitor(params=None, dag_run=None) -> dict:
        """``llmops monitor`` in this process: signals, MLflow metrics, report, the policy's decision."""
        overrides = {key: params[key] for key in SETTINGS
                     if params.get(key) is not None and str(params[key]).strip() != ""}
        if "end" not in overrides:
            moment = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
            if moment is not None:
                overrides["end"] = moment.isoformat()
        return run_step("monitor", overrides=overrides)

    @task(outlets=[RETRAIN_REQUEST], retries=0)
    def request_retraining(result: dict, outlet_events=None) -> dict:
        """One retrain-request event when the policy says retrain; skipped (no event) otherwise."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not result.get("retrain"):
            held = [v for v, r in (result.get("versions") or {}).items() if r.get("retrain_held_by_cooldown")]
            raise AirflowSkipException(f"retrain held by the cooldown (v{', v'.join(held)})" if held
                                       else "the policy did not ask for retraining")
        extra = {"reasons": result["reasons"], "model_version": result["model_version"], "window": result["window"],
                 "model_name": result["model_name"], "report": result.get("report", "")}
        outlet_events[RETRAIN_REQUEST].extra = extra
        return extra

    @task(retries=0)
    def alert(result: dict, ti=None) -> str:
        """Fail (or notify) with the alert; succeed quietly only when nothing alerts."""
        import logging

        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        if not result.get("alert"):
            return "no alert"
        lines = [(f"monitoring alert for {result['model_name']} (window {result['window']['start']} -> "
                 f"{result['window']['end']}):")]
        lines += [f"  v{a['model_version']} {a['signal']} = {a['value']:.4g} (threshold {a['threshold']:.4g}, "
                  f"{a['severity']})" for a in result["alerts"]]
        lines.append(f"  report: {result.get('report', '')}")
        message = "\n".join(lines)
        logging.getLogger(__name__).error("%s", message)
        ti.xcom_push(key="alert", value=message)
        notifier = _notifier()
        if notifier is not None:
            notifier(get_current_context())
        action = os.environ.get("LLMOPS_MONITOR_ALERT_ACTION", "fail").strip().lower()
        if action == "notify" and notifier is not None:
            return message
        raise AirflowFailException(message)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def rollback_wanted(result: dict) -> bool:
        """True only when the policy enables rollback and one of its severe signals fired."""
        return bool(result.get("rollback"))

    result = monitor()
    request_retraining(result)
    alert(result)
    trigger = TriggerDagRunOperator(
        task_id="trigger_rollback", trigger_dag_id="model_rollback", retries=0,
        conf={"reason": "{{ ti.xcom_pull(task_ids='monitor')['rollback_reason'] }}", "target_version": None,
              "model_name": "{{ ti.xcom_pull(task_ids='monitor')['model_name'] }}"},
    )
    rollback_wanted(result) >> trigger


llm_monitoring()
