"""The ``llmops`` Airflow plugin: what the API server needs to show our tasks.

Registered through the ``airflow.plugins`` entry point, so every Airflow component imports this
module; it imports only the plugin and operator-link bases, never the operators themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

from llmops_airflow import approvals_app

try:  # Airflow 3.2+: the task SDK owns the plugin base
    from airflow.sdk.plugins_manager import AirflowPlugin
except ImportError:  # pragma: no cover - older Airflow 3
    from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

MLFLOW_RUN_URL_KEY = "mlflow_run_url"


class MLflowRunLink(BaseOperatorLink):
    """"MLflow run" button on a step's task page.

    A step names its MLflow run by putting ``mlflow_run_url`` in its result JSON; the step
    operators keep it (``operator.mlflow_run_url``) and push it as the XCom ``mlflow_run_url``.
    Airflow calls ``get_link`` on the worker when the task ends and stores the answer under
    ``xcom_key`` for the API server. Operators that are not ours are asked through the XCom.
    """

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        if hasattr(operator, MLFLOW_RUN_URL_KEY):  # ours: no XCom round trip (a miss logs an error)
            url = getattr(operator, MLFLOW_RUN_URL_KEY)
        else:
            from airflow.sdk.execution_time.xcom import XCom

            url = XCom.get_value(ti_key=ti_key, key=MLFLOW_RUN_URL_KEY)
        return str(url) if url else ""


class LLMOpsPlugin(AirflowPlugin):
    """Operator extra links for the step operators (which also declare them themselves), and the
    approvals page: a FastAPI app on the API server with a link in the UI's navigation."""

    name = "llmops"
    operator_extra_links: ClassVar[list[Any]] = [MLflowRunLink()]
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": approvals_app.app, "url_prefix": approvals_app.URL_PREFIX, "name": "LLMOps approvals"},
    ]
    # Shown inside the UI (an iframe under /plugin/llmops-approvals), under the Browse menu.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {"name": "LLMOps approvals", "href": approvals_app.URL_PREFIX + "/", "url_route": "llmops-approvals",
         "destination": "nav", "category": "browse"},
    ]
