"""Kubernetes and Dockerfile policies: checkov on the trainer pods as the deployment renders them,
on docker/helm/training-namespace.yaml and on the Dockerfiles, with 0 failures of the checks that
apply. The checks that do not apply, with their reasons, are listed once, in
docker/policy/checkov.yaml.

What is real and what is not: the pods are built by the real provider
(``build_pod_request_obj(dry_run=True)``) from the real ``llm_retraining`` DAG with the settings of
docker/helm/values.yaml; only the task instance is faked (its ``xcom_pull`` answers with run-folder
paths, as the upstream steps would) because there is no Airflow run, and no cluster is contacted.
checkov is the real tool, pinned in the Makefile and installed by ``make install`` into its own
virtualenv (it pins packages the project's environment must not share), run once as a subprocess.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration  # checkov runs as a subprocess

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "docker" / "policy" / "checkov.yaml"
VALUES = ROOT / "docker" / "helm" / "values.yaml"
MANIFESTS = (ROOT / "docker" / "helm" / "training-namespace.yaml",)
DOCKERFILES = (ROOT / "docker" / "Dockerfile.trainer", ROOT / "docker" / "Dockerfile.airflow")
CHECKOV = Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"  # the Makefile's $(VENV)/tools/checkov
RUN_ID = "scheduled__2026-01-05T03:00:00+00:00"
TRAIN_GPUS = "2"


def digest(name: str) -> str:
    """A well-formed digest, as `docker push` prints one for the pushed image."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def pinned_checkov() -> str:
    match = re.search(r"checkov==([\w.]+)", (ROOT / "Makefile").read_text())
    assert match, "the Makefile's install target pins no checkov version (checkov==X.Y.Z)"
    return match.group(1)


def checkov_binary() -> Path:
    if CHECKOV.is_file():
        return CHECKOV
    message = f"checkov is not installed at {CHECKOV}: run `make install` (it creates that virtualenv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class UpstreamResult(dict):
    """An upstream step's result as the pod's templates read it: every key is a run-folder path."""

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id

    def __missing__(self, key: str) -> str:
        return f"s3://llmops-artifacts/runs/llm_retraining/{RUN_ID}/{self.task_id}/{key}"


def render_pod(op, dag) -> dict:
    """Render the task's templates and build its pod the way ``execute`` does, without a cluster."""
    from kubernetes.client import ApiClient

    ti = types.SimpleNamespace(
        dag_id=dag.dag_id, task_id=op.task_id, run_id=RUN_ID, map_index=-1, try_number=1,
        xcom_pull=lambda task_ids, **_: UpstreamResult(task_ids),
    )
    context = {"dag": dag, "task": op, "ti": ti, "run_id": RUN_ID, "params": {k: dag.params[k] for k in dag.params}}
    op.render_template_fields(context)
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))


@pytest.fixture(scope="module")
def deployment_env():
    """The Airflow containers' environment of values.yaml, images by digest, 2 training GPUs."""
    values = yaml.safe_load(VALUES.read_text())
    env = {item["name"]: item["value"] for item in values["env"]}
    trainer_repo = env["LLMOPS_TRAINER_IMAGE"].rsplit(":", 1)[0]
    env["LLMOPS_TRAINER_IMAGE"] = f"{trainer_repo}@{digest('trainer')}"
    env["LLMOPS_XCOM_SIDECAR_IMAGE"] = f"alpine@{digest('xcom-sidecar')}"
    env["LLMOPS_TRAIN_GPUS"] = TRAIN_GPUS
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_VAR_LLMOPS_TRAINER_IMAGE"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env, patch


