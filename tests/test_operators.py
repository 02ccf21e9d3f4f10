"""The step operators: the pod a step becomes in production, and the local subprocess it becomes
in the embedded mode.

What is real and what is not:
- Kubernetes mode: there is no cluster here. The pod is built with the provider's own
  ``build_pod_request_obj(context, dry_run=True)``, which never calls the Kubernetes API; the
  ``kubernetes_default`` connection does not exist, so the hook falls back to an empty one (the
  provider's own behaviour). The task instance in the context is a SimpleNamespace carrying the
  fields the operator reads (dag_id, task_id, run_id, map_index, try_number). The resulting pod is
  validated offline against the Kubernetes OpenAPI schema (kubernetes-validate) and round-tripped
  through the kubernetes client's models. Only ``cleanup``'s calls to the API (deleting and
  patching the pod, reading events) are mocked.
- Local mode: everything is real — a real ``python -m llmops_tasks.cli`` subprocess running the
  real ``split`` step on a tiny file; only the task instance is faked (it records XCom pushes).
"""

from __future__ import annotations

import ast
import datetime
import graphlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from unittest import mock

import pytest
import structlog
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from llmops_airflow.operators import step_operator
from llmops_airflow.operators.local import LocalStepOperator

RUN_ID = "manual__2026-01-01T00:00:00+00:00"  # ':' and '+' are not valid in label values
WORKER_SECRET = "hf_worker_token_must_not_reach_pods"
K8S_VERSIONS = ("1.30", "1.33")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DEPLOYMENT_ENV = (
    "LLMOPS_TRAINER_IMAGE", "AIRFLOW_VAR_LLMOPS_TRAINER_IMAGE", "LLMOPS_K8S_NAMESPACE", "LLMOPS_CHECKPOINTS_PVC",
    "LLMOPS_HF_CACHE_PVC", "LLMOPS_GPU_NODE_SELECTOR", "LLMOPS_GPU_PRODUCTS", "LLMOPS_TRAIN_GPUS",
    "LLMOPS_HF_SECRET", "LLMOPS_MLFLOW_SECRET", "LLMOPS_XCOM_SIDECAR_IMAGE", "AIRFLOW_CONN_KUBERNETES_DEFAULT",
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL", "LLMOPS_ARTIFACT_ROOT",
    "LLMOPS_MODEL_NAME", "LLMOPS_EXPERIMENT",
)


def fake_ti(dag_id: str, task_id: str, run_id: str = RUN_ID) -> types.SimpleNamespace:
    pushed: dict = {}
    return types.SimpleNamespace(
        dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1, try_number=1, pushed=pushed,
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
    )


def context_for(op, dag=None, **extra) -> dict:
    ti = fake_ti(dag.dag_id if dag else "adhoc_dag", op.task_id)
    return {"dag": dag, "task": op, "ti": ti, "run_id": RUN_ID, "params": {}, **extra}


# --------------------------------------------------------------------------------------------
# the factory


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*DEPLOYMENT_ENV, "LLMOPS_EXECUTION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_local_mode_is_the_default_and_drops_pod_only_arguments(clean_env):
    op = step_operator("split", ["split"], gpus=1, resources={"memory": "1Gi"}, node_selector={"a": "b"}, retries=3)
    assert isinstance(op, LocalStepOperator)
    assert op.arguments == ["split"] and op.retries == 3


def test_mode_and_gpus_are_checked(clean_env):
    clean_env.setenv("LLMOPS_EXECUTION", "k8s")
    with pytest.raises(ValueError, match="local, kubernetes"):
        step_operator("split", ["split"])
    clean_env.setenv("LLMOPS_EXECUTION", "local")
    with pytest.raises(ValueError, match="gpus must be 0 or more"):
        step_operator("split", ["split"], gpus=-1)


