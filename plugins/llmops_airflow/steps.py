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
    from llmops_tasks.core.config import load
    from llmops_tasks.core.errors import Rejected, StepFailed

    context = get_current_context()
    bind_run_context(context)
    commands = importlib.import_module(STEPS[step][0]).command()
    command = commands[action] if isinstance(commands, dict) else commands
    config = load(command.config_cls, config_file, overrides or {})
    ti = context["ti"]
    with mlflow_env():
        try:
            result = command.run(config)
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
