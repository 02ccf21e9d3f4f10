"""A pipeline step as a subprocess of the Airflow worker: the embedded mode's step operator."""

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

from llmops_airflow.operators.base import StepOperatorMixin, step_failure

if TYPE_CHECKING:
    from airflow.sdk import Context

STDERR_TAIL_LINES = 20


class LocalStepOperator(StepOperatorMixin, BaseOperator):
    """Run ``python -m llmops_tasks.cli <arguments>`` in a subprocess of the worker.

    The child inherits the worker's environment with the MLflow settings of the Airflow Connection
    ``mlflow_default`` where it exists, plus ``env_vars``, the run's identity
    (``LLMOPS_DAG_ID``/``RUN_ID``/``TASK_ID``) and ``LLMOPS_RESULT_FILE``; its output lines go to
    the task log as they come. The result JSON it writes is returned (the ``return_value``
    XCom), or None when the command wrote none. Exit codes mean what
    :mod:`llmops_airflow.operators.base` says; the last stderr lines end the failure's message.

    :param arguments: the CLI arguments after ``llmops``, e.g. ``["split", "--dataset", uri]``
        (templated).
    :param env_vars: extra environment for the child (templated values).
    :param kill_grace_seconds: how long ``on_kill`` waits after SIGTERM before SIGKILL.
    """

    template_fields: Sequence[str] = ("arguments", "env_vars")
    template_fields_renderers: ClassVar[dict[str, str]] = {"arguments": "py", "env_vars": "py"}
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

    def _child_env(self, context: Context, result_file: Path) -> dict[str, str]:
        from llmops_airflow.mlflow_connection import connection_env
        from llmops_tasks.core.settings import RunContext

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
            return self.step_succeeded(context, result)
        if result is not None:  # a step that said no still reports why; keep it, like the pod's sidecar does
            context["ti"].xcom_push(key="return_value", value=result)
        step = next((a for a in map(str, self.arguments) if not a.startswith("-")), "llmops")
        tail = "\n".join(stderr_tail) or "(no stderr)"
        raise step_failure(f"llmops {step}", returncode, result, f":\n{tail}")

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
