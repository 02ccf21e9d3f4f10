"""Tie a task's process to its DAG run, the way a pod or subprocess step is tied by env vars."""

from __future__ import annotations

import os

from llmops_tasks.core.settings import RunContext


def bind_run_context(context=None) -> RunContext:
    """Export LLMOPS_DAG_ID / LLMOPS_RUN_ID / LLMOPS_TASK_ID for the running task.

    Steps locate their run folder (``{artifact_root}/{dag_id}/{run_id}/{step}``) and their MLflow
    parent run from these, whether they run in-process, as a subprocess or in a pod.
    """
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    ctx = RunContext(dag_id=context["dag"].dag_id, run_id=context["run_id"], task_id=context["ti"].task_id)
    os.environ.update(ctx.env())
    return ctx
