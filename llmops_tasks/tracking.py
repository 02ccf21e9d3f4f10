"""MLflow tracking: one experiment per pipeline, one parent run per DAG run, a child run per step.

The parent run is found by its tags (dag id + run id), so every step, in whichever process or pod
it runs, attaches to the same parent, and a retried step does not create a second parent.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from llmops_tasks import __version__, settings
from llmops_tasks.settings import RunContext

TAG_ROLE = "llmops.role"
TAG_DAG_ID = "llmops.dag_id"
TAG_RUN_ID = "llmops.dag_run_id"
TAG_STEP = "llmops.step"
TAG_VERSION = "llmops.package_version"


def client():
    """A client for the configured tracking and registry URIs; also sets MLflow's fluent defaults.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also write their URI into ``os.environ``;
    that is undone here, so a URI derived from defaults is not pinned for the rest of the process
    and does not leak into the subprocesses it starts.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.tracking_uri()
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri.removeprefix("sqlite:///")), exist_ok=True)
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    current = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with settings.temporary_env(current):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def experiment_id(mlflow_client=None) -> str:
    mlflow_client = mlflow_client or client()
    name = settings.experiment_name()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.tracking_uri().startswith("sqlite:"):
        location = settings.mlflow_artifact_root()
        os.makedirs(location, exist_ok=True)
        location = f"file://{os.path.abspath(location)}"
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another step created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def pipeline_run_id(ctx: RunContext, mlflow_client=None, tags: dict[str, str] | None = None) -> str | None:
    """The parent run of this DAG run, created on first use; ``None`` outside a DAG run."""
    if not ctx.run_id:
        return None
    mlflow_client = mlflow_client or client()
    exp = experiment_id(mlflow_client)
    query = (
        f"tags.`{TAG_ROLE}` = 'pipeline' and tags.`{TAG_DAG_ID}` = '{_quote(ctx.dag_id)}' "
        f"and tags.`{TAG_RUN_ID}` = '{_quote(ctx.run_id)}'"
    )
    found = mlflow_client.search_runs([exp], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = mlflow_client.create_run(
        exp,
        run_name=f"{ctx.dag_id}/{ctx.run_id}",
        tags={
            TAG_ROLE: "pipeline",
            TAG_DAG_ID: ctx.dag_id,
            TAG_RUN_ID: ctx.run_id,
            TAG_VERSION: __version__,
            **(tags or {}),
        },
    )
    return run.info.run_id


def run_url(run_id: str, mlflow_client=None) -> str:
    """A link to the run for the Airflow UI (meaningful when the tracking URI is an HTTP server)."""
    uri = settings.tracking_uri()
    exp = (mlflow_client or client()).get_run(run_id).info.experiment_id
    base = uri if uri.startswith("http") else os.environ.get("LLMOPS_MLFLOW_UI", "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> Iterator[str]:
    """A child run of the pipeline run for one step; FAILED if the step raises."""
    from mlflow.entities import Param, RunTag

    mlflow_client = client()
    ctx = RunContext.from_env()
    parent = pipeline_run_id(ctx, mlflow_client)
    all_tags = {TAG_ROLE: "step", TAG_STEP: step, TAG_VERSION: __version__, **(tags or {})}
    if parent:
        all_tags.update({"mlflow.parentRunId": parent, TAG_DAG_ID: ctx.dag_id, TAG_RUN_ID: ctx.run_id})
    run = mlflow_client.create_run(experiment_id(mlflow_client), run_name=step, tags=all_tags)
    run_id = run.info.run_id
    if params:
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(flat), 100):
            mlflow_client.log_batch(run_id, params=flat[start : start + 100])
    try:
        yield run_id
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FINISHED")
    if parent and tags:
        mlflow_client.log_batch(parent, tags=[RunTag(f"{step}.{k}", str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log many metrics in one request."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    mlflow_client = client()
    for start in range(0, len(batch), 1000):
        mlflow_client.log_batch(run_id, metrics=batch[start : start + 1000])


def record_step(step: str, params: dict[str, Any], metrics: dict[str, float], files: list[str]) -> str:
    """A finished child run for a light step: its settings, numbers and report files. Returns its URL."""
    with step_run(step, params=params) as run_id:
        log_metrics(run_id, metrics)
        mlflow_client = client()
        for path in files:
            if path and "://" not in path and os.path.exists(path):
                mlflow_client.log_artifact(run_id, path, artifact_path="reports")
    return run_url(run_id)
