"""Operator extra links of the step operators: the "MLflow run" button on a task's page.

Its own module so that the operators (imported at every DAG parse) need neither the plugin nor
its web app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

MLFLOW_RUN_URL_KEY = "mlflow_run_url"


class MLflowRunLink(BaseOperatorLink):
    """"MLflow run" button on a step's task page.

    A step names its MLflow run by putting ``mlflow_run_url`` in its result JSON; the step
    operators keep it (``operator.mlflow_run_url``) and push it as the XCom ``mlflow_run_url``.
    Airflow calls ``get_link`` on the worker when the task ends and stores the answer under
    ``xcom_key`` for the API server. Operators that are not ours (in-process ``@task`` steps) are
    asked through the XCom.
    """

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        if hasattr(operator, MLFLOW_RUN_URL_KEY):  # ours: no XCom round trip (a miss logs an error)
            url = getattr(operator, MLFLOW_RUN_URL_KEY)
        else:
            from airflow.sdk.execution_time.xcom import XCom

            url = XCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_URL_KEY)
        return str(url) if url else ""
