"""One pipeline step, one task: ``llmops <step> ...`` in a pod or in a local subprocess.

``step_operator`` is what DAG files call. ``LLMOPS_EXECUTION`` picks where steps run:

- ``local`` (default, the embedded mode): :class:`~llmops_airflow.operators.local.LocalStepOperator`
  runs ``python -m llmops_tasks.cli <arguments>`` as a subprocess of the Airflow worker;
- ``kubernetes``: :class:`~llmops_airflow.operators.kubernetes.LLMOpsPodOperator` runs
  ``llmops <arguments>`` in the trainer image, with GPUs when the step asks for them.

``train_operator`` is the train task's: the same, except that in the ``kubernetes`` mode a
deployment training on more than one node (``LLMOPS_TRAIN_NODES`` > 1) gets a Kubeflow Trainer
TrainJob (:class:`~llmops_airflow.operators.trainjob.TrainJobOperator`, torchrun on every node).

Same command, same result JSON (the task's return value), same outcomes
(:mod:`llmops_airflow.operators.base`), so a DAG's shape does not depend on the mode.

Every DAG parse imports this module, so it imports nothing: the operator of the chosen mode is
imported when the first task is built, and only that one (the Kubernetes provider and client cost
seconds to import, which the embedded mode never pays).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

EXECUTION_ENV = "LLMOPS_EXECUTION"
MODES = ("local", "kubernetes")
NODES_ENV = "LLMOPS_TRAIN_NODES"

# KubernetesPodOperator arguments a DAG may pass to step_operator; the local mode ignores them so
# the same DAG file works in both modes.
POD_ONLY_KWARGS = frozenset({
    "image", "namespace", "secrets", "labels", "annotations", "node_selector", "tolerations", "affinity",
    "volumes", "volume_mounts", "container_resources", "service_account_name", "image_pull_policy",
    "image_pull_secrets", "priority_class_name", "security_context", "container_security_context",
    "startup_timeout_seconds", "schedule_timeout_seconds", "on_finish_action", "on_kill_action",
    "kubernetes_conn_id", "in_cluster", "cluster_context", "config_file", "deferrable", "get_logs",
    "pod_template_file", "pod_template_dict", "full_pod_spec", "termination_grace_period",
    "active_deadline_seconds", "log_events_on_failure", "do_xcom_push",
})


def train_nodes() -> int:
    """``$LLMOPS_TRAIN_NODES`` (default 1): nodes of the train step; an env read only, safe at parse."""
    text = os.environ.get(NODES_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{NODES_ENV} must be a positive integer (nodes of the train step), got {text!r}")
    return int(text)

# Of those, what a TrainJob (nodes > 1) has a place for; the others are dropped for it.
TRAINJOB_KWARGS = frozenset({
    "image", "namespace", "env_vars", "labels", "kubernetes_conn_id", "config_file", "in_cluster",
    "cluster_context", "deferrable", "active_deadline_seconds", "on_finish_action",
})


def execution_mode() -> str:
    """``local`` or ``kubernetes``, from ``$LLMOPS_EXECUTION``; an env read only, safe at parse."""
    mode = os.environ.get(EXECUTION_ENV, "local").strip().lower() or "local"
    if mode not in MODES:
        raise ValueError(f"{EXECUTION_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def step_operator(
    task_id: str,
    arguments: Sequence[str],
    *,
    gpus: int = 0,
    resources: Mapping[str, str | int] | None = None,
    nodes: int = 1,
    **kwargs: Any,
) -> BaseOperator:
    """The task that runs ``llmops <arguments>``, where ``$LLMOPS_EXECUTION`` says.

    :param task_id: the task id.
    :param arguments: CLI arguments after ``llmops`` (templated), e.g.
        ``["train", "--config", "{{ params.recipe }}"]``.
    :param gpus: ``nvidia.com/gpu`` the pod requests and is limited to; with ``gpus > 0`` the pod
        also gets the GPU node selector, the ``nvidia.com/gpu`` toleration and a memory-backed
        ``/dev/shm``. Ignored in the local mode.
    :param resources: Kubernetes quantities applied as requests and limits, e.g.
        ``{"cpu": "8", "memory": "48Gi"}``, over the defaults (1 CPU / 4Gi, or 8 CPU / 32Gi with
        GPUs). Ignored in the local mode.
    :param nodes: above 1 (a ``train`` command), a Kubeflow Trainer TrainJob of that many nodes of
        ``gpus`` GPUs, torchrun on each, instead of one pod; pod-only arguments with no place in a
        TrainJob are dropped. The local mode is one machine: one node.
    :param kwargs: BaseOperator arguments (retries, pool, execution_timeout, ...), ``env_vars``,
        and KubernetesPodOperator arguments, which the local mode drops (``POD_ONLY_KWARGS``).
    """
    if gpus < 0:
        raise ValueError(f"gpus must be 0 or more, got {gpus}")
    if nodes < 1:
        raise ValueError(f"nodes must be 1 or more, got {nodes}")
    if execution_mode() == "kubernetes":
        from llmops_airflow.operators.kubernetes import build_pod_operator

        if nodes > 1:
            kwargs = {k: v for k, v in kwargs.items() if k in TRAINJOB_KWARGS or k not in POD_ONLY_KWARGS}
            return build_pod_operator(task_id, arguments, gpus=gpus, resources=resources, nodes=nodes, **kwargs)
        return build_pod_operator(task_id, arguments, gpus=gpus, resources=resources, **kwargs)
    from llmops_airflow.operators.local import LocalStepOperator

    local_kwargs = {k: v for k, v in kwargs.items() if k not in POD_ONLY_KWARGS}
    return LocalStepOperator(task_id=task_id, arguments=arguments, **local_kwargs)


def train_operator(
    task_id: str,
    arguments: Sequence[str],
    *,
    gpus: int = 0,
    nodes: int | None = None,
    resources: Mapping[str, str | int] | None = None,
    **kwargs: Any,
) -> BaseOperator:
    """The train task: :func:`step_operator` with ``nodes`` (default ``$LLMOPS_TRAIN_NODES``, else 1).

    The node count is a deployment setting because the kind of task is decided when the DAG is
    parsed, before any recipe (a run's Param) is read.
    """
    return step_operator(task_id, arguments, gpus=gpus, resources=resources,
                         nodes=train_nodes() if nodes is None else nodes, **kwargs)
