"""Test session setup: an embedded LLMOps home in a temp folder, set before Airflow is imported.

Airflow reads its configuration once, at import; every test in the session therefore shares one
temporary AIRFLOW_HOME / LLMOPS_HOME (SQLite metadata, MLflow store), never the developer's
./.llmops. Tests that need their own MLflow store point MLFLOW_TRACKING_URI at tmp_path.
"""

from __future__ import annotations

import os
import tempfile

_SESSION_HOME = tempfile.mkdtemp(prefix="llmops-test-home-")
os.environ["LLMOPS_HOME"] = _SESSION_HOME
os.environ.pop("MLFLOW_TRACKING_URI", None)
for _key in [k for k in os.environ if k.startswith("AIRFLOW")]:
    os.environ.pop(_key)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmops_tasks import embedded

os.environ.update(embedded.airflow_env())

import pytest


@pytest.fixture(scope="session")
def session_home() -> str:
    return _SESSION_HOME
