"""MLflow tracking: one experiment per pipeline, one parent run per DAG run, a child run per step.

The parent run is found by its tags (dag id + run id), so every step, in whichever process or pod
it runs, attaches to the same parent, and a retried step does not create a second parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from llmops_tasks import __version__
from llmops_tasks.core import settings
from llmops_tasks.core.settings import RunContext

log = logging.getLogger(__name__)

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
        _create_sqlite_store(uri)
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    current = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    with settings.temporary_env(current):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


_CREATED_STORES: set[str] = set()


def _create_sqlite_store(uri: str) -> None:
    """Create and migrate a SQLite store once, under a file lock.

    Two processes opening a new database at the same time (a step and its logging process, RL
    training its reward model first) would both run MLflow's migrations, and one would fail with
    "table ... already exists".
    """
    if uri in _CREATED_STORES:
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    path = uri.removeprefix("sqlite:///")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _CREATED_STORES.add(uri)


def get_or_create_experiment(name: str, mlflow_client=None, *, create: bool = True) -> str | None:
    """The id of experiment ``name``, created when missing (artifacts under the embedded home with
    a SQLite store); with ``create=False``, ``None`` when it does not exist."""
    mlflow_client = mlflow_client or client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    location = None
    if settings.tracking_uri().startswith("sqlite:"):
        location = settings.mlflow_artifact_root()
        os.makedirs(location, exist_ok=True)
        location = f"file://{os.path.abspath(location)}"
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another step or process created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def experiment_id(mlflow_client=None) -> str:
    """The pipeline's experiment (``$LLMOPS_EXPERIMENT``), created on first use."""
    return get_or_create_experiment(settings.experiment_name(), mlflow_client)


def quote(value: str) -> str:
    """A value for a single-quoted string in an MLflow search filter."""
    return value.replace("'", "\\'")


