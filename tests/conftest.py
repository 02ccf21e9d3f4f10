"""Test session setup: an embedded LLMOps home in a temp folder, set before Airflow is imported;
the fixtures the test files share (MLflow stores, the tiny model, the training work dir, the CLI);
``unit`` as the default marker.

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

from llmops_tasks.local import embedded

os.environ.update(embedded.airflow_env())

import pytest


@pytest.fixture(scope="session")
def session_home() -> str:
    return _SESSION_HOME


RUN_CONTEXT = ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID")


def _point_at_store(env: pytest.MonkeyPatch, root) -> str:
    """A fresh MLflow store (SQLite) and artifact folders under ``root``, outside any DAG run."""
    uri = f"sqlite:///{root}/mlflow.db"
    env.setenv("MLFLOW_TRACKING_URI", uri)
    env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(root / "mlartifacts"))
    env.setenv("LLMOPS_ARTIFACT_ROOT", str(root / "artifacts"))
    env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("MLFLOW_REGISTRY_URI", *RUN_CONTEXT):
        env.delenv(name, raising=False)
    return uri


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A test's own MLflow store in ``tmp_path``; returns its tracking URI."""
    return _point_at_store(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory, request):
    """One MLflow store, artifact root and LLMOPS_HOME for a whole module: (root, env). ``env`` is the
    module's MonkeyPatch, for settings of its own (model name, actor); all are undone after."""
    root = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    with pytest.MonkeyPatch.context() as env:
        _point_at_store(env, root)
        env.setenv("LLMOPS_HOME", str(root))
        yield root, env


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny causal LM (random weights, tokenizer trained on the sample corpus), built once per
    session; read-only: a test that changes a model copies it first."""
    from llmops_tasks.local import bootstrap, samples

    return bootstrap.build_tiny_model(tmp_path_factory.mktemp("tiny") / "base", samples.corpus_text())


@pytest.fixture(scope="module")
def train_workdir(tmp_path_factory, tiny_model) -> dict:
    """The sample preference set split as the DAG splits it, and the tiny base model: what the
    training tests train on. Keys: root, base, train_preference, train_sft, eval, ..."""
    from llmops_tasks import split
    from llmops_tasks.core import data
    from llmops_tasks.local import samples

    root = tmp_path_factory.mktemp("train")
    dataset = root / "preference.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows())
    with pytest.MonkeyPatch.context() as env:
        _point_at_store(env, root)  # split records its own MLflow run: not in the session's store
        paths = split.run(split.SplitConfig(dataset=str(dataset), out_dir=str(root / "split")))
    return {"root": root, "base": str(tiny_model), **paths}


@pytest.fixture
def llmops(capsys):
    """Run ``llmops <args>`` in this process as the shell would: (exit code, result JSON or None)."""
    import json
    import tempfile
    from pathlib import Path

    from llmops_tasks.cli import main

    def run(args: list[str]) -> tuple[int, dict | None]:
        result_file = Path(tempfile.mkdtemp(prefix="llmops-result-")) / "result.json"
        code = main([*map(str, args), "--result-file", str(result_file)])
        capsys.readouterr()
        return code, json.loads(result_file.read_text()) if result_file.is_file() else None

    return run


def pytest_collection_modifyitems(config, items):
    """``unit`` is the default: a test that is not marked ``integration`` (a subprocess, a server,
    several real components at length) is a unit test, so ``-m unit`` selects exactly the fast,
    in-process tests."""
    for item in items:
        if item.get_closest_marker("integration") is None and item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.unit)
