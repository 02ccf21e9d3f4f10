"""One pipeline step, one task: ``llmops <step> ...`` in a pod or in a local subprocess.

``step_operator`` is what DAG files call. ``LLMOPS_EXECUTION`` picks where steps run:

- ``local`` (default, the embedded mode): ``LocalStepOperator`` runs
  ``python -m llmops_tasks.cli <arguments>`` as a subprocess of the Airflow worker;
- ``kubernetes``: ``llmops_airflow.pod.LLMOpsPodOperator`` runs ``llmops <arguments>`` in the
  trainer image, with GPUs when the step asks for them.

Same command, same result JSON (the task's return value), same outcomes, so a DAG's shape does
not depend on the mode: exit 0 succeeds; exit 1 with a result is the step saying no (invalid
data, gate rejected) and fails without retry; anything else fails and is retried — including
exit 1 without a result, which is how Python ends on an uncaught exception.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from llmops_airflow.plugin import MLFLOW_RUN_URL_KEY, MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

EXECUTION_ENV = "LLMOPS_EXECUTION"
MODES = ("local", "kubernetes")
STDERR_TAIL_LINES = 20

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


def execution_mode() -> str:
    """``local`` or ``kubernetes``, from ``$LLMOPS_EXECUTION``; an env read only, safe at parse."""
    mode = os.environ.get(EXECUTION_ENV, "local").strip().lower() or "local"
    if mode not in MODES:
        raise ValueError(f"{EXECUTION_ENV} must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


class LocalStepOperator(BaseOperator):
    """Run ``python -m llmops_tasks.cli <arguments>`` in a subprocess of the worker.

    The child inherits the worker's environment with the MLflow settings of the Airflow Connection
    ``mlflow_default`` where it exists, plus ``env_vars``, the run's identity
    (``LLMOPS_DAG_ID``/``RUN_ID``/``TASK_ID``) and ``LLMOPS_RESULT_FILE``; its output lines go to
    the task log as they come. The result JSON it writes is returned (the ``return_value``
    XCom), or None when the command wrote none.

    :param arguments: the CLI arguments after ``llmops``, e.g. ``["split", "--dataset", uri]``
        (templated).
    :param env_vars: extra environment for the child (templated values).
    :param kill_grace_seconds: how long ``on_kill`` waits after SIGTERM before SIGKILL.
    """

    template_fields: Sequence[str] = ("arguments", "env_vars")
    template_fields_renderers: ClassVar[dict[str, str]] = {"arguments": "py", "env_vars": "py"}
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        env_vars: Mapping[str, str] | None = None,
        kill_grace_seconds: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # a list (its items templated) or one template/XComArg that renders to a list
        self.arguments = list(arguments) if isinstance(arguments, (list, tuple)) else arguments
        self.env_vars = dict(env_vars or {})
        self.kill_grace_seconds = kill_grace_seconds
        self._process: subprocess.Popen[str] | None = None
        self.mlflow_run_url: str | None = None  # read by MLflowRunLink

    def _child_env(self, context: Context, result_file: Path) -> dict[str, str]:
        from llmops_airflow.mlflow_connection import connection_env
        from llmops_tasks.settings import RunContext

        ti = context["ti"]
        run = RunContext(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id)
        env = dict(os.environ)
        # The MLflow server of the Connection, as the in-process tasks see it: train and evaluate
        # must write to and read from the same tracking store and registry as register and promote.
        for key, value in connection_env().items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return {
            **env,
            **{str(k): str(v) for k, v in self.env_vars.items()},
            **run.env(),
            "LLMOPS_RESULT_FILE": str(result_file),
            "PYTHONUNBUFFERED": "1",
        }

    def execute(self, context: Context) -> Any:
        command = [sys.executable, "-m", "llmops_tasks.cli", *map(str, self.arguments)]
        with tempfile.TemporaryDirectory(prefix="llmops-step-") as tmp:
            result_file = Path(tmp) / "result.json"
            self.log.info("Running %s", " ".join(command))
            self._process = subprocess.Popen(
                command,
                env=self._child_env(context, result_file),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                start_new_session=True,  # own process group: on_kill reaches torchrun/accelerate workers too
            )
            stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
            reader = threading.Thread(
                target=self._pump, args=(self._process.stderr, stderr_tail), name="llmops-stderr", daemon=True
            )
            reader.start()
            try:
                self._pump(self._process.stdout, None)
                returncode = self._process.wait()
                reader.join()
            finally:  # an execution_timeout or an error above must not leave the child running
                if self._process.poll() is None:
                    self._terminate(self._process)
            result = self._read_result(result_file)

        if returncode == 0:
            self.mlflow_run_url = publish_mlflow_run_url(context, result)
            return result
        step = next((a for a in map(str, self.arguments) if not a.startswith("-")), "llmops")
        tail = "\n".join(stderr_tail) or "(no stderr)"
        if result is not None:  # a step that said no still reports why; keep it, like the pod's sidecar does
            context["ti"].xcom_push(key="return_value", value=result)
        if returncode == 1 and result is not None:
            raise AirflowFailException(f"llmops {step} said no (exit code 1):\n{tail}")
        if returncode == 1:  # Python's own exit code for an uncaught exception: a crash, worth a retry
            raise AirflowException(f"llmops {step} crashed (exit code 1, no result):\n{tail}")
        if returncode < 0:
            raise AirflowException(f"llmops {step} was killed by signal {-returncode}:\n{tail}")
        raise AirflowException(f"llmops {step} failed with exit code {returncode}:\n{tail}")

    def _pump(self, stream, tail: collections.deque[str] | None) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if tail is not None:
                tail.append(line)
            self.log.info("%s", line)
        stream.close()

    @staticmethod
    def _read_result(path: Path) -> Any:
        if not path.exists() or not path.read_text().strip():
            return None
        return json.loads(path.read_text())

    def _terminate(self, process: subprocess.Popen[str]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=self.kill_grace_seconds)
                return
            except subprocess.TimeoutExpired:
                self.log.warning("llmops step %s did not stop on %s", process.pid, sig.name)

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.log.info("Stopping llmops step (pid %s)", self._process.pid)
            self._terminate(self._process)


def publish_mlflow_run_url(context: Context, result: Any) -> str | None:
    """Push the result's ``mlflow_run_url`` as its own XCom (for MLflowRunLink) and return it."""
    url = result.get(MLFLOW_RUN_URL_KEY) if isinstance(result, dict) else None
    if url:
        context["ti"].xcom_push(key=MLFLOW_RUN_URL_KEY, value=str(url))
    return str(url) if url else None


def step_operator(
    task_id: str,
    arguments: Sequence[str],
    *,
    gpus: int = 0,
    resources: Mapping[str, str | int] | None = None,
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
    :param kwargs: BaseOperator arguments (retries, pool, execution_timeout, ...), ``env_vars``,
        and KubernetesPodOperator arguments, which the local mode drops (``POD_ONLY_KWARGS``).
    """
    if gpus < 0:
        raise ValueError(f"gpus must be 0 or more, got {gpus}")
    if execution_mode() == "kubernetes":
        from llmops_airflow.pod import build_pod_operator

        return build_pod_operator(task_id, arguments, gpus=gpus, resources=resources, **kwargs)
    local_kwargs = {k: v for k, v in kwargs.items() if k not in POD_ONLY_KWARGS}
    return LocalStepOperator(task_id=task_id, arguments=arguments, **local_kwargs)


def __getattr__(name: str) -> Any:
    if name == "LLMOpsPodOperator":  # importing the Kubernetes provider is slow: only on demand
        from llmops_airflow.pod import LLMOpsPodOperator

        return LLMOpsPodOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