@pytest.mark.integration  # a subprocess: not a unit test
def test_plugin_and_local_dag_do_not_import_kubernetes_or_fastapi():
    """The Kubernetes provider takes seconds to import, FastAPI a tenth of one; the plugin (loaded
    by every Airflow component) and a DAG parsed in the embedded mode must pay for neither."""
    code = (
        "import sys, datetime\n"
        "import llmops_airflow.plugin\n"
        "from airflow.sdk import DAG\n"
        "from llmops_airflow.operators import step_operator\n"
        "with DAG('d', schedule=None, start_date=datetime.datetime(2026, 1, 1)):\n"
        "    step_operator('train', ['train'], gpus=1)\n"
        "heavy = [m for m in ('kubernetes', 'airflow.providers.cncf.kubernetes.operators.pod', 'fastapi', 'starlette',\n"
        "                     'llmops_airflow.approvals_app', 'llmops_airflow.operators.kubernetes') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_EXECUTION"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# the package: imports point one way


PACKAGE_DIR = Path(__file__).resolve().parents[1] / "plugins" / "llmops_airflow"
# Third-party imports that only one module may make at its top: every other module is imported
# by processes (DAG parse, scheduler, workers) that must not pay for them.
HEAVY_HOMES = {
    "kubernetes": "llmops_airflow.operators.kubernetes",
    "airflow.providers.cncf.kubernetes": "llmops_airflow.operators.kubernetes",
    "fastapi": "llmops_airflow.approvals_app",
    "starlette": "llmops_airflow.approvals_app",
}


def package_modules() -> dict[str, ast.Module]:
    """Dotted name -> parsed source, for every module of llmops_airflow."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("llmops_airflow", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _is_package(name: str) -> bool:
    return (PACKAGE_DIR.joinpath(*name.split(".")[1:]) / "__init__.py").exists()


def imports_in(module: str, tree: ast.AST, *, top_level_only: bool = False):
    """``(imported module, names taken from it, line)`` for each import in ``tree``, relative ones
    resolved. Unless ``top_level_only``: those inside functions too, and string constants that
    name one of our modules (the lazy exports of a package ``__init__``, ``import_module``)."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            yield from ((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base, [alias.name for alias in node.names], node.lineno
        elif (not top_level_only and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and re.fullmatch(r"llmops_airflow(\.\w+)+", node.value)):
            yield node.value, [], node.lineno


def import_graph(*, top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the llmops_airflow modules it imports; static (the source is parsed, not run).

    ``from llmops_airflow import approvals_app`` is an edge to ``approvals_app``, not to the
    package; the package ``__init__`` that Python runs first is checked on its own below."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        targets = set()
        for base, names, _ in imports_in(name, tree, top_level_only=top_level_only):
            submodules = {f"{base}.{n}" for n in names if f"{base}.{n}" in modules}
            targets |= submodules
            if len(submodules) < len(names) or not names:  # names from the module itself
                owners = [m for m in modules if base == m or base.startswith(m + ".")]
                targets |= {max(owners, key=len)} if owners else set()
        graph[name] = targets - {name}
    return graph


def test_llmops_airflow_imports_have_no_cycle():
    """Every import counts, at module level or inside a function: a circle that only lazy imports
    keep from failing is still one module needing the other to make sense."""
    graph = import_graph()
    assert graph["llmops_airflow.operators.kubernetes"] >= {"llmops_airflow.operators.base"}  # the graph is real
    assert graph["llmops_airflow.operators"] == {"llmops_airflow.operators.local", "llmops_airflow.operators.kubernetes"}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in llmops_airflow: {' -> '.join(exc.args[1])}")


def test_llmops_airflow_dependencies_point_one_way():
    graph = import_graph()
    importers = {target: {m for m, targets in graph.items() if target in targets} for target in graph}
    assert importers["llmops_airflow.plugin"] == set(), "only Airflow's plugin manager imports the plugin"
    assert importers["llmops_airflow.approvals_app"] == {"llmops_airflow.plugin"}
    assert importers["llmops_airflow.operators.kubernetes"] <= {"llmops_airflow.operators", "llmops_airflow"}
    assert importers["llmops_airflow.operators.local"] <= {"llmops_airflow.operators", "llmops_airflow"}
    assert graph["llmops_airflow.operators.base"] == {"llmops_airflow.links"}  # shared by both modes, knows neither
    assert graph["llmops_airflow.links"] == set()


def test_package_inits_import_none_of_their_modules_at_import():
    """Importing ``llmops_airflow.operators.local`` runs both package ``__init__``s first: one that
    imported its own modules at its top would close a circle the graph above does not show."""
    for name, targets in import_graph(top_level_only=True).items():
        if _is_package(name):
            assert not {t for t in targets if t.startswith(name + ".")}, f"{name} imports its modules at import"


def test_heavy_libraries_are_imported_at_the_top_of_one_module_only():
    for name, tree in package_modules().items():
        for imported, _, line in imports_in(name, tree, top_level_only=True):
            for library, home in HEAVY_HOMES.items():
                if (imported == library or imported.startswith(library + ".")) and name != home:
                    pytest.fail(f"{name} imports {library} at import (line {line}); only {home} may")


# --------------------------------------------------------------------------------------------
# kubernetes mode: the pod


@pytest.fixture
def k8s_env(clean_env):
    clean_env.setenv("LLMOPS_EXECUTION", "kubernetes")
    clean_env.setenv("LLMOPS_K8S_NAMESPACE", "llmops")
    clean_env.setenv("HF_TOKEN", WORKER_SECRET)  # the worker's own credentials...
    clean_env.setenv("MLFLOW_TRACKING_PASSWORD", WORKER_SECRET)  # ...must never be copied into a pod
    return clean_env


def build_pod(op, dag):
    """Render the templates as the task runner does, then build the pod like ``execute`` does."""
    from kubernetes.client import ApiClient

    context = context_for(op, dag)
    op.render_template_fields(context)
    pod = op.build_pod_request_obj(context, dry_run=True)
    return pod, ApiClient().sanitize_for_serialization(pod)


def make_dag(*steps):
    with DAG("llm_retraining", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        ops = [step_operator(*args, **kwargs) for args, kwargs in steps]
    return dag, ops


@pytest.fixture
def gpu_pod(k8s_env):
    k8s_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.llmops.svc:5000")  # read when the pod is built
    dag, (op,) = make_dag(
        (("train", ["train", "--config", "recipes/dpo.yaml", "--set", "tag={{ run_id }}"]), {"gpus": 2}),
    )
    pod, data = build_pod(op, dag)
    return op, pod, data


def test_gpu_step_is_a_pod_running_the_cli_in_the_trainer_image(gpu_pod):
    op, _, data = gpu_pod
    from llmops_airflow.operators.kubernetes import LLMOpsPodOperator

    assert isinstance(op, LLMOpsPodOperator)
    assert op.do_xcom_push and op.on_finish_action.value == "delete_pod"
    assert op.startup_timeout_seconds > 0 and op.schedule_timeout_seconds > 0
    base, sidecar = data["spec"]["containers"]
    assert base["name"] == "base" and sidecar["name"] == "airflow-xcom-sidecar"
    assert base["image"] == "ghcr.io/llmops-airflow/trainer:0.1.0"  # the package version
    assert base["command"] == ["llmops"]
    assert base["args"] == ["train", "--config", "recipes/dpo.yaml", "--set", f"tag={RUN_ID}"]
    assert data["metadata"]["namespace"] == "llmops"
    assert data["spec"]["restartPolicy"] == "Never"


def test_pod_env_carries_the_run_identity_and_services_but_no_secret_values(gpu_pod):
    _, _, data = gpu_pod
    base = data["spec"]["containers"][0]
    plain = {e["name"]: e["value"] for e in base["env"] if "value" in e}
    assert plain["LLMOPS_DAG_ID"] == "llm_retraining"
    assert plain["LLMOPS_RUN_ID"] == RUN_ID
    assert plain["LLMOPS_TASK_ID"] == "train"
    assert plain["LLMOPS_RESULT_FILE"] == "/airflow/xcom/return.json"
    assert plain["HF_HOME"] == "/cache/huggingface"
    assert plain["HOME"] == "/home/llmops"  # an emptyDir: the root filesystem is read-only
    assert plain["MLFLOW_TRACKING_URI"] == "http://mlflow.llmops.svc:5000"
    # credentials come from Kubernetes Secrets by reference, optional so that a step needing none starts
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in base["env"] if "valueFrom" in e}
    assert refs == {"HF_TOKEN": {"name": "llmops-hf", "key": "token", "optional": True}}
    assert base["envFrom"] == [{"secretRef": {"name": "llmops-mlflow", "optional": True}}]
    assert not any(k in plain for k in ("HF_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"))
    assert WORKER_SECRET not in json.dumps(data)


MLFLOW_CONNECTION = json.dumps({"conn_type": "http", "host": "mlflow.internal", "port": 5000,
                                "login": "trainer", "password": "Conn-secret-7c41"})


def test_pod_reaches_the_mlflow_server_of_the_airflow_connection_without_its_credentials(k8s_env):
    """The Connection (read when the pod is built) wins over the worker's own MLflow address, so
    train and evaluate write to the store register and promote read; its password stays out."""
    k8s_env.setenv("MLFLOW_TRACKING_URI", "sqlite:////worker/own.db")
    k8s_env.setenv("MLFLOW_REGISTRY_URI", "sqlite:////worker/own.db")
    k8s_env.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", MLFLOW_CONNECTION)
    dag, (op,) = make_dag((("train", ["train"]), {"gpus": 1}))
    _, data = build_pod(op, dag)
    plain = {e["name"]: e["value"] for e in data["spec"]["containers"][0]["env"] if "value" in e}
    assert plain["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert "MLFLOW_REGISTRY_URI" not in plain  # the worker's registry belongs to the other store
    assert "Conn-secret-7c41" not in json.dumps(data) and "MLFLOW_TRACKING_USERNAME" not in plain


def test_gpu_pod_requests_gpus_on_gpu_nodes(gpu_pod):
    _, _, data = gpu_pod
    resources = data["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2" and resources["requests"]["nvidia.com/gpu"] == "2"
    assert {"cpu", "memory"} <= resources["requests"].keys() and resources["requests"] == resources["limits"]
    assert data["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert data["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (term,) = data["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["1"]}]  # >= 2 GPUs


def test_gpu_models_can_be_restricted_by_deployment_setting(k8s_env):
    k8s_env.setenv("LLMOPS_GPU_PRODUCTS", "NVIDIA-H100-80GB-HBM3, NVIDIA-A100-SXM4-80GB")
    dag, (op,) = make_dag((("train", ["train", "sft"]), {"gpus": 1}))
    _, data = build_pod(op, dag)
    (term,) = data["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["0"]},
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"]},
    ]
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(data, K8S_VERSIONS[-1], strict=True)


def test_dag_train_task_requests_one_gpu_per_training_process(k8s_env):
    """``LLMOPS_TRAIN_GPUS`` (deployment env, read at parse like the schedule) sizes the train pod
    and becomes the step's ``num_processes``: N GPUs, N processes under accelerate launch."""
    import importlib.util

    k8s_env.setenv("LLMOPS_TRAIN_GPUS", "4")
    spec = importlib.util.spec_from_file_location("llm_retraining_k8s", Path(__file__).parents[1] / "dags" / "llm_retraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.llm_retraining()  # the @dag function builds the DAG again from the module's settings
    op = dag.get_task("train")
    assert op.container_resources.limits["nvidia.com/gpu"] == "4"
    assert "num_processes=4" in op.arguments
    assert dag.get_task("evaluate").container_resources.limits["nvidia.com/gpu"] == "1"


def test_pod_runs_as_non_root_without_privileges(gpu_pod):
    from llmops_airflow.operators.kubernetes import UID

    _, _, data = gpu_pod
    assert UID >= 10000  # no user of the node (checkov CKV_K8S_40)
    pod_ctx = data["spec"]["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] == UID and pod_ctx["fsGroup"] == UID
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert data["spec"]["automountServiceAccountToken"] is False  # steps never call the Kubernetes API
    for container in data["spec"]["containers"]:  # the xcom sidecar too: runAsNonRoot applies to every container
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID
        assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}


def test_xcom_sidecar_has_limits_and_takes_the_deployment_image(k8s_env):
    """The provider's sidecar has requests only; the pod gives it limits and, when the deployment
    names one, its image (a digest); resources from the kubernetes_default connection win."""
    digest = "sha256:" + "5" * 64
    k8s_env.setenv("LLMOPS_XCOM_SIDECAR_IMAGE", f"alpine@{digest}")
    dag, (op,) = make_dag((("evaluate", ["evaluate"]), {"gpus": 1}))
    sidecar = build_pod(op, dag)[1]["spec"]["containers"][1]
    assert sidecar["name"] == "airflow-xcom-sidecar" and sidecar["image"] == f"alpine@{digest}"
    assert sidecar["resources"]["limits"] == {"cpu": "100m", "memory": "64Mi"}
    assert sidecar["resources"]["requests"] == {"cpu": "10m", "memory": "16Mi"}

    k8s_env.delenv("LLMOPS_XCOM_SIDECAR_IMAGE")
    own = {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}}
    k8s_env.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"xcom_sidecar_container_resources": json.dumps(own)}}))
    dag, (op,) = make_dag((("evaluate", ["evaluate"]), {"gpus": 1}))
    sidecar = build_pod(op, dag)[1]["spec"]["containers"][1]
    assert sidecar["resources"] == own
    assert sidecar["image"].startswith("alpine:")  # the provider's default when the deployment names none


def test_trainer_image_by_digest_is_used_as_given(k8s_env):
    image = "registry.local/llmops/trainer@sha256:" + "c" * 64
    k8s_env.setenv("LLMOPS_TRAINER_IMAGE", image)
    dag, (op,) = make_dag((("train", ["train"]), {"gpus": 1}))
    base = build_pod(op, dag)[1]["spec"]["containers"][0]
    assert base["image"] == image and base["imagePullPolicy"] == "IfNotPresent"


def test_pod_labels_name_the_run_and_are_valid(gpu_pod):
    _, _, data = gpu_pod
    labels = data["metadata"]["labels"]
    assert labels["llmops/dag-id"] == "llm_retraining" and labels["llmops/task-id"] == "train"
    assert labels["app.kubernetes.io/component"] == "train"
    assert labels["llmops/run-id"].startswith("manual__2026-01-01T")  # sanitized, with a hash suffix
    assert labels["dag_id"] == "llm_retraining" and labels["task_id"] == "train"  # the provider's own
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_pod_mounts_checkpoints_cache_and_shared_memory(gpu_pod):
    _, _, data = gpu_pod
    volumes = {v["name"]: v for v in data["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "llmops-checkpoints"}
    assert volumes["hf-cache"]["emptyDir"] == {}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["tmp"]["emptyDir"] == {} and volumes["home"]["emptyDir"] == {}
    # The root filesystem is read-only: these are the only places a step can write.
    mounts = {m["name"]: m["mountPath"] for m in data["spec"]["containers"][0]["volumeMounts"]}
    assert mounts == {"xcom": "/airflow/xcom", "checkpoints": "/checkpoints",
                      "hf-cache": "/cache/huggingface", "tmp": "/tmp", "home": "/home/llmops", "dshm": "/dev/shm"}


def test_pod_round_trips_through_the_kubernetes_models(gpu_pod):
    """The serialized pod reads back into the kubernetes client's typed models unchanged (no field
    dropped as unknown, required fields present), and its names and references hold together."""
    from kubernetes.client import ApiClient

    _, _, data = gpu_pod
    again = ApiClient().deserialize(types.SimpleNamespace(data=json.dumps(data)), "V1Pod")
    assert ApiClient().sanitize_for_serialization(again) == data
    names = [c["name"] for c in data["spec"]["containers"]]
    volumes = [v["name"] for v in data["spec"]["volumes"]]
    assert len(set(names)) == len(names) and len(set(volumes)) == len(volumes)
    for container in data["spec"]["containers"]:
        assert {m["name"] for m in container.get("volumeMounts", [])} <= set(volumes)


def test_pod_matches_the_kubernetes_openapi_schema(gpu_pod):
    """Offline: the JSON schemas of two supported Kubernetes versions, strict (no unknown fields)."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) ships the Kubernetes JSON schemas"
    )
    _, _, data = gpu_pod
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(data, version, strict=True)


def test_cpu_pod_gets_no_gpu_and_takes_deployment_settings(k8s_env):
    k8s_env.setenv("LLMOPS_CHECKPOINTS_PVC", "team-a-checkpoints")
    k8s_env.setenv("LLMOPS_HF_CACHE_PVC", "hf-mirror")
    k8s_env.setenv("LLMOPS_ARTIFACT_ROOT", "s3://llmops/artifacts")
    dag, (op,) = make_dag(
        (("evaluate", ["evaluate"]), {"resources": {"memory": "16Gi"}, "env_vars": {"EXTRA": "1"}, "retries": 2}),
    )
    _, data = build_pod(op, dag)
    base = data["spec"]["containers"][0]
    assert base["resources"]["requests"] == {"cpu": "1", "memory": "16Gi"} == base["resources"]["limits"]
    assert "tolerations" not in data["spec"] or not data["spec"]["tolerations"]
    assert not data["spec"].get("nodeSelector")
    volumes = {v["name"]: v for v in data["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "team-a-checkpoints"
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == "hf-mirror"
    assert "dshm" not in volumes
    plain = {e["name"]: e.get("value") for e in base["env"]}
    assert plain["LLMOPS_ARTIFACT_ROOT"] == "s3://llmops/artifacts" and plain["EXTRA"] == "1"
    assert op.retries == 2


def test_secrets_a_dag_asks_for_stay_required(k8s_env):
    from airflow.providers.cncf.kubernetes.secret import Secret

    dag, (op,) = make_dag((("registry", ["registry", "promote"]), {
        "secrets": [Secret("env", "MLFLOW_TRACKING_TOKEN", "prod-mlflow", "token")],
    }))
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in build_pod(op, dag)[1]["spec"]["containers"][0]["env"]
              if "valueFrom" in e]
    assert ref == {"name": "prod-mlflow", "key": "token"}  # not optional: a missing Secret stops the pod early


def test_image_is_resolved_when_the_pod_is_built_not_at_parse(k8s_env):
    dag, (op,) = make_dag((("train", ["train"]), {"gpus": 1}))
    assert op.image is None  # nothing read at parse
    k8s_env.setenv("AIRFLOW_VAR_LLMOPS_TRAINER_IMAGE", "registry.local/trainer:from-variable")
    assert build_pod(op, dag)[1]["spec"]["containers"][0]["image"] == "registry.local/trainer:from-variable"

    dag, (op,) = make_dag((("train", ["train"]), {"gpus": 1}))
    k8s_env.setenv("LLMOPS_TRAINER_IMAGE", "registry.local/trainer:from-env")  # the env wins over the Variable
    assert build_pod(op, dag)[1]["spec"]["containers"][0]["image"] == "registry.local/trainer:from-env"


def test_dag_with_pod_steps_serializes_with_the_mlflow_link(k8s_env):
    from airflow.serialization.serialized_objects import DagSerialization

    dag, _ = make_dag((("train", ["train"]), {"gpus": 1}))
    data = DagSerialization.to_dict(dag)
    (task,) = data["dag"]["tasks"]
    assert task["__var"]["_operator_extra_links"] == {"MLflow run": "_link_MLflowRunLink"}
    assert task["__var"]["_task_module"] == "llmops_airflow.operators.kubernetes"


def _terminated_pod(exit_code: int):
    from kubernetes.client import models as k8s

    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="train-abc", namespace="llmops"),
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[k8s.V1ContainerStatus(
            name="base", image="trainer", image_id="", ready=False, restart_count=0,
            state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code)),
        )]),
    )


SAID_NO = {"error": "gate: bleu 0.1 < 0.2"}


@pytest.mark.parametrize(("exit_code", "result", "error"), [
    (1, SAID_NO, AirflowFailException),  # the step said no
    (1, None, AirflowException),  # an uncaught exception: Python exits 1, no result written
    (2, None, AirflowException),
    (137, None, AirflowException),  # OOM-killed
])
def test_pod_that_says_no_fails_without_retry(k8s_env, exit_code, result, error):
    """Cluster calls in cleanup (read the pod for istio, patch and delete it, read its events) are
    mocked: no cluster here. The exit code is read from the terminated pod's status."""
    from llmops_airflow.operators.kubernetes import LLMOpsPodOperator

    _, (op,) = make_dag((("gate", ["gate"]), {}))
    remote = _terminated_pod(exit_code)
    with mock.patch.multiple(
        LLMOpsPodOperator, process_pod_deletion=mock.DEFAULT, patch_already_checked=mock.DEFAULT,
        _read_pod_container_states=mock.DEFAULT, _read_pod_events=mock.DEFAULT,
        is_istio_enabled=mock.Mock(return_value=False),
    ), pytest.raises(AirflowException) as raised:
        op.cleanup(remote, remote, xcom_result=result)
    assert type(raised.value) is error
    if error is AirflowFailException:
        assert "said no" in str(raised.value) and "bleu 0.1 < 0.2" in str(raised.value)


def test_mlflow_link_reads_the_run_url_the_step_reported(k8s_env):
    from llmops_airflow.links import MLflowRunLink
    from llmops_airflow.operators.base import publish_mlflow_run_url
    from llmops_airflow.plugin import LLMOpsPlugin

    (entry_point,) = [e for e in importlib.metadata.entry_points(group="airflow.plugins") if e.name == "llmops"]
    assert entry_point.load() is LLMOpsPlugin
    op = step_operator("gate", ["gate"])
    link = MLflowRunLink()
    assert LLMOpsPlugin.name == "llmops" and any(isinstance(x, MLflowRunLink) for x in LLMOpsPlugin.operator_extra_links)
    assert link.get_link(op, ti_key=None) == ""
    ti = fake_ti("d", "gate")
    op.mlflow_run_url = publish_mlflow_run_url({"ti": ti}, {"mlflow_run_url": "http://mlflow/#/runs/1"})
    assert link.get_link(op, ti_key=None) == "http://mlflow/#/runs/1"
    assert ti.pushed == {"mlflow_run_url": "http://mlflow/#/runs/1"}


# --------------------------------------------------------------------------------------------
# local mode: a real subprocess


@pytest.fixture
def preference_file(tmp_path):
    def write(rows: int) -> Path:
        path = tmp_path / f"preference_{rows}.jsonl"
        path.write_text("".join(
            json.dumps({"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"}) + "\n"
            for i in range(rows)
        ))
        return path
    return write


@pytest.fixture
def local_env(clean_env, tmp_path):
    clean_env.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    return clean_env


def run_local(op: LocalStepOperator, **context_extra):
    context = context_for(op, **context_extra)
    op.render_template_fields(context)
    with structlog.testing.capture_logs() as logs:
        try:
            return op.execute(context), context["ti"], [entry["event"] for entry in logs], None
        except AirflowException as exc:
            return None, context["ti"], [entry["event"] for entry in logs], exc


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_runs_the_cli_and_returns_its_result(local_env, tmp_path, preference_file):
    dataset = preference_file(40)
    op = step_operator(
        "split", ["split", "--dataset", "{{ params.dataset }}", "--eval-fraction", "0.25"],
        env_vars={"LLMOPS_ARTIFACT_ROOT": str(tmp_path / "artifacts")},
    )
    result, _, log, error = run_local(op, params={"dataset": str(dataset)})
    assert error is None, error
    assert result["train_rows"] + result["eval_rows"] == 40
    # the child got the run identity: outputs land in {artifact_root}/{dag_id}/{run_id}/{step}
    expected_dir = tmp_path / "artifacts" / "adhoc_dag" / "manual__2026-01-01T00_00_00_00_00" / "split"
    assert Path(result["eval"]).parent == expected_dir and Path(result["eval"]).exists()
    assert any(line.startswith("Running ") and "-m llmops_tasks.cli split" in line for line in log)
    assert any('"train_rows"' in line for line in log)  # the child's output reached the task log


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_gets_the_mlflow_settings_of_the_airflow_connection(local_env, tmp_path):
    """The subprocess sees the Connection's server and credentials, as the in-process tasks do;
    the worker's own registry URI (another store) is dropped, not mixed in."""
    local_env.setenv("MLFLOW_TRACKING_URI", "sqlite:////worker/own.db")
    local_env.setenv("MLFLOW_REGISTRY_URI", "sqlite:////worker/own.db")
    local_env.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", MLFLOW_CONNECTION)
    op = LocalStepOperator(task_id="train", arguments=["train", "sft"])
    env = op._child_env(context_for(op), tmp_path / "result.json")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("trainer", "Conn-secret-7c41")
    assert "MLFLOW_REGISTRY_URI" not in env
    local_env.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT")
    assert op._child_env(context_for(op), tmp_path / "result.json")["MLFLOW_TRACKING_URI"] == "sqlite:////worker/own.db"


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_without_result_returns_none(local_env):
    result, _, log, error = run_local(LocalStepOperator(task_id="version", arguments=["--version"]))
    assert error is None and result is None
    assert any(line.startswith("llmops ") for line in log)


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_that_says_no_is_not_retried(local_env, preference_file):
    op = LocalStepOperator(task_id="split", arguments=["split", "--dataset", str(preference_file(1))])
    _, ti, _, error = run_local(op)
    assert type(error) is AirflowFailException
    assert "exit code 1" in str(error) and "both need at least one row" in str(error)
    assert "error" in ti.pushed["return_value"]  # the step's own report of why, as the pod's sidecar keeps it


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_that_crashes_is_retried(local_env, tmp_path, preference_file):
    # Stand-in for a crash inside a real step (a lost connection, CUDA OOM): a sitecustomize on the
    # child's PYTHONPATH makes split.run raise. Python then exits 1 like a "no", but writes no result.
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text(
        "import llmops_tasks.split as split\n"
        "def run(config):\n    raise ConnectionError('artifact store unreachable')\n"
        "split.run = run\n"
    )
    op = LocalStepOperator(task_id="split", arguments=["split", "--dataset", str(preference_file(4))],
                           env_vars={"PYTHONPATH": str(crash)})
    _, ti, _, error = run_local(op)
    assert type(error) is AirflowException
    assert "crashed" in str(error) and "artifact store unreachable" in str(error)
    assert "return_value" not in ti.pushed


@pytest.mark.integration  # a subprocess: not a unit test
def test_local_step_with_bad_configuration_is_a_retryable_failure(local_env, preference_file):
    op = LocalStepOperator(task_id="split", arguments=["split", "--dataset", str(preference_file(4)),
                                                       "--eval-fraction", "2"])
    _, _, _, error = run_local(op)
    assert type(error) is AirflowException
    assert "exit code 2" in str(error) and "eval_fraction" in str(error)


@pytest.mark.integration  # a subprocess: not a unit test
def test_on_kill_stops_the_child_process(local_env, tmp_path):
    # A sitecustomize on the child's PYTHONPATH makes it hang before the CLI starts: a stand-in for a
    # long training run that needs no model.
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text("import time\ntime.sleep(120)\n")
    op = LocalStepOperator(task_id="train", arguments=["--version"], env_vars={"PYTHONPATH": str(hang)},
                           kill_grace_seconds=5)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(zip(("result", "ti", "log", "error"), run_local(op))))
    runner.start()
    deadline = time.monotonic() + 20
    while (op._process is None or op._process.poll() is not None) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = op._process.pid
    started = time.monotonic()
    op.on_kill()
    runner.join(timeout=20)
    assert not runner.is_alive() and time.monotonic() - started < 10
    assert type(outcome["error"]) is AirflowException and "signal 15" in str(outcome["error"])
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
