"""Training beyond one node: ``llmops train`` as a Kubeflow Trainer v2 TrainJob.

A team whose model does not fit one node runs the train step as a TrainJob (Kubeflow Trainer on
JobSet, a ``torch-distributed`` ClusterTrainingRuntime, Kueue for GPU quotas and gang admission):
the same ``llmops train <method> ...`` command in the trainer image on every node, launched by
``torchrun``, which reads the rendezvous the runtime's torch plugin injects (``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``).
``accelerate launch`` would ignore those and run one process per node, each alone.

:class:`TrainJobOperator` creates the TrainJob, waits for it (deferred to the triggerer by
default: :class:`~llmops_airflow.triggers.trainjob.TrainJobTrigger`), copies the leader's log into
the task log, reads the result rank 0 logs (``llmops-result: {...}``: the worker shares no file
system with the nodes), and deletes the job or keeps it (``on_finish_action``). On a retry it
reattaches to the job it already submitted (Airflow 3.3's ``ResumableJobMixin`` keeps the job's
name in the task state store; without one, the job is found by its task-instance label) instead
of submitting a second one; a job that failed is replaced by a new one, which resumes from the
checkpoints on the shared volume as a retried pod does.

This module knows TrainJobs, not this deployment's pods: the trainer image, volumes, security
context, GPU scheduling and Secrets come from
:class:`~llmops_airflow.operators.kubernetes.LLMOpsTrainJobOperator`, which subclasses the one here
(the pod conventions stay in one module), and which ``step_operator(..., nodes=N)`` builds.

Deployment settings (environment of the Airflow components; the rest as in
:mod:`llmops_airflow.operators.kubernetes`):

=============================  ==============================================================
``LLMOPS_TRAIN_NODES``         nodes of the train step (default 1: the plain pod)
``LLMOPS_TRAINJOB_RUNTIME``    ClusterTrainingRuntime (default ``torch-distributed``)
``LLMOPS_KUEUE_QUEUE``         Kueue LocalQueue: label ``kueue.x-k8s.io/queue-name`` and
                               ``suspend: true`` (Kueue admits the job by resuming it)
``LLMOPS_CHECKPOINTS_PVC``     the checkpoints PVC at ``/checkpoints`` on every node: it must be
                               ReadWriteMany (all nodes mount it; rank 0 writes)
=============================  ==============================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import ResumableJobMixin
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from llmops_airflow.operators.base import StepOperatorMixin
from llmops_airflow.triggers.trainjob import ACTIVE, GROUP, KIND, PLURAL, VERSION, TrainJobTrigger, job_state, verdict

if TYPE_CHECKING:
    from airflow.sdk import Context

# The Kubernetes provider and client are imported where they are used: only
# llmops_airflow.operators.kubernetes imports them at its top (tests/test_operators.py).

RUNTIME_ENV = "LLMOPS_TRAINJOB_RUNTIME"
QUEUE_ENV = "LLMOPS_KUEUE_QUEUE"
DEFAULT_RUNTIME = "torch-distributed"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NODE = "node"  # the runtime's replicated job and trainer container (Kubeflow's constants.Node)
PATCH_MANAGER = "llmops-airflow.io/operator"
RESULT_LOG_PREFIX = "llmops-result: "  # = llmops_tasks.train.RESULT_LOG_PREFIX (a test checks)
TI_LABEL = "llmops/task-instance"  # hash of dag, run, task, map index: the job's owner
FINISH_ACTIONS = ("delete", "delete_succeeded", "keep")
def _api_error() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:10]


def trainjob_name(task_id: str, dag_id: str, run_id: str, map_index: int = -1, try_number: int = 1) -> str:
    """A name the API server accepts (RFC 1035 label, 63 characters at most, as the CRD requires),
    the same for the same try of the same task instance: ``llmops-<task>-<hash>-<try>``."""
    stem = re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")[:30].strip("-") or "train"
    return f"llmops-{stem}-{_digest(dag_id, run_id, task_id, map_index)}-{try_number}"


def ti_label(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    return _digest(dag_id, run_id, task_id, map_index)


def trainjob_manifest(
    name: str,
    arguments: Sequence[str],
    *,
    nodes: int,
    gpus_per_node: int,
    image: str,
    namespace: str,
    env: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
    resources: Mapping[str, str] | None = None,
    pod_spec: Mapping[str, Any] | None = None,
    runtime: str = DEFAULT_RUNTIME,
    queue: str = "",
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The TrainJob (``trainer.kubeflow.org/v1alpha1``) running ``torchrun --module
    llmops_tasks.cli <arguments>`` on ``nodes`` nodes of ``gpus_per_node`` GPUs (one process each).

    :param env: the trainer container's env entries (``{"name", "value"}`` or ``valueFrom``).
    :param resources: requests = limits per node; ``nvidia.com/gpu`` is set from ``gpus_per_node``.
    :param pod_spec: a patch of the runtime's trainer pods (volumes, security context, scheduling,
        the ``node`` container's mounts), sent as the job's ``runtimePatches`` entry.
    :param queue: Kueue LocalQueue: its label and ``suspend: true``.
    """
    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"a TrainJob needs 1 node or more and 0 GPUs or more per node, got {nodes} x {gpus_per_node}")
    quantities = {k: str(v) for k, v in (resources or {}).items()}
    if gpus_per_node:
        quantities["nvidia.com/gpu"] = str(gpus_per_node)
    job_labels = dict(labels or {})
    if queue:
        job_labels[QUEUE_LABEL] = queue
    trainer: dict[str, Any] = {
        "image": image,
        "command": ["torchrun"],
        "args": ["--module", "llmops_tasks.cli", *arguments],
        "numNodes": nodes,
        # one process per GPU; torchrun takes the same number from PET_NPROC_PER_NODE
        **({"numProcPerNode": gpus_per_node} if gpus_per_node else {}),
        "env": [dict(e) for e in env],
    }
    if quantities:
        trainer["resourcesPerNode"] = {"requests": dict(quantities), "limits": dict(quantities)}
    spec: dict[str, Any] = {"runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
                            "trainer": trainer}
    if pod_spec:
        spec["runtimePatches"] = [{
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": NODE, "template": {"spec": {"template": {"spec": dict(pod_spec)}}}}]}}},
        }]
    if queue:
        spec["suspend"] = True  # Kueue admits the whole job (every node at once) by resuming it
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": job_labels}, "spec": spec}


