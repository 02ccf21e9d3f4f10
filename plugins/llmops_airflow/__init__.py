"""The Airflow side of LLMOps on Airflow: the step operators and the ``llmops`` plugin.

Importing the package imports nothing else: DAG files and the plugin manager pay only for what
they use (``from llmops_airflow.operators import step_operator``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "step_operator": "llmops_airflow.operators",
    "execution_mode": "llmops_airflow.operators",
    "LocalStepOperator": "llmops_airflow.operators",
    "LLMOpsPodOperator": "llmops_airflow.pod",
    "LLMOpsPlugin": "llmops_airflow.plugin",
    "MLflowRunLink": "llmops_airflow.plugin",
}

__all__ = ["LLMOpsPlugin", "LLMOpsPodOperator", "LocalStepOperator", "MLflowRunLink", "execution_mode", "step_operator"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
