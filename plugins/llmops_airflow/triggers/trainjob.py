"""The deferrable wait for a Kubeflow Trainer TrainJob, and what a TrainJob's status means.

:func:`job_state` reads the status the Trainer controller writes (v2.3: conditions ``Suspended``,
``Complete``, ``Failed``; a job with none of them true is running) into one of :data:`STATES`;
the operator's synchronous wait and :class:`TrainJobTrigger` both decide with it and
:func:`verdict`, so the two modes cannot disagree. Imports no Kubernetes client at module level.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"

# What a TrainJob is doing: NotFound (deleted, or never created), Suspended (waiting for Kueue's
# admission, or suspended by hand), Running (admitted: pods pending or running), Complete, Failed.
STATES = ("NotFound", "Suspended", "Running", "Complete", "Failed")
ACTIVE = ("Suspended", "Running")


def _true(condition: dict) -> bool:
    return str(condition.get("status", "")).lower() == "true"


def conditions(job: dict | None) -> dict[str, dict]:
    """The job's status conditions by type."""
    return {c.get("type", ""): c for c in ((job or {}).get("status") or {}).get("conditions") or []}


def job_state(job: dict | None) -> str:
    """One of :data:`STATES` for a TrainJob object (``None``: not found)."""
    if job is None:
        return "NotFound"
    found = conditions(job)
    for state in ("Failed", "Complete"):
        if state in found and _true(found[state]):
            return state
    if "Suspended" in found and _true(found["Suspended"]):
        return "Suspended"
    if "Suspended" not in found and (job.get("spec") or {}).get("suspend"):
        return "Suspended"  # created suspended; the controller has not written its condition yet
    return "Running"


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def suspended_since(job: dict) -> datetime | None:
    """When the job last became suspended: its Suspended condition's transition, else its creation."""
    found = conditions(job).get("Suspended")
    since = _time(found.get("lastTransitionTime")) if found and _true(found) else None
    return since or _time((job.get("metadata") or {}).get("creationTimestamp"))


def verdict(job: dict | None, *, schedule_timeout: float, queue: str = "",
            now: datetime | None = None) -> tuple[str, str]:
    """``(state, message)``: ``wait`` while the job runs or waits within ``schedule_timeout``
    seconds; ``complete``; ``failed`` with the controller's reason; ``not_admitted`` for a job
    still suspended after the timeout (Kueue never admitted it); ``gone`` when it vanished."""
    state = job_state(job)
    if state == "Complete":
        return "complete", "TrainJob completed"
    if state == "NotFound":
        return "gone", "the TrainJob no longer exists (deleted while the task waited)"
    meta = (job or {}).get("metadata") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    if state == "Failed":
        failed = conditions(job).get("Failed", {})
        reason = failed.get("reason") or "Failed"
        detail = failed.get("message") or "no message"
        return "failed", f"TrainJob {name} failed ({reason}): {detail}"
    if state == "Suspended":
        since = suspended_since(job or {})
        now = now or datetime.now(UTC)
        waited = (now - since).total_seconds() if since else 0.0
        if waited > schedule_timeout:
            where = f"Kueue queue {queue!r}" if queue else "the cluster (no Kueue queue configured)"
            return "not_admitted", (
                f"TrainJob {name} was never admitted: still suspended after {waited:.0f} s (schedule timeout "
                f"{schedule_timeout:.0f} s) by {where}; its quota has no room for the nodes and GPUs it asks "
                f"for, or no ClusterQueue serves that queue (kubectl get workloads -n {meta.get('namespace', '')} "
                f"-l kueue.x-k8s.io/job-name={meta.get('name', '')})")
    return "wait", state


class TrainJobTrigger(BaseTrigger):
    """Polls one TrainJob until :func:`verdict` says anything but ``wait``; the event carries
    ``status`` (that verdict, or ``error``), ``message``, ``name`` and ``namespace``."""

    def __init__(self, name: str, namespace: str, *, schedule_timeout: float, queue: str = "",
                 poll_interval: float = 15.0, kubernetes_conn_id: str | None = None,
                 config_file: str | None = None, in_cluster: bool | None = None,
                 cluster_context: str | None = None) -> None:
        super().__init__()
        self.name, self.namespace = name, namespace
        self.schedule_timeout, self.queue, self.poll_interval = schedule_timeout, queue, poll_interval
        self.kubernetes_conn_id, self.config_file = kubernetes_conn_id, config_file
        self.in_cluster, self.cluster_context = in_cluster, cluster_context

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "name": self.name, "namespace": self.namespace, "schedule_timeout": self.schedule_timeout,
            "queue": self.queue, "poll_interval": self.poll_interval, "kubernetes_conn_id": self.kubernetes_conn_id,
            "config_file": self.config_file, "in_cluster": self.in_cluster, "cluster_context": self.cluster_context,
        }

    async def _get(self, hook) -> dict | None:
        from kubernetes_asyncio import client as async_client
        from kubernetes_asyncio.client.exceptions import ApiException

        async with hook.get_conn() as connection:
            try:
                return await async_client.CustomObjectsApi(connection).get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        config_dict = None
        if self.config_file:  # the async hook reads a kubeconfig from the connection or as a dict only
            import yaml

            text = await asyncio.to_thread(Path(self.config_file).read_text)
            config_dict = yaml.safe_load(text)
        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id, config_dict=config_dict,
                                   in_cluster=self.in_cluster, cluster_context=self.cluster_context)
        event = {"name": self.name, "namespace": self.namespace}
        try:
            while True:
                status, message = verdict(await self._get(hook), schedule_timeout=self.schedule_timeout,
                                          queue=self.queue)
                if status != "wait":
                    yield TriggerEvent({**event, "status": status, "message": message})
                    return
                self.log.info("TrainJob %s/%s: %s", self.namespace, self.name, message)
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:  # noqa: BLE001 - the operator turns it into a retried failure
            yield TriggerEvent({**event, "status": "error", "message": f"{type(exc).__name__}: {exc}"})