def result_from_log(text: str) -> dict | None:
    """The result rank 0 logged (its last ``llmops-result: {...}`` line), or None."""
    for line in reversed(text.splitlines()):
        at = line.find(RESULT_LOG_PREFIX)
        if at >= 0:
            try:
                value = json.loads(line[at + len(RESULT_LOG_PREFIX):])
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


class TrainJobOperator(StepOperatorMixin, ResumableJobMixin, BaseOperator):
    """``llmops <arguments>`` (a ``train`` command) as a TrainJob on ``nodes`` nodes.

    :param arguments: CLI arguments after ``llmops`` (templated).
    :param nodes: training nodes (``trainer.numNodes``).
    :param gpus_per_node: GPUs of each node, one torchrun process each.
    :param node_resources: CPU / memory per node, requests = limits, over
        :meth:`default_node_resources` (``resources`` is BaseOperator's).
    :param kueue_queue: LocalQueue (default ``$LLMOPS_KUEUE_QUEUE``): the job is created suspended
        and waits for Kueue; one that is still suspended after ``schedule_timeout_seconds`` fails
        with a message naming the queue, and is deleted so that a retry queues afresh.
    :param on_finish_action: ``delete`` (always), ``delete_succeeded`` (default: a failed job is
        kept for ``kubectl describe``) or ``keep``.
    :param deferrable: wait in the triggerer (default) rather than in a worker slot.
    """

    template_fields: Sequence[str] = ("arguments", "env_vars", "labels")
    external_id_key = "llmops_trainjob"

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        nodes: int,
        gpus_per_node: int = 1,
        node_resources: Mapping[str, str | int] | None = None,
        env_vars: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        image: str | None = None,
        namespace: str | None = None,
        runtime: str | None = None,
        kueue_queue: str | None = None,
        schedule_timeout_seconds: float = 1800,
        poll_interval: float = 15,
        active_deadline_seconds: int | None = None,
        on_finish_action: str = "delete_succeeded",
        deferrable: bool = True,
        kubernetes_conn_id: str | None = "kubernetes_default",
        config_file: str | None = None,
        in_cluster: bool | None = None,
        cluster_context: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_finish_action not in FINISH_ACTIONS:
            raise ValueError(f"on_finish_action must be one of {', '.join(FINISH_ACTIONS)}, got {on_finish_action!r}")
        if nodes < 1:
            raise ValueError(f"nodes must be 1 or more, got {nodes}")
        self.arguments = list(arguments) if isinstance(arguments, (list, tuple)) else arguments
        self.nodes, self.gpus_per_node = nodes, gpus_per_node
        self.node_resources = dict(node_resources or {})
        self.env_vars, self.labels = dict(env_vars or {}), dict(labels or {})
        self.image, self.namespace, self.runtime = image, namespace, runtime
        self.kueue_queue = kueue_queue
        self.schedule_timeout_seconds, self.poll_interval = schedule_timeout_seconds, poll_interval
        self.active_deadline_seconds, self.on_finish_action = active_deadline_seconds, on_finish_action
        self.deferrable = deferrable
        self.kubernetes_conn_id, self.config_file = kubernetes_conn_id, config_file
        self.in_cluster, self.cluster_context = in_cluster, cluster_context

    # --- the API server --------------------------------------------------------------------

    @cached_property
    def hook(self) -> Any:  # the provider's KubernetesHook
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id, config_file=self.config_file,
                              in_cluster=self.in_cluster, cluster_context=self.cluster_context)

    def _namespace(self, hook: Any) -> str:
        return (self.namespace or os.environ.get("LLMOPS_K8S_NAMESPACE") or hook.get_namespace()
                or hook.DEFAULT_NAMESPACE)

    def _queue(self) -> str:
        return (self.kueue_queue if self.kueue_queue is not None else os.environ.get(QUEUE_ENV, "")).strip()

    def _get(self, name: str, namespace: str) -> dict | None:
        try:
            return self.hook.get_custom_object(GROUP, VERSION, PLURAL, name, namespace)
        except _api_error() as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, name: str, namespace: str) -> None:
        try:
            self.hook.delete_custom_object(GROUP, VERSION, PLURAL, name, namespace, propagation_policy="Foreground")
            self.log.info("Deleted TrainJob %s/%s", namespace, name)
        except _api_error() as exc:
            if exc.status != 404:
                raise

    # --- ResumableJobMixin -----------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        return self.step_succeeded(context, self.execute_resumable(context))

    # What a deployment's subclass decides (llmops_airflow.operators.kubernetes.LLMOpsTrainJobOperator:
    # the trainer image, the pod conventions, the services' addresses), read when the job is built.

    def resolve_image(self) -> str:
        if not self.image:
            raise AirflowException("TrainJobOperator: no image given")
        return self.image

    def node_env(self, context: Context) -> dict[str, str]:
        """Plain env of every node: the run context, the result line, then the task's ``env_vars``."""
        ti = context["ti"]
        return {"LLMOPS_DAG_ID": ti.dag_id, "LLMOPS_RUN_ID": ti.run_id, "LLMOPS_TASK_ID": ti.task_id,
                "PYTHONUNBUFFERED": "1", "LLMOPS_RESULT_LOG": "1"}

    def env_references(self) -> list[dict[str, Any]]:
        """Env entries taken from Secrets (``valueFrom``): none here."""
        return []

    def pod_spec_patch(self) -> dict[str, Any] | None:
        return None

    def default_node_resources(self) -> dict[str, str]:
        return {}

    def build_manifest(self, context: Context, namespace: str) -> dict[str, Any]:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        env = {**self.node_env(context), **self.env_vars}
        from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

        labels = {"app.kubernetes.io/name": "llmops", "app.kubernetes.io/component": "train",
                  "app.kubernetes.io/managed-by": "airflow",
                  "llmops/dag-id": ti.dag_id, "llmops/run-id": ti.run_id, "llmops/task-id": ti.task_id, **self.labels}
        labels = {k: make_safe_label_value(str(v)) for k, v in labels.items()}
        labels[TI_LABEL] = ti_label(ti.dag_id, ti.run_id, ti.task_id, map_index)
        return trainjob_manifest(
            trainjob_name(ti.task_id, ti.dag_id, ti.run_id, map_index, ti.try_number), self.arguments,
            nodes=self.nodes, gpus_per_node=self.gpus_per_node, image=self.resolve_image(), namespace=namespace,
            env=[*({"name": k, "value": str(v)} for k, v in env.items()), *self.env_references()],
            labels=labels, resources={**self.default_node_resources(), **self.node_resources},
            pod_spec=self.pod_spec_patch(),
            runtime=self.runtime or os.environ.get(RUNTIME_ENV, "").strip() or DEFAULT_RUNTIME,
            queue=self._queue(), active_deadline_seconds=self.active_deadline_seconds)

    def submit_job(self, context: Context) -> dict[str, str]:
        hook = self.hook
        namespace = self._namespace(hook)
        manifest = self.build_manifest(context, namespace)
        name = manifest["metadata"]["name"]
        # No task state store, or a worker that died between create and persist: an active job of
        # this task instance is still ours to follow.
        owner = manifest["metadata"]["labels"][TI_LABEL]
        listed = hook.custom_object_client.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{TI_LABEL}={owner}")
        for job in listed.get("items", []):
            if job_state(job) in ACTIVE:
                found = job["metadata"]["name"]
                self.log.info("Reattaching to TrainJob %s/%s, submitted by an earlier try", namespace, found)
                return {"name": found, "namespace": namespace}
        try:
            hook.create_custom_object(GROUP, VERSION, PLURAL, manifest, namespace)
            self.log.info("Created TrainJob %s/%s: %d node(s) x %d GPU(s), runtime %s%s", namespace, name,
                          self.nodes, self.gpus_per_node, manifest["spec"]["runtimeRef"]["name"],
                          f", Kueue queue {self._queue()}" if self._queue() else "")
        except _api_error() as exc:
            if exc.status != 409:
                raise
            self.log.info("TrainJob %s/%s exists already (this try made it): following it", namespace, name)
        self.log.info("Leader's log: kubectl logs -n %s -f -l jobset.sigs.k8s.io/jobset-name=%s,"
                      "batch.kubernetes.io/job-completion-index=0", namespace, name)
        return {"name": name, "namespace": namespace}

    def get_job_status(self, external_id: Any, context: Context) -> str:
        return job_state(self._get(external_id["name"], external_id["namespace"]))

    def is_job_active(self, status: str) -> bool:
        return status in ACTIVE

    def is_job_succeeded(self, status: str) -> bool:
        return status == "Complete"

    def poll_until_complete(self, external_id: Any, context: Context) -> Any:
        """Wait (in the triggerer when deferrable), then the result: ResumableJobMixin returns what
        this returns when it reattaches, and asks :meth:`get_job_result` after a fresh submit."""
        name, namespace = external_id["name"], external_id["namespace"]
        self._job = (name, namespace)  # what on_kill deletes
        if self.deferrable:
            self.defer(
                trigger=TrainJobTrigger(
                    name, namespace, schedule_timeout=self.schedule_timeout_seconds, queue=self._queue(),
                    poll_interval=self.poll_interval, kubernetes_conn_id=self.kubernetes_conn_id,
                    config_file=self.config_file, in_cluster=self.in_cluster, cluster_context=self.cluster_context),
                method_name="execute_complete",
            )
        last = ""
        while True:
            status, message = verdict(self._get(name, namespace), schedule_timeout=self.schedule_timeout_seconds,
                                      queue=self._queue())
            if status != "wait":
                self._finished(status, message, name, namespace)
                return self.get_job_result(external_id, context)
            if message != last:
                self.log.info("TrainJob %s/%s: %s", namespace, name, message)
                last = message
            time.sleep(self.poll_interval)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Back from the triggerer: fail as the synchronous wait would, else read the result."""
        external_id = {"name": event["name"], "namespace": event["namespace"]}
        self._finished(event["status"], event.get("message", ""), **external_id)
        return self.step_succeeded(context, self.get_job_result(external_id, context))

    def _finished(self, status: str, message: str, name: str, namespace: str) -> None:
        if status == "complete":
            return
        if status == "not_admitted":
            if self.on_finish_action != "keep":
                self._delete(name, namespace)  # out of the queue: a retry queues a new job
            raise AirflowException(message)
        log_tail = ""
        if status == "failed":
            log_tail = self._leader_log(name, namespace)
            result = result_from_log(log_tail)
            if self.on_finish_action == "delete":
                self._delete(name, namespace)
            tail = "\n".join(log_tail.splitlines()[-20:])
            detail = f"\nleader's log (last lines):\n{tail}" if tail else ""
            if isinstance(result, dict) and result.get("error"):  # the step said no: not retried
                raise AirflowFailException(f"{message}: {result['error']}{detail}")
            raise AirflowException(f"{message}{detail}")
        raise AirflowException(f"TrainJob {namespace}/{name}: {message}")

    def _leader_pod(self, name: str, namespace: str) -> str | None:
        pods = self.hook.core_v1_client.list_namespaced_pod(
            namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={name},"
                                      "batch.kubernetes.io/job-completion-index=0")
        items = sorted(pods.items or [], key=lambda p: str(p.metadata.creation_timestamp or ""))
        return items[-1].metadata.name if items else None

    def _leader_log(self, name: str, namespace: str) -> str:
        pod = self._leader_pod(name, namespace)
        if pod is None:
            return ""
        try:
            response = self.hook.core_v1_client.read_namespaced_pod_log(pod, namespace, container=NODE,
                                                                        _preload_content=False)
        except _api_error() as exc:
            self.log.warning("Leader pod %s/%s: no log (%s)", namespace, pod, exc.reason)
            return ""
        return response.data.decode("utf-8", errors="replace")

    def get_job_result(self, external_id: Any, context: Context) -> Any:
        name, namespace = external_id["name"], external_id["namespace"]
        read = getattr(self, "_results", {})
        if name in read:  # read once: the job may be gone after
            return read[name]
        text = self._leader_log(name, namespace)
        for line in text.splitlines():
            self.log.info("[%s leader] %s", name, line)
        result = result_from_log(text)
        if self.on_finish_action != "keep":
            self._delete(name, namespace)
        if result is None:
            raise AirflowException(f"TrainJob {namespace}/{name} completed, but its leader's log holds no "
                                   f"'{RESULT_LOG_PREFIX.strip()}' line (was LLMOPS_RESULT_LOG unset, or the "
                                   "leader pod removed?)")
        self._results = {**read, name: result}
        return result

    def on_kill(self) -> None:
        """The task was stopped (marked failed, DAG run cancelled): the job goes with it."""
        job = getattr(self, "_job", None)
        if job is not None and self.on_finish_action != "keep":
            self._delete(*job)
