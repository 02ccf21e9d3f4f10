"""The deployment files, checked without Docker or Kubernetes: docker/compose.yaml and the Helm
values parse, name images and paths that exist in this repository, and agree on versions with
constraints.txt and the package; `llmops up` and the plugin page are wired where the docs say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import llmops_tasks

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
VALUES = ROOT / "docker" / "helm" / "values.yaml"


def pinned(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_compose_services_and_build_contexts_exist(compose):
    services = compose["services"]
    for name in ("postgres", "minio", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-triggerer"):
        assert name in services, f"compose.yaml lacks service {name}"
    for name, service in services.items():
        assert "image" in service, f"service {name} names no image"
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            if "dockerfile" in build:
                assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} not in {context}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    for config in (c["source"] for s in services.values() for c in s.get("configs", [])):
        assert config in compose.get("configs", {}), f"config {config} is used but not defined"


def test_compose_versions_agree_with_constraints_and_package(compose):
    services = compose["services"]
    mlflow = pinned("mlflow")
    assert services["mlflow"]["image"].endswith(f":{mlflow}")
    assert f"ghcr.io/mlflow/mlflow:v{mlflow}" in services["mlflow"]["build"]["dockerfile_inline"]
    airflow_build = services["airflow-init"]["build"]["dockerfile_inline"]
    assert f"FROM ghcr.io/llmops-airflow/airflow:{llmops_tasks.__version__}" in airflow_build
    torch = pinned("torch").split("+")[0]
    assert f"torch=={torch}" in airflow_build and "-c constraints.txt" in airflow_build
    assert services["airflow-scheduler"]["image"] == services["airflow-init"]["image"]
    # The base image that build starts from is the one docker/Dockerfile.airflow makes, on the pinned Airflow.
    assert f"FROM apache/airflow:{pinned('apache-airflow')}-" in (ROOT / "docker" / "Dockerfile.airflow").read_text()


def test_compose_airflow_runs_on_postgres_with_mlflow_server(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "${AIRFLOW_JWT_SECRET:?" in env["AIRFLOW__API_AUTH__JWT_SECRET"], "the JWT secret must be required, not baked in"
    command = " ".join(compose["services"]["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in command and "--artifacts-destination=s3://" in command
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_helm_values_match_image_and_pipeline_settings(values):
    assert values["airflowVersion"] == pinned("apache-airflow")
    assert values["images"]["airflow"]["repository"] == "ghcr.io/llmops-airflow/airflow"
    assert values["images"]["airflow"]["tag"] == llmops_tasks.__version__ == values["defaultAirflowTag"]
    assert values["executor"] in ("CeleryExecutor", "KubernetesExecutor", "CeleryKubernetesExecutor")
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], f"{key} must name a Secret, so the key does not rotate on upgrade"
    env = {item["name"]: item["value"] for item in values["env"]}
    assert env["LLMOPS_EXECUTION"] == "kubernetes"
    assert env["LLMOPS_TRAINER_IMAGE"] == f"ghcr.io/llmops-airflow/trainer:{llmops_tasks.__version__}"
    pod_settings = (ROOT / "plugins" / "llmops_airflow" / "operators" / "kubernetes.py").read_text()
    for name in env:
        if name.startswith("LLMOPS_") and name not in ("LLMOPS_EXECUTION", "LLMOPS_ARTIFACT_ROOT", "LLMOPS_MODEL_NAME",
                                                       "LLMOPS_RETRAIN_SCHEDULE", "LLMOPS_MLFLOW_UI"):
            assert name in pod_settings, f"values.yaml sets {name}, which llmops_airflow.operators.kubernetes does not read"
    assert values["triggerer"]["enabled"] and values["dagProcessor"]["enabled"]
    if values["dags"]["gitSync"]["enabled"]:
        assert (ROOT / values["dags"]["gitSync"]["subPath"]).is_dir()
    assert (ROOT / "dags").is_dir()


def test_deployment_guide_names_the_files_it_explains():
    guide = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    for path in re.findall(r"`((?:docker|docs|dags|plugins|llmops_tasks)/[\w./-]+)`", guide):
        assert (ROOT / path).exists(), f"DEPLOYMENT.md names {path}, which does not exist"
    for image in re.findall(r"docs/screenshots/[\w.-]+\.png", guide):
        assert (ROOT / image).is_file(), f"DEPLOYMENT.md shows {image}, which does not exist"


def test_up_command_and_plugin_page_are_registered():
    from llmops_tasks.cli import STEPS

    assert STEPS["up"][0] == "llmops_tasks.local.services"
    from llmops_airflow import approvals_app
    from llmops_airflow.plugin import LLMOpsPlugin

    assert [a["url_prefix"] for a in LLMOpsPlugin.fastapi_apps] == [approvals_app.URL_PREFIX]
    assert LLMOpsPlugin.external_views[0]["href"] == approvals_app.URL_PREFIX + "/"
    assert "llmops up" in (ROOT / "Makefile").read_text()