@pytest.fixture(scope="module")
def rendered_pods(deployment_env) -> dict[str, dict]:
    env, patch = deployment_env
    from airflow.sdk import DAG

    from llmops_airflow.operators import step_operator

    spec = importlib.util.spec_from_file_location("llm_retraining_policy", ROOT / "dags" / "llm_retraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.llm_retraining()
    pods = {name: render_pod(dag.get_task(name), dag) for name in ("train", "evaluate")}
    patch.delenv("LLMOPS_HF_CACHE_PVC")  # the default: an emptyDir cache
    with DAG("llmops_cpu_step", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as cpu_dag:
        cpu_step = step_operator("split", ["split", "--data", "{{ params.get('dataset', 'sample') }}"])
    pods["cpu"] = render_pod(cpu_step, cpu_dag)
    patch.setenv("LLMOPS_HF_CACHE_PVC", env["LLMOPS_HF_CACHE_PVC"])
    return pods


@pytest.fixture(scope="module")
def checkov_report(rendered_pods, tmp_path_factory) -> dict:
    """One checkov run over a folder with every rendered pod, manifest and Dockerfile."""
    binary = checkov_binary()
    folder = tmp_path_factory.mktemp("policy")
    for name, pod in rendered_pods.items():
        (folder / f"{name}-pod.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
    for path in (*MANIFESTS, *DOCKERFILES):
        shutil.copy(path, folder / path.name)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == pinned_checkov(), (
        f"{binary} is checkov {version.stdout.strip() or version.stderr.strip()}, the Makefile pins "
        f"{pinned_checkov()}: run `make install`")
    command = [str(binary), "--directory", str(folder), "--framework", "kubernetes", "dockerfile",
               "--output", "json", "--skip-download"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), f"checkov failed to run (exit {run.returncode}):\n{run.stderr[-3000:]}"
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {report["check_type"]: report for report in reports}


def failures(report: dict) -> list[dict]:
    return report["results"]["failed_checks"]


def waivers() -> list[dict]:
    return yaml.safe_load(POLICY.read_text())["not_applicable"]


def waived(check: dict) -> bool:
    name = check["file_path"].lstrip("/")
    return any(check["check_id"] == w["id"] and any(fnmatch.fnmatch(name, p) for p in w["files"]) for w in waivers())


def test_policy_file_gives_a_reason_for_every_check_and_file_it_skips():
    entries = waivers()
    assert entries, "docker/policy/checkov.yaml lists no check"
    ids = [w["id"] for w in entries]
    assert len(ids) == len(set(ids)), f"a check is listed twice in {POLICY.name}: {ids}"
    for entry in entries:
        assert re.fullmatch(r"CKV2?_(K8S|DOCKER)_\d+", entry["id"]), entry
        assert entry["files"] and len(entry["reason"].split()) >= 15, f"{entry['id']}: name its files and say why"
    for entry in yaml.safe_load(POLICY.read_text())["not_scanned"]:
        assert (ROOT / entry["path"]).is_file(), f"{POLICY.name} names {entry['path']}, which does not exist"
        assert len(entry["reason"].split()) >= 15, f"{entry['path']}: say why and where it is checked instead"


def test_checkov_read_every_pod_manifest_and_dockerfile(checkov_report, rendered_pods):
    """A file checkov could not parse would pass silently: every resource must have been checked."""
    assert set(checkov_report) == {"kubernetes", "dockerfile"}, f"checkov reported {sorted(checkov_report)}"
    for kind, report in checkov_report.items():
        assert report["summary"]["parsing_errors"] == 0, f"checkov could not parse some {kind} files"
    k8s = checkov_report["kubernetes"]["results"]
    resources = {c["resource"] for c in k8s["passed_checks"] + k8s["failed_checks"]}
    for pod in rendered_pods.values():
        assert f"Pod.{pod['metadata']['namespace']}.{pod['metadata']['name']}" in resources
    # checkov has no checks of a Namespace or NetworkPolicy itself; the NetworkPolicy counts in
    # CKV2_K8S_6 on the pods (test_checks_the_probe_reported_now_pass_on_the_train_pod).
    for document in yaml.safe_load_all(MANIFESTS[0].read_text()):
        if document["kind"] in ("Namespace", "NetworkPolicy"):
            continue
        name = f"{document['kind']}.{document['metadata']['namespace']}.{document['metadata']['name']}"
        assert name in resources, f"checkov did not check {name} of {MANIFESTS[0].name}"
    docker = checkov_report["dockerfile"]["results"]
    assert {c["file_path"] for c in docker["passed_checks"]} >= {f"/{p.name}" for p in DOCKERFILES}


def test_pods_manifests_and_dockerfiles_fail_no_applicable_check(checkov_report):
    failed = [c for report in checkov_report.values() for c in failures(report) if not waived(c)]
    assert not failed, "checks that apply and fail (fix them, or list them with a reason in docker/policy/checkov.yaml):\n" + "\n".join(
        f"  {c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}" for c in failed)


def test_every_listed_check_still_fails_somewhere(checkov_report):
    """A listed check that passes everywhere would hide a regression later: drop it from the list."""
    failed = [c for report in checkov_report.values() for c in failures(report)]
    for entry in waivers():
        matched = [c for c in failed if c["check_id"] == entry["id"]
                   and any(fnmatch.fnmatch(c["file_path"].lstrip("/"), p) for p in entry["files"])]
        assert matched, f"{entry['id']} ({entry['name']}) no longer fails in {entry['files']}: remove it from {POLICY.name}"


def test_checks_the_probe_reported_now_pass_on_the_train_pod(checkov_report, rendered_pods):
    """The findings on the 2-GPU train pod: token mount, writable root, sidecar limits, image by
    tag, low uid; each must be evaluated on it and pass."""
    train = rendered_pods["train"]
    assert train["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == TRAIN_GPUS
    resource = f"Pod.{train['metadata']['namespace']}.{train['metadata']['name']}"
    k8s = checkov_report["kubernetes"]["results"]
    passed = {c["check_id"] for c in k8s["passed_checks"] if c["resource"] == resource}
    for check in ("CKV_K8S_38", "CKV_K8S_22", "CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_40",
                  "CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_31", "CKV2_K8S_6"):
        assert check in passed, f"{check} does not pass on the train pod"
