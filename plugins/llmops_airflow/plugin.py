"""The ``llmops`` Airflow plugin: what the API server needs to show our tasks.

Registered through the ``airflow.plugins`` entry point, and nothing else imports it. Every
Airflow component loads the plugins — the scheduler and the DAG processor when they start (for
listeners), each task process (for macros) — but only the API server reads a plugin's
``fastapi_apps`` and ``external_views`` (``airflow.api_fastapi.app.init_plugins``,
``airflow.plugins_manager._get_ui_plugins``). So those two are built from
:mod:`llmops_airflow.approvals_app` when first read: only the API server imports FastAPI and
builds the approvals app; the others import the operator-link base and this module, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

from llmops_airflow.links import MLflowRunLink

try:  # Airflow 3.2+: the task SDK owns the plugin base
    from airflow.sdk.plugins_manager import AirflowPlugin
except ImportError:  # pragma: no cover - older Airflow 3
    from airflow.plugins_manager import AirflowPlugin


class FromApprovalsApp:
    """A plugin attribute made from the approvals app when it is first read, then kept: one
    list, so what Airflow removes from it (a conflicting UI route) stays removed."""

    def __init__(self, build: Callable[[ModuleType], list[dict[str, Any]]]) -> None:
        self._build = build
        self._value: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._value is None:
            from llmops_airflow import approvals_app

            self._value = self._build(approvals_app)
        return self._value


class LLMOpsPlugin(AirflowPlugin):
    """Operator extra links for the step operators (which also declare them themselves), and the
    approvals page: a FastAPI app on the API server with a link in the UI's navigation."""

    name = "llmops"
    operator_extra_links: ClassVar[list[Any]] = [MLflowRunLink()]
    fastapi_apps = FromApprovalsApp(lambda page: [
        {"app": page.app, "url_prefix": page.URL_PREFIX, "name": "LLMOps approvals"},
    ])
    # Shown inside the UI (an iframe under /plugin/llmops-approvals), under the Browse menu.
    external_views = FromApprovalsApp(lambda page: [
        {"name": "LLMOps approvals", "href": page.URL_PREFIX + "/", "url_route": "llmops-approvals",
         "destination": "nav", "category": "browse"},
    ])
