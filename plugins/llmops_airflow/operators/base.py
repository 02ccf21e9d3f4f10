"""What a step task does in either mode: one command, one result JSON, the same outcomes.

- exit 0 succeeds; the step's result JSON is the task's return value;
- exit 1 with a result is the step saying no (invalid data, a rejected gate): the task fails
  without retry, and the result stays visible as the reason;
- anything else fails and is retried — including exit 1 without a result, which is how Python
  ends on an uncaught exception (a lost connection, CUDA out of memory).

A result names its MLflow run (``mlflow_run_url``): it is pushed as its own XCom and kept on the
operator, where the "MLflow run" button (:class:`~llmops_airflow.links.MLflowRunLink`) reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from llmops_airflow.links import MLFLOW_RUN_URL_KEY, MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

SAID_NO_EXIT_CODE = 1  # what ``llmops`` exits with when a step raised StepFailed (with its result)


def said_no(exit_code: int | None, result: Any) -> bool:
    """The step ran to the end and refused (exit 1 with a result), as opposed to crashing."""
    return exit_code == SAID_NO_EXIT_CODE and isinstance(result, dict)


def step_failure(what: str, exit_code: int, result: Any, detail: str = "") -> AirflowException:
    """The exception for a step that did not exit 0: not retried when it said no, else retried.

    :param what: names the step in the message, e.g. ``llmops split``.
    :param detail: ends the message: the step's stderr tail, or the reason it gave.
    """
    if said_no(exit_code, result):
        return AirflowFailException(f"{what} said no (exit code {exit_code}){detail}")
    if exit_code == SAID_NO_EXIT_CODE:  # Python's own exit code for an uncaught exception
        return AirflowException(f"{what} crashed (exit code {exit_code}, no result){detail}")
    if exit_code < 0:
        return AirflowException(f"{what} was killed by signal {-exit_code}{detail}")
    return AirflowException(f"{what} failed with exit code {exit_code}{detail}")


def publish_mlflow_run_url(context: Context, result: Any) -> str | None:
    """Push the result's ``mlflow_run_url`` as its own XCom (for MLflowRunLink) and return it."""
    url = result.get(MLFLOW_RUN_URL_KEY) if isinstance(result, dict) else None
    if url:
        context["ti"].xcom_push(key=MLFLOW_RUN_URL_KEY, value=str(url))
    return str(url) if url else None


class StepOperatorMixin:
    """The part of a step operator both modes share: the "MLflow run" button and the run URL it
    reads. Put it before the Airflow operator class in the bases."""

    operator_extra_links = (MLflowRunLink(),)
    mlflow_run_url: str | None = None  # set when the step succeeds; read by MLflowRunLink

    def step_succeeded(self, context: Context, result: Any) -> Any:
        """Publish the result's MLflow run and return the result (the task's return value)."""
        self.mlflow_run_url = publish_mlflow_run_url(context, result)
        return result
