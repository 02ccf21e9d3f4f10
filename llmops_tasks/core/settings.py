"""Where things live: the embedded home folder and the production overrides.

Everything the embedded mode creates sits under ``LLMOPS_HOME`` (default ``./.llmops``).
Production deployments override the pieces through the usual variables: ``MLFLOW_TRACKING_URI``,
``MLFLOW_REGISTRY_URI``, ``LLMOPS_ARTIFACT_ROOT`` (any fsspec URI), ``LLMOPS_MODEL_NAME``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "llmops-chat"
DEFAULT_EXPERIMENT = "llm_retraining"


def home() -> Path:
    return Path(os.environ.get("LLMOPS_HOME", ".llmops")).expanduser().resolve()


def tracking_uri() -> str:
    """MLflow tracking URI: the env var when set, else SQLite under the home folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{home() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return os.environ.get("LLMOPS_MLFLOW_ARTIFACTS", str(home() / "mlartifacts"))


def artifact_root() -> str:
    return os.environ.get("LLMOPS_ARTIFACT_ROOT", str(home() / "artifacts"))


def model_name() -> str:
    return os.environ.get("LLMOPS_MODEL_NAME", DEFAULT_MODEL_NAME)


def experiment_name() -> str:
    return os.environ.get("LLMOPS_EXPERIMENT", DEFAULT_EXPERIMENT)


PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _packaged(folder: str, name: str) -> str:
    path = PACKAGE_DIR / folder / name
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no packaged {folder[:-1]} {name!r} in {path.parent}; available: {', '.join(available)}")
    return str(path)


def packaged_recipe(name: str) -> str:
    """Path of a training or evaluation recipe shipped in the package (``llmops_tasks/recipes``)."""
    return _packaged("recipes", name)


def packaged_policy(name: str) -> str:
    """Path of a validation or gate policy shipped in the package (``llmops_tasks/policies``)."""
    return _packaged("policies", name)


def config_file(value: str) -> str:
    """A recipe or policy as a user names it (a form field, ``--config``): a URI stays as given, an
    existing file or any path with a folder in it becomes absolute, and a bare file name no file
    here has is the packaged recipe or policy of that name (``dpo_llama_lora.yaml``, ``gate.yaml``)."""
    value = value.strip()
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if path.exists() or len(path.parts) > 1:
        return str(path.resolve())
    for folder in ("recipes", "policies"):
        if (PACKAGE_DIR / folder / value).is_file():
            return str(PACKAGE_DIR / folder / value)
    packaged = sorted(p.name for folder in ("recipes", "policies") for p in (PACKAGE_DIR / folder).glob("*.yaml"))
    raise FileNotFoundError(f"config file not found: {value} (no such file here, nor a packaged recipe or policy; "
                            f"packaged: {', '.join(packaged)})")



# Governance settings of a deployment (environment of the Airflow workers and of whoever runs
# `llmops registry`), never of a DAG run: a trigger Param cannot turn them on.
ALLOW_APPROVAL_WAIVER = "LLMOPS_ALLOW_APPROVAL_WAIVER"
ALLOW_GATE_OVERRIDE = "LLMOPS_ALLOW_GATE_OVERRIDE"
GATE_POLICY = "LLMOPS_GATE_POLICY"


def deployment_allows(variable: str) -> bool:
    """Whether a governance exception (``ALLOW_APPROVAL_WAIVER``, ``ALLOW_GATE_OVERRIDE``) is
    enabled for this deployment: the variable is ``true``/``1``/``yes``; anything else is no."""
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes")


def gate_policy() -> str:
    """The deployment's standard gate policy: ``$LLMOPS_GATE_POLICY``, else the packaged gate.yaml."""
    return os.environ.get(GATE_POLICY, "").strip() or packaged_policy("gate.yaml")


def sample_data_dir() -> Path:
    return home() / "data"


def tiny_model_dir() -> Path:
    return home() / "models" / "tiny-base"


@contextlib.contextmanager
def temporary_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for a block; restore them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _apply(values)
        yield
    finally:
        _apply(saved)


def _apply(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_segment(text: str) -> str:
    """Run ids carry ':' and '+' (``manual__2026-01-01T00:00:00+00:00``); keep paths portable."""
    return _UNSAFE.sub("_", text).strip("_") or "run"


@dataclass(frozen=True)
class RunContext:
    """Identity of the pipeline run a step belongs to; passed to subprocesses and pods by env."""

    dag_id: str = ""
    run_id: str = ""
    task_id: str = ""

    @classmethod
    def from_env(cls) -> RunContext:
        return cls(
            dag_id=os.environ.get("LLMOPS_DAG_ID", ""),
            run_id=os.environ.get("LLMOPS_RUN_ID", ""),
            task_id=os.environ.get("LLMOPS_TASK_ID", ""),
        )

    def env(self) -> dict[str, str]:
        return {"LLMOPS_DAG_ID": self.dag_id, "LLMOPS_RUN_ID": self.run_id, "LLMOPS_TASK_ID": self.task_id}

    def step_dir(self, step: str, root: str | None = None) -> str:
        """``{artifact_root}/{dag_id}/{run_id}/{step}``; standalone CLI use lands under ``adhoc``."""
        root = root or artifact_root()
        dag = safe_segment(self.dag_id) if self.dag_id else "adhoc"
        run = safe_segment(self.run_id) if self.run_id else "latest"
        return f"{root.rstrip('/')}/{dag}/{run}/{step}"
