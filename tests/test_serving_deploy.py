"""docker/helm/serving.yaml (the `llmops serve` Deployment, Service, NetworkPolicy), checked without a
cluster: its settings against the trainer pods' rules and values.yaml, its arguments against
``llmops serve``'s own config, and checkov (the tool tests/test_k8s_policy.py runs, same pinned
install, same waiver file docker/policy/checkov.yaml) on it with the image named by digest, as
production deploys it. No cluster is contacted; nothing else is faked.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "docker" / "helm" / "serving.yaml"
VALUES = ROOT / "docker" / "helm" / "values.yaml"
POLICY = ROOT / "docker" / "policy" / "checkov.yaml"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(SERVING.read_text())}


@pytest.fixture(scope="module")
def container(manifests) -> dict:
    (only,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def values_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in yaml.safe_load(VALUES.read_text())["env"]}


def test_the_pod_runs_as_the_trainer_pods_do(manifests, container):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["runAsUser"] == 10001 and context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False and context["capabilities"] == {"drop": ["ALL"]}
    # The root filesystem is read-only: the model download (/tmp) and the home are emptyDirs.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp", "/home/llmops"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory", "nvidia.com/gpu"} <= set(limits) and {"cpu", "memory"} <= set(requests)


def test_probes_ask_ping_on_the_port_the_server_listens_on(manifests, container):
    from llmops_tasks.core.config import load
    from llmops_tasks.serving.server import ServeConfig

    args = container["args"]
    assert args[0] == "serve"
    flags = dict(zip(args[1::2], args[2::2]))
    config = load(ServeConfig, None, {k.removeprefix("--").replace("-", "_"): v for k, v in flags.items()})
    assert config.host == "0.0.0.0" and config.model == f"models:/{values_env()['LLMOPS_MODEL_NAME']}@production"
    assert config.poll_interval > 0  # follows production: a promotion or a rollback needs no rollout
    (port,) = container["ports"]
    assert port["containerPort"] == config.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": port["name"]}, probe
    service = manifests["Service"]["spec"]
    assert service["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == port["name"]
    ingress = manifests["NetworkPolicy"]["spec"]
    assert ingress["podSelector"] == manifests["Deployment"]["spec"]["selector"]
    assert ingress["ingress"][0]["ports"] == [{"port": config.port, "protocol": "TCP"}]


def test_settings_agree_with_values_and_credentials_come_from_the_secret(container):
    env = {item["name"]: item for item in container["env"]}
    deployment = values_env()
    for name in ("LLMOPS_MODEL_NAME", "MLFLOW_TRACKING_URI"):
        assert env[name]["value"] == deployment[name], name
    assert container["image"].rsplit(":", 1)[0] == deployment["LLMOPS_TRAINER_IMAGE"].rsplit(":", 1)[0]
    # No credential is written here: the Secret is referenced, optional as in the trainer pods.
    assert container["envFrom"] == [{"secretRef": {"name": "llmops-mlflow", "optional": True}}]
    assert not any(word in name for name in env for word in ("PASSWORD", "TOKEN", "SECRET", "KEY"))


@pytest.mark.integration  # checkov runs as a subprocess
def test_checkov_finds_no_applicable_failure(tmp_path):
    from test_k8s_policy import checkov_binary

    binary = checkov_binary()
    image = "ghcr.io/llmops-airflow/trainer@sha256:" + hashlib.sha256(b"trainer").hexdigest()
    text = SERVING.read_text()
    assert "ghcr.io/llmops-airflow/trainer:" in text
    (tmp_path / SERVING.name).write_text(text.replace("ghcr.io/llmops-airflow/trainer:0.1.0", image))
    run = subprocess.run([str(binary), "--directory", str(tmp_path), "--framework", "kubernetes", "--output", "json",
                          "--skip-download"], capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["summary"]["parsing_errors"] == 0
    resources = {c["resource"] for c in report["results"]["passed_checks"] + report["results"]["failed_checks"]}
    assert {"Deployment.llmops.llmops-serve", "Service.llmops.llmops-serve"} <= resources
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    for check in ("CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_38", "CKV_K8S_22", "CKV_K8S_20", "CKV_K8S_40", "CKV_K8S_43",
                  "CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37", "CKV2_K8S_6"):
        assert check in passed, f"{check} does not pass on the serving Deployment"
    listed = [w for w in yaml.safe_load(POLICY.read_text())["not_applicable"]
              if any(fnmatch.fnmatch(SERVING.name, p) for p in w["files"])]
    waived = {w["id"] for w in listed}
    failed = [f"{c['check_id']} {c['check_name']}" for c in report["results"]["failed_checks"]
              if c["check_id"] not in waived]
    assert not failed, failed