def _find_pipeline_run(ctx: RunContext, experiment: str, mlflow_client) -> str | None:
    query = (
        f"tags.`{TAG_ROLE}` = 'pipeline' and tags.`{TAG_DAG_ID}` = '{quote(ctx.dag_id)}' "
        f"and tags.`{TAG_RUN_ID}` = '{quote(ctx.run_id)}'"
    )
    found = mlflow_client.search_runs([experiment], filter_string=query, max_results=1,
                                      order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


def pipeline_run_id(ctx: RunContext, mlflow_client=None, tags: dict[str, str] | None = None) -> str | None:
    """The parent run of this DAG run, created on first use; ``None`` outside a DAG run."""
    if not ctx.run_id:
        return None
    mlflow_client = mlflow_client or client()
    exp = experiment_id(mlflow_client)
    found = _find_pipeline_run(ctx, exp, mlflow_client)
    if found:
        return found
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


def end_pipeline_run(ctx: RunContext, status: str, tags: dict[str, str] | None = None, mlflow_client=None) -> str | None:
    """End this DAG run's parent run (``FINISHED`` / ``FAILED`` / ``KILLED``) with ``tags``; creates
    none. Returns its id, ``None`` when the DAG run has no parent run (no step reached MLflow)."""
    from mlflow.entities import RunTag

    if not ctx.run_id:
        return None
    mlflow_client = mlflow_client or client()
    exp = get_or_create_experiment(settings.experiment_name(), mlflow_client, create=False)
    if exp is None:
        return None
    run_id = _find_pipeline_run(ctx, exp, mlflow_client)
    if not run_id:
        return None
    if tags:
        mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
    mlflow_client.set_terminated(run_id, status)
    return run_id


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


def record_step(step: str, params: dict[str, Any], metrics: dict[str, float], files: list[str],
                folders: dict[str, str] | None = None) -> str:
    """A finished child run for a light step: its settings, numbers and report files. Returns its URL.

    ``files`` land under the run's ``reports/`` artifacts; ``folders`` maps an artifact path to a
    local folder logged whole (a Data Docs site). Remote paths (``s3://`` ...) are not copied: the
    run's params name them.
    """
    with step_run(step, params=params) as run_id:
        log_metrics(run_id, metrics)
        mlflow_client = client()
        for path in files:
            if path and "://" not in path and os.path.exists(path):
                mlflow_client.log_artifact(run_id, path, artifact_path="reports")
        for artifact_path, folder in (folders or {}).items():
            if folder and "://" not in folder and os.path.isdir(folder):
                mlflow_client.log_artifacts(run_id, folder, artifact_path=artifact_path)
    return run_url(run_id)


class StepRecorder:
    """:func:`record_step` for a light step, with MLflow imported and its store opened beforehand.

    In a process that has not loaded MLflow yet (a step's own process: the CLI in a pod, an
    Airflow task), importing it and opening the store cost seconds of CPU after the step's real
    work. :func:`step_recorder` then spawns a process that does that on another core while the
    step reads its data, and records the run when :meth:`record` hands it over. In a process that
    has MLflow and the store open already (a test session, the embedded demo's second step) the
    run is recorded here, which costs milliseconds. Either way :meth:`record` returns what
    :func:`record_step` returns and raises what it raises (as ``RuntimeError`` from the other
    process); if that process is gone, the run is recorded here instead.
    """

    def __init__(self, connection=None, process=None) -> None:
        self._connection, self._process = connection, process

    def record(self, step: str, params: dict[str, Any], metrics: dict[str, float], files: list[str],
               folders: dict[str, str] | None = None) -> str:
        if self._connection is None:
            return record_step(step, params, metrics, files, folders)
        try:
            self._connection.send((step, params, metrics, files, folders))
            kind, value = self._connection.recv()
        except (EOFError, OSError):  # the process died: nothing was recorded there
            self.close()
            return record_step(step, params, metrics, files, folders)
        self.close()
        if kind == "error":
            raise RuntimeError(f"MLflow: {value}")
        return value

    def close(self) -> None:
        """Let the process go (it exits when its end of the pipe closes); idempotent."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
            self._process = None


def _record_when_asked(connection) -> None:
    """The recording process: MLflow imported and the store open, then one :func:`record_step`."""
    import sys

    try:
        with contextlib.suppress(Exception):  # only a head start: record_step reports real errors
            client()
        try:
            step, params, metrics, files, folders = connection.recv()
        except EOFError:  # the step ended without a run to record (it failed before)
            return
        try:
            connection.send(("ok", record_step(step, params, metrics, files, folders)))
        except Exception as exc:  # noqa: BLE001 (handed to the step, which raises it)
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # everything is written: skip tearing down MLflow's module graph


@contextlib.contextmanager
def step_recorder() -> Iterator[StepRecorder]:
    """A :class:`StepRecorder`: in a spawned process when this one has not opened the store yet."""
    import sys

    uri = settings.tracking_uri()
    warm = "mlflow" in sys.modules and (not uri.startswith("sqlite:///") or uri in _CREATED_STORES)
    if warm:
        yield StepRecorder()
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork: the step may hold threads
    ours, theirs = context.Pipe()
    process = context.Process(target=_record_when_asked, args=(theirs,), name="mlflow-record", daemon=True)
    process.start()
    theirs.close()
    recorder = StepRecorder(ours, process)
    try:
        yield recorder
    finally:
        recorder.close()


class BackgroundRun:
    """A step's child run whose MLflow calls are made by a separate process.

    Importing MLflow, opening its store, creating the run and logging a model cost seconds of CPU
    that a training step would otherwise spend before its first step and after its last. A
    spawned process does that work on another core while the step imports its libraries and
    loads its model; metrics are handed over without waiting; calls that answer (the run id,
    logging the model) wait for the answer. If the step's process dies (SIGKILL on preemption),
    the run is marked FAILED instead of staying RUNNING.

    Use ``background_step_run``; ``run_id`` waits until the run exists and raises if it could not
    be created.
    """

    def __init__(self, connection, process):
        import threading

        self._connection = connection
        self._process = process
        self._lock = threading.RLock()  # one message (or request and answer) on the pipe at a time
        self._run_id: str | None = None
        self._url = ""

    def _receive(self):
        try:
            reply = self._connection.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(
                f"MLflow logging process exited (code {self._process.exitcode}) before it answered") from None
        if reply[0] == "error":
            raise RuntimeError(f"MLflow: {reply[1]}")
        return reply[1:]

    def _send(self, message) -> None:
        try:
            self._connection.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._process.join(5)
            raise RuntimeError(
                f"MLflow logging process exited (code {self._process.exitcode}); the run cannot be written") from None

    @property
    def run_id(self) -> str:
        with self._lock:
            if self._run_id is None:
                self._run_id, self._url = self._receive()
        return self._run_id

    @property
    def url(self) -> str:
        self.run_id  # noqa: B018  (waits for the run)
        return self._url

    def log_metrics(self, metrics: list[tuple[str, float, int]]) -> None:
        """(key, value, step) triples, timestamped now and sent without waiting."""
        import time

        now = int(time.time() * 1000)
        batch = [(k, float(v), now, int(step)) for k, v, step in metrics if isinstance(v, (int, float))]
        if batch:
            with self._lock:
                self._send(("metrics", batch))

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(run_id, *args)`` in the logging process (a module-level function); its return value."""
        self.run_id  # noqa: B018
        with self._lock:
            self._send(("call", function, args))
            return self._receive()[0]

    def end(self, status: str) -> list[str]:
        """Finish the run (FINISHED or FAILED); the logging calls that failed along the way."""
        try:
            self.run_id  # noqa: B018  (raises with the reason when the run was never created)
            with self._lock:
                self._send(("end", status))
                (failures,) = self._receive()
        finally:
            self._connection.close()
            self._process.join(30)
            if self._process.is_alive():
                self._process.terminate()
        return failures


def _serve(connection, step: str, params: dict[str, Any] | None, tags: dict[str, str] | None,
           system_metrics_interval: float, warmups: tuple[Callable[[], Any], ...]) -> None:
    """The logging process: create the run, then log what the step sends until it ends or dies."""
    failures: list[str] = []

    class StepEnded(Exception):
        pass

    try:
        with step_run(step, params=params, tags=tags) as run_id:
            connection.send(("run", run_id, run_url(run_id)))
            monitor = None
            if system_metrics_interval > 0:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                monitor = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_interval,
                                               samples_before_logging=1, tracking_uri=settings.tracking_uri())
                monitor.start()
            for warmup in warmups:  # work the step will ask for later, done while it is busy elsewhere
                try:
                    warmup()
                except Exception as exc:  # noqa: BLE001 (only an optimization; the real call will report real errors)
                    failures.append(f"warm-up {getattr(warmup, '__name__', warmup)}: {exc}")
            mlflow_client = client()
            status = "FAILED"
            try:
                while True:
                    try:
                        message = connection.recv()
                    except EOFError:
                        raise StepEnded("the step's process ended without finishing its run") from None
                    if message[0] == "metrics":
                        from mlflow.entities import Metric

                        batch = [Metric(*item) for item in message[1]]
                        for start in range(0, len(batch), 1000):  # the tracking server's batch limit
                            try:
                                mlflow_client.log_batch(run_id, metrics=batch[start : start + 1000])
                            except Exception as exc:  # noqa: BLE001 (reported, never raised: see the docstring)
                                failures.append(f"log_batch ({len(batch)} metrics): {exc}")
                    elif message[0] == "call":
                        _, function, args = message
                        try:
                            connection.send(("ok", function(run_id, *args)))
                        except Exception as exc:  # noqa: BLE001 (reported, never raised: see the docstring)
                            name = getattr(function, "__name__", function)
                            connection.send(("error", f"{name}: {type(exc).__name__}: {exc}"))
                    elif message[0] == "end":
                        status = message[1]
                        break
            finally:
                if monitor is not None:
                    monitor.finish()
            if status != "FINISHED":
                raise StepEnded(f"step ended with {status}")
        connection.send(("ended", failures))
    except StepEnded:
        with contextlib.suppress(OSError, BrokenPipeError):
            connection.send(("ended", failures))
    except Exception as exc:  # noqa: BLE001 (reported, never raised: see the docstring)
        with contextlib.suppress(OSError, BrokenPipeError):
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()
        # Everything is written: skip the interpreter's teardown of MLflow's module graph (about a
        # second the step would spend waiting for this process to exit).
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@contextlib.contextmanager
def background_step_run(step: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
                        system_metrics_interval: float = 0.0,
                        warmups: tuple[Callable[[], Any], ...] = ()) -> Iterator[BackgroundRun]:
    """Like ``step_run``, with MLflow's work done by a spawned process (see ``BackgroundRun``).

    The run is FINISHED when the block ends normally and FAILED when it raises. Metrics that could
    not be logged are reported on stderr at the end; they do not fail a step that did its work.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork: the step may already hold threads (torch)
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, name=f"mlflow-{step}", daemon=True,
                              args=(theirs, step, params, tags, system_metrics_interval, warmups))
    process.start()
    theirs.close()
    run = BackgroundRun(ours, process)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            run.end("FAILED")
        raise
    failures = run.end("FINISHED")
    for failure in failures:
        log.warning("MLflow run %s: %s", run.run_id, failure)
