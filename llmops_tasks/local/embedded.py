"""The embedded deployment: Airflow and MLflow on SQLite under ``$LLMOPS_HOME``, no services.

Only builds environment variables (this package never imports Airflow); ``llmops demo``, the
tests and ``make`` targets hand them to the ``airflow`` CLI. A variable the user already set
wins, so ``MLFLOW_TRACKING_URI=http://mlflow:5000 llmops demo`` logs to a real server.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from llmops_tasks.core import settings


def dags_folder() -> Path:
    """The shipped DAGs folder (the ``llmops_dags`` package), wherever the package is installed."""
    spec = importlib.util.find_spec("llmops_dags")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llmops_dags package is not installed; run `pip install -e .` in the checkout")
    return Path(next(iter(spec.submodule_search_locations)))


def airflow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) plus every setting the embedded mode needs, unless set."""
    env = dict(os.environ if base is None else base)
    home = Path(env.get("LLMOPS_HOME", str(settings.home()))).resolve()
    airflow_home = home / "airflow"
    (airflow_home / "plugins").mkdir(parents=True, exist_ok=True)
    defaults = {
        "LLMOPS_HOME": str(home),
        "LLMOPS_EXECUTION": "local",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        # The plugin is registered through the package's entry point; an empty folder keeps
        # Airflow from importing the plugin modules a second time as loose files.
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(airflow_home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_EVALUATE_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "False",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # The same folder, absolute: the services and the steps run in other folders, and MLflow's
    # artifact root must be a file URI (LLMOPS_HOME=demo-home llmops up).
    env["LLMOPS_HOME"] = str(home)
    return env


# Variables worth exporting to drive the embedded Airflow / MLflow by hand.
EXPORTED = ("LLMOPS_HOME", "LLMOPS_EXECUTION", "MLFLOW_TRACKING_URI", "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER",
            "AIRFLOW__CORE__PLUGINS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "TOKENIZERS_PARALLELISM", "HF_EVALUATE_OFFLINE")


@dataclass
class EnvConfig:
    """No settings: ``llmops env`` prints the embedded deployment's variables."""


def run_env(config: EnvConfig) -> dict:
    env = airflow_env()
    return {key: env[key] for key in EXPORTED}


def render_env(result: dict) -> str:
    import shlex

    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in result.items())


def command():
    from llmops_tasks.core.command import Command

    return Command(EnvConfig, run_env, "print the embedded deployment's variables as shell exports "
                   "(eval \"$(llmops env)\" before running airflow or mlflow by hand)", render=render_env)
