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
TRAINING_NAMESPACE = ROOT / "docker" / "helm" / "training-namespace.yaml"
GUIDE = ROOT / "docs" / "DEPLOYMENT.md"
# The chart release the values are written and checked for (keys read in the chart's values.yaml
# and templates: auth manager, createUserJob, redis/broker Secrets, service accounts, pod-launcher RBAC).
CHART_VERSION = "1.22.0"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


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


@pytest.fixture(scope="module")
def training_namespace() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(TRAINING_NAMESPACE.read_text())}


def release_namespace() -> str:
    """The namespace of `helm upgrade --install ... -n <namespace> -f docker/helm/values.yaml`."""
    match = re.search(r"helm upgrade --install \S+ apache-airflow/airflow --version (\S+) -n (\S+) -f docker/helm/values\.yaml",
                      VALUES.read_text())
    assert match, "values.yaml's header gives no install command with --version and -n"
    assert match.group(1) == CHART_VERSION, f"values.yaml installs chart {match.group(1)}, the values are for {CHART_VERSION}"
    return match.group(2)


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


def test_compose_services_get_no_host_privileges(compose):
    """What checkov's pod policies say, for the compose stack (checkov reads no compose files;
    docker/policy/checkov.yaml)."""
    for name, service in compose["services"].items():
        assert not service.get("privileged"), f"{name} runs privileged"
        assert not service.get("cap_add"), f"{name} adds capabilities {service.get('cap_add')}"
        for key in ("network_mode", "pid", "ipc", "userns_mode"):
            assert service.get(key) != "host", f"{name} shares the host's {key}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            assert "docker.sock" not in source, f"{name} mounts the Docker socket"


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


def test_helm_values_use_fab_without_a_chart_made_admin(values):
    """The chart's default job creates Admin admin/admin; the simple auth manager is for development.
    Production: FAB, the first admin created by hand with a password of one's own, or SSO."""
    assert values["config"]["core"]["auth_manager"] == FAB_AUTH_MANAGER
    assert values["createUserJob"]["enabled"] is False, "the chart would create Admin 'admin' with password 'admin'"
    assert "defaultUser" not in values.get("webserver", {}), "webserver.defaultUser makes the chart create a user"
    assert "simple_auth_manager_users" not in values["config"]["core"]
    airflow_image = (ROOT / "docker" / "Dockerfile.airflow").read_text()
    assert "import airflow.providers.fab.auth_manager.fab_auth_manager" in airflow_image, (
        "the Airflow image build must check that the FAB auth manager is installed")
    guide = GUIDE.read_text()
    assert "FAB auth manager" in guide and "airflow users create" in guide, "DEPLOYMENT.md must say how the first admin is made"


def test_helm_values_take_every_key_and_password_from_precreated_secrets(values):
    """Nothing the chart would generate at render time: a generated password or key changes with
    every render (helm template, GitOps tools) and, for the broker, breaks the workers' URL."""
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], f"{key} must name a Secret"
    assert values["data"]["metadataSecretName"]
    assert values["redis"]["enabled"] and values["redis"]["passwordSecretName"], "redis.passwordSecretName must name a Secret"
    assert values["data"]["brokerUrlSecretName"], "with redis.passwordSecretName the chart needs data.brokerUrlSecretName"
    for key in ("password", "brokerUrl"):
        assert not values["redis"].get(key) and not values["data"].get(key), f"{key} must not be written in values.yaml"
    guide = GUIDE.read_text()
    for name in (values["data"]["metadataSecretName"], values["data"]["brokerUrlSecretName"],
                 values["redis"]["passwordSecretName"], values["fernetKeySecretName"],
                 values["apiSecretKeySecretName"], values["jwtSecretName"]):
        assert f"`{name}`" in guide, f"DEPLOYMENT.md's Secrets table lacks {name}, which values.yaml uses"


def test_mlflow_secret_reference_is_optional_in_airflow_containers_and_pods(values):
    from llmops_airflow.operators.kubernetes import default_secret_names

    _, mlflow_secret = default_secret_names()
    (source,) = yaml.safe_load(values["extraEnvFrom"])
    assert source == {"secretRef": {"name": mlflow_secret, "optional": True}}
    # The pods' side: tests/test_operators.py::test_pod_env_carries_the_run_identity_and_services_but_no_secret_values


def test_workers_may_launch_pods_in_the_training_namespace_only(values, training_namespace):
    """The chart's pod-launcher Role covers the release namespace; the trainer pods run in
    LLMOPS_K8S_NAMESPACE: training-namespace.yaml grants the chart's pod-launcher rules there, to
    the workers' service account, and nothing cluster-wide."""
    env = {item["name"]: item["value"] for item in values["env"]}
    namespace = env["LLMOPS_K8S_NAMESPACE"]
    assert values["allowPodLaunching"] is True and values["multiNamespaceMode"] is False
    assert set(training_namespace) == {"Namespace", "Role", "RoleBinding", "NetworkPolicy"}
    assert training_namespace["Namespace"]["metadata"]["name"] == namespace
    for kind in ("Role", "RoleBinding", "NetworkPolicy"):
        assert training_namespace[kind]["metadata"]["namespace"] == namespace, f"the {kind} is not in {namespace}"
    rules = {(resource, verb) for rule in training_namespace["Role"]["rules"] for resource in rule["resources"]
             for verb in rule["verbs"] if rule["apiGroups"] == [""]}
    needed = {("pods", v) for v in ("create", "get", "list", "watch", "patch", "delete")} | {
        ("pods/log", "get"), ("pods/exec", "create"), ("pods/exec", "get"), ("events", "list")}
    assert needed <= rules, f"KubernetesPodOperator also needs {sorted(needed - rules)}"
    assert not any("*" in item for pair in rules for item in pair), "no wildcards in the Role"
    binding = training_namespace["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": training_namespace["Role"]["metadata"]["name"]}
    worker_sa = values["workers"]["serviceAccount"]
    assert worker_sa["create"] is True and worker_sa["automountServiceAccountToken"] is True
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": worker_sa["name"], "namespace": release_namespace()}]
    selector = training_namespace["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]
    # The label every trainer pod carries; tests/test_k8s_policy.py checks that the policy selects them (CKV2_K8S_6).
    assert selector == {"app.kubernetes.io/name": "llmops"}
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for document in training_namespace.values():
        kubernetes_validate.validate(document, "1.33", strict=True)


def test_deployment_guide_names_the_chart_version_and_the_training_namespace_manifest():
    guide = GUIDE.read_text()
    assert f"--version {CHART_VERSION}" in guide, f"DEPLOYMENT.md must install chart {CHART_VERSION}"
    assert "kubectl apply -f docker/helm/training-namespace.yaml" in guide
    assert release_namespace() == "llmops" and "-n llmops" in guide


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
