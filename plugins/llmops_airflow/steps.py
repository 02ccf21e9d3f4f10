"""A light step run inside the Airflow task's own process: the in-process twin of ``step_operator``.

``run_step("validate", overrides={...})`` does what ``llmops validate --set ...`` does in a pod or
a subprocess: the same config loading (defaults < recipe < overrides), the same step function
(which records its own MLflow step run), the same outcomes. Only the Airflow part lives here:
the task is tied to its DAG run, MLflow points at the ``mlflow_default`` Connection, the result's
MLflow link is published, and "the step said no" (:class:`StepFailed`) fails the task without a
retry, with the step's result kept as the task's return value so the reason stays visible.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from llmops_airflow.context import bind_run_context


def run_step(step: str, *, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
             action: str | None = None, rejection_is_result: bool = False) -> dict:
    """Run ``llmops <step> [<action>]`` in this process and return its result.

    :param step: a subcommand of ``llmops`` (``validate``, ``eda``, ``split``, ``gate``, ``registry``).
    :param config_file: the YAML recipe or policy (``--config``).
    :param overrides: settings over the recipe (``--set``), nested for dotted keys.
    :param action: the sub-action of a step with several (``registry promote``).
    :param rejection_is_result: return the result of a :class:`Rejected` step (a gate's "no" is a
        decision the DAG branches on) instead of failing the task.
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from llmops_airflow.links import MLFLOW_RUN_URL_KEY
    from llmops_airflow.mlflow_connection import mlflow_env
    from llmops_tasks.cli import STEPS
    from llmops_tasks.core.config import ConfigError, load
    from llmops_tasks.core.errors import Rejected, StepFailed

    context = get_current_context()
    bind_run_context(context)
    commands = importlib.import_module(STEPS[step][0]).command()
    command = commands[action] if isinstance(commands, dict) else commands
    ti = context["ti"]
    with mlflow_env():
        try:
            # A bad setting or a missing input (the CLI's exit 2) is the same on a retry: no retry.
            config = load(command.config_cls, config_file, overrides or {})
            result = command.run(config)
        except ConfigError as exc:
            raise AirflowFailException(f"llmops {step}{' ' + action if action else ''}: configuration error: {exc}") from exc
        except StepFailed as exc:
            result = exc.result
            if isinstance(result, dict) and result.get(MLFLOW_RUN_URL_KEY):
                ti.xcom_push(key=MLFLOW_RUN_URL_KEY, value=str(result[MLFLOW_RUN_URL_KEY]))
            if rejection_is_result and isinstance(exc, Rejected):
                return result
            ti.xcom_push(key="return_value", value=result)
            raise AirflowFailException(str(exc)) from exc
    if isinstance(result, dict) and result.get(MLFLOW_RUN_URL_KEY):
        ti.xcom_push(key=MLFLOW_RUN_URL_KEY, value=str(result[MLFLOW_RUN_URL_KEY]))
    return result


# Task states that mean a task of the run did not do its work.
_FAILED_STATES = frozenset({"failed", "upstream_failed"})
# The task that fails on purpose when the gate rejects the candidate (a result, not a crash).
REJECTION_TASK = "candidate_rejected"


def pipeline_outcome(states: dict[str, str | None], promote_task: str = "promote") -> tuple[str, str]:
    """(MLflow status, outcome) of a DAG run from its task states.

    ``promoted`` when ``promote_task`` succeeded; ``rejected by the gate`` when only the rejection
    task failed (the run did its job: FINISHED); ``not promoted`` when nothing failed but promote
    was skipped (a human rejected, or production had moved); ``failed at <tasks>`` otherwise (FAILED).
    """
    failed = sorted(task for task, state in states.items() if state in _FAILED_STATES)
    if states.get(promote_task) == "success":
        return "FINISHED", "promoted"
    if failed == [REJECTION_TASK]:
        return "FINISHED", "rejected by the gate"
    if failed:
        return "FAILED", "failed at " + ", ".join(failed)
    return "FINISHED", "not promoted"


def close_pipeline_run() -> dict:
    """End the DAG run's MLflow parent run with the run's outcome (run it as the DAG's teardown).

    Reads the other tasks' states through the Task SDK, so it needs no database access.
    """
    from airflow.sdk import get_current_context

    from llmops_airflow.mlflow_connection import mlflow_env
    from llmops_tasks.core import tracking

    context = get_current_context()
    ctx = bind_run_context(context)
    ti = context["ti"]
    found = ti.get_task_states(dag_id=ctx.dag_id, run_ids=[ctx.run_id]).get(ctx.run_id) or {}
    states = {task: state for task, state in found.items() if task != ti.task_id}
    status, outcome = pipeline_outcome(states)
    with mlflow_env():
        parent = tracking.end_pipeline_run(ctx, status, {"llmops.outcome": outcome})
    return {"mlflow_run_id": parent or "", "status": status, "outcome": outcome}
