"""The Airflow side of LLMOps on Airflow: the step operators, the in-process step runner, the
MLflow Connection and the ``llmops`` plugin.

Importing the package imports nothing else: DAG files and the plugin manager pay only for what
they use (``from llmops_airflow.operators import step_operator``). The modules, and which may
import which (no circle; a test checks it):

- ``operators`` (the factory DAG files call) -> ``operators.local`` (a subprocess) or
  ``operators.kubernetes`` (a pod), only when a task is built; both -> ``operators.base`` (exit
  codes, results, the MLflow run URL) -> ``links`` (the "MLflow run" button);
- ``steps`` (a light step in the task's own process) -> ``context``, ``mlflow_connection``, ``links``;
- ``plugin`` (imported by Airflow's plugin manager only) -> ``links``, and ``approvals_app``
  (FastAPI) when the API server asks for the page.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "step_operator": "llmops_airflow.operators",
    "execution_mode": "llmops_airflow.operators",
    "LocalStepOperator": "llmops_airflow.operators.local",
    "LLMOpsPodOperator": "llmops_airflow.operators.kubernetes",
    "build_pod_operator": "llmops_airflow.operators.kubernetes",
    "MLflowRunLink": "llmops_airflow.links",
    "run_step": "llmops_airflow.steps",
    "bind_run_context": "llmops_airflow.context",
    "mlflow_env": "llmops_airflow.mlflow_connection",
}

__all__ = ["LLMOpsPodOperator", "LocalStepOperator", "MLflowRunLink", "bind_run_context", "build_pod_operator",
           "execution_mode", "mlflow_env", "run_step", "step_operator"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
