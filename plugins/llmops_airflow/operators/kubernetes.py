"""A pipeline step as a KubernetesPodOperator: the trainer image, GPUs, volumes, secrets.

Imported only when ``LLMOPS_EXECUTION=kubernetes`` (the Kubernetes provider costs seconds to
import, which every DAG parse would pay otherwise). Things that may differ between the
machine that parses the DAG and the one that runs it — the image, the MLflow server, the artifact
store — are read when the pod is built, i.e. at run time.

Deployment settings, all optional (environment of the Airflow components):

=============================  ==============================================================
``LLMOPS_TRAINER_IMAGE``       trainer image (else Variable ``llmops_trainer_image``, else
                               ``ghcr.io/llmops-airflow/trainer:<package version>``); run time.
                               Production sets a digest, ``repo@sha256:<digest>``: a tag can be
                               pushed again, a digest names one build
``LLMOPS_XCOM_SIDECAR_IMAGE``  image of the provider's XCom sidecar (else the
                               ``kubernetes_default`` connection's ``xcom_sidecar_container_image``,
                               else the provider's ``alpine`` tag); a digest here too
``LLMOPS_K8S_NAMESPACE``       namespace (else the ``kubernetes_default`` connection's, else
                               the worker's in-cluster namespace, else ``default``)
``LLMOPS_CHECKPOINTS_PVC``     PVC mounted at ``/checkpoints`` (default ``llmops-checkpoints``);
                               ReadWriteMany when steps can run at the same time
``LLMOPS_HF_CACHE_PVC``        PVC for the Hugging Face cache at ``/cache/huggingface``
                               (default: an emptyDir, i.e. downloads per pod)
``LLMOPS_GPU_NODE_SELECTOR``   ``key=value[,key=value]`` for GPU pods
                               (default ``nvidia.com/gpu.present=true``, set by NVIDIA GFD)
``LLMOPS_GPU_PRODUCTS``        GPU models a GPU pod may run on, comma-separated values of the
                               GFD label ``nvidia.com/gpu.product`` (default: any); GPU pods
                               also require ``nvidia.com/gpu.count`` >= the GPUs they ask for
``LLMOPS_HF_SECRET``           Secret with key ``token`` -> ``HF_TOKEN`` (default ``llmops-hf``)
``LLMOPS_MLFLOW_SECRET``       Secret whose keys become env vars, e.g.
                               ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``,
                               ``AWS_ACCESS_KEY_ID`` (default ``llmops-mlflow``)
=============================  ==============================================================

Both Secrets are optional references: a pod starts without them (a tiny local model needs no
token) and the step fails with the service's own error when it does need them.

The pods pass checkov's Kubernetes policies (``tests/test_k8s_policy.py``; the checks that do not
apply to batch pods, with the reasons, are in ``docker/policy/checkov.yaml``): uid >= 10000, no
privilege escalation, no capabilities, RuntimeDefault seccomp, a read-only root filesystem with
writable volumes where steps write (``/tmp``, the home directory, the Hugging Face cache,
``/checkpoints``, the XCom folder, ``/dev/shm``), no service-account token (steps never call the
Kubernetes API), and CPU/memory limits on every container, the XCom sidecar's included (its
``kubernetes_default`` connection setting ``xcom_sidecar_container_resources`` wins when given).

The MLflow server's address is the Airflow Connection ``mlflow_default``'s where it exists (the
one the in-process tasks use), else the worker's ``MLFLOW_TRACKING_URI``; only the address goes
into the pod spec.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from llmops_airflow.operators.base import StepOperatorMixin, said_no, step_failure
from llmops_airflow.operators.trainjob import NODE, TrainJobOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

IMAGE_VARIABLE = "llmops_trainer_image"
DEFAULT_IMAGE_REPO = "ghcr.io/llmops-airflow/trainer"
RESULT_FILE = "/airflow/xcom/return.json"  # the KPO xcom sidecar reads this path
CHECKPOINTS_MOUNT = "/checkpoints"
HF_HOME = "/cache/huggingface"
# The trainer image's user (docker/Dockerfile.trainer); >= 10000 so that it is no user of the node.
UID = 10001
HOME = "/home/llmops"  # the user's home in the image: caches of CUDA, Triton, matplotlib go here
# The root filesystem is read-only: these emptyDirs are where steps and their libraries may write.
SCRATCH_MOUNTS = {"tmp": "/tmp", "home": HOME}
SIDECAR_IMAGE_ENV = "LLMOPS_XCOM_SIDECAR_IMAGE"
# The sidecar sleeps until the worker reads the result file (an exec of `cat`) and stops it.
XCOM_SIDECAR_RESOURCES = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "100m", "memory": "64Mi"},
}

# Worker settings a pod needs to reach the same services and storage; never credentials.
PASS_THROUGH_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "LLMOPS_ARTIFACT_ROOT",
    "LLMOPS_MODEL_NAME",
    "LLMOPS_EXPERIMENT",
    "LLMOPS_GPU_HOUR_PRICE",  # the train step's cost figures
    "LLMOPS_COST_CURRENCY",
)
DEFAULT_RESOURCES = {
    "cpu": {"cpu": "1", "memory": "4Gi"},
    "gpu": {"cpu": "8", "memory": "32Gi"},
}


def trainer_image() -> str:
    """The trainer image: env ``LLMOPS_TRAINER_IMAGE``, Variable ``llmops_trainer_image``, default."""
    image = os.environ.get("LLMOPS_TRAINER_IMAGE")
    if not image:
        from airflow.sdk import Variable

        image = Variable.get(IMAGE_VARIABLE, default=None)
    if not image:
        from llmops_tasks import __version__

        image = f"{DEFAULT_IMAGE_REPO}:{__version__.replace('+', '-')}"
    return image


def default_secret_names() -> tuple[str, str]:
    """The Kubernetes Secrets for the Hugging Face token and the MLflow credentials."""
    return os.environ.get("LLMOPS_HF_SECRET", "llmops-hf"), os.environ.get("LLMOPS_MLFLOW_SECRET", "llmops-mlflow")


def _node_selector(text: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if any(not sep or not key.strip() for key, sep, _ in pairs):
        raise ValueError(f"LLMOPS_GPU_NODE_SELECTOR must look like 'key=value[,key=value]', got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def gpu_node_affinity(gpus: int) -> k8s.V1Affinity:
    """Nodes with at least ``gpus`` GPUs (of the allowed models): a multi-GPU pod never lands on a
    node that could only ever satisfy part of its request."""
    expressions = [k8s.V1NodeSelectorRequirement(key="nvidia.com/gpu.count", operator="Gt", values=[str(gpus - 1)])]
    products = [p.strip() for p in os.environ.get("LLMOPS_GPU_PRODUCTS", "").split(",") if p.strip()]
    if products:
        expressions.append(k8s.V1NodeSelectorRequirement(key="nvidia.com/gpu.product", operator="In", values=products))
    return k8s.V1Affinity(node_affinity=k8s.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
            node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=expressions)]
        )
    ))


def _container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _harden_xcom_sidecar(pod: k8s.V1Pod) -> None:
    """The provider's sidecar with the deployment's image (a digest) and with limits, unless the
    ``kubernetes_default`` connection gave it resources of its own."""
    sidecar = next((c for c in pod.spec.containers if c.name == PodDefaults.SIDECAR_CONTAINER_NAME), None)
    if sidecar is None:
        return
    image = os.environ.get(SIDECAR_IMAGE_ENV, "").strip()
    if image:
        sidecar.image = image
    limits = (sidecar.resources.limits if isinstance(sidecar.resources, k8s.V1ResourceRequirements)
              else (sidecar.resources or {}).get("limits"))
    if not limits:
        sidecar.resources = k8s.V1ResourceRequirements(
            requests=dict(XCOM_SIDECAR_RESOURCES["requests"]), limits=dict(XCOM_SIDECAR_RESOURCES["limits"])
        )


def base_container_exit_code(remote_pod: k8s.V1Pod | None, container: str) -> int | None:
    """Exit code of ``container`` if it has terminated, else None."""
    statuses = (remote_pod.status.container_statuses if remote_pod and remote_pod.status else None) or []
    status = next((s for s in statuses if s.name == container), None)
    terminated = status.state.terminated if status and status.state else None
    return terminated.exit_code if terminated else None


def _connection_addresses() -> dict[str, str | None]:
    """The MLflow server of the Airflow Connection ``mlflow_default`` (over the worker's own
    setting), as the in-process tasks see it; its credentials stay out of the pod spec, which the
    pod gets from the MLflow Secret instead."""
    from llmops_airflow.mlflow_connection import REGISTRY_URI, TRACKING_URI, connection_env

    values = connection_env()
    return {name: values[name] for name in (TRACKING_URI, REGISTRY_URI) if name in values}


class LLMOpsPodOperator(StepOperatorMixin, KubernetesPodOperator):
    """KubernetesPodOperator for ``llmops <step>``: resolves the image and the services' addresses
    when the pod is built, keeps Secret references optional, sanitizes rendered labels, and turns
    exit code 1 with a result ("the step said no") into a failure that is not retried."""

    def execute(self, context: Context) -> Any:
        return self.step_succeeded(context, super().execute(context))

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:  # deferrable mode
        return self.step_succeeded(context, super().trigger_reentry(context, event))

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        if not self.image:
            self.image = trainer_image()
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        container = next(c for c in pod.spec.containers if c.name == self.base_container_name)
        container.env = container.env or []
        present = {e.name for e in container.env}
        settings = {name: os.environ.get(name) for name in PASS_THROUGH_ENV}
        settings.update(_connection_addresses())
        container.env.extend(
            k8s.V1EnvVar(name=name, value=value) for name, value in settings.items() if value and name not in present
        )
        optional = set(default_secret_names())  # ours may be absent; a Secret a DAG asked for may not
        for env in container.env:
            if env.value_from and env.value_from.secret_key_ref and env.value_from.secret_key_ref.name in optional:
                env.value_from.secret_key_ref.optional = True
        for source in container.env_from or []:
            if source.secret_ref and source.secret_ref.name in optional:
                source.secret_ref.optional = True
        _harden_xcom_sidecar(pod)
        pod.metadata.labels = {k: make_safe_label_value(str(v)) for k, v in (pod.metadata.labels or {}).items()}
        return pod

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, xcom_result: dict | None = None,
                context: Context | None = None) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            # exit 1 with a result: the step said no. Any other failure keeps the provider's message.
            exit_code = base_container_exit_code(remote_pod, self.base_container_name)
            if said_no(exit_code, xcom_result):
                reason = xcom_result.get("error")
                raise step_failure(f"llmops step in pod {pod.metadata.name}", exit_code, xcom_result,
                                   f": {reason}" if reason else "") from exc
            raise


# --- beyond one node: the same conventions for the nodes of a TrainJob -------------------------

# MLflow credentials the nodes may need, each an optional key of the MLflow Secret (a TrainJob's
# trainer container takes env entries only, no envFrom).
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def trainjob_pod_spec(gpus_per_node: int) -> dict[str, Any]:
    """The trainer pods' patch of a TrainJob: the pod's volumes, security context and GPU
    scheduling, as :func:`build_pod_operator` gives a pod (the same k8s objects, serialized)."""
    from kubernetes.client import ApiClient

    gpu = gpus_per_node > 0
    volumes, mounts = _volumes(gpu)
    spec: dict[str, Any] = {
        "securityContext": _pod_security_context(),
        "volumes": volumes,
        "containers": [{"name": NODE, "volumeMounts": mounts, "securityContext": _container_security_context()}],
    }
    if gpu:
        spec["nodeSelector"] = _node_selector(os.environ.get("LLMOPS_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true"))
        spec["tolerations"] = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
        spec["affinity"] = gpu_node_affinity(gpus_per_node)
    return ApiClient().sanitize_for_serialization(spec)


def trainjob_secret_env() -> list[dict[str, Any]]:
    """Secret references only, each optional (a tiny local model needs no token)."""
    hf_secret, mlflow_secret = default_secret_names()
    refs = [("HF_TOKEN", hf_secret, "token"), *((key, mlflow_secret, key) for key in MLFLOW_SECRET_KEYS)]
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for name, secret, key in refs]


class LLMOpsTrainJobOperator(TrainJobOperator):
    """:class:`~llmops_airflow.operators.trainjob.TrainJobOperator` with this deployment's trainer
    pods: image resolved at run time, the pod's volumes, security context and GPU scheduling, the
    services' addresses and the Secrets as references."""

    def resolve_image(self) -> str:
        return self.image or trainer_image()

    def node_env(self, context: Context) -> dict[str, str]:
        env = {**super().node_env(context), "LLMOPS_HOME": f"{CHECKPOINTS_MOUNT}/llmops", "HF_HOME": HF_HOME,
               "HOME": HOME}
        settings = {name: os.environ.get(name) for name in PASS_THROUGH_ENV}
        settings.update(_connection_addresses())
        env.update({k: v for k, v in settings.items() if v})
        return env

    def env_references(self) -> list[dict[str, Any]]:
        return trainjob_secret_env()

    def pod_spec_patch(self) -> dict[str, Any]:
        return trainjob_pod_spec(self.gpus_per_node)

    def default_node_resources(self) -> dict[str, str]:
        return dict(DEFAULT_RESOURCES["gpu" if self.gpus_per_node else "cpu"])


def build_trainjob_operator(
    task_id: str,
    arguments: Sequence[str],
    *,
    nodes: int,
    gpus: int = 1,
    resources: Mapping[str, str | int] | None = None,
    **kwargs: Any,
) -> LLMOpsTrainJobOperator:
    """``llmops <arguments>`` on ``nodes`` nodes of ``gpus`` GPUs each, as a TrainJob; ``kwargs``
    are BaseOperator and TrainJobOperator arguments (the pod path's ``on_finish_action`` words
    ``delete_pod`` / ``delete_succeeded_pod`` / ``keep_pod`` are understood)."""
    action = kwargs.get("on_finish_action")
    if isinstance(action, str) and action.endswith("_pod"):
        kwargs["on_finish_action"] = action.removesuffix("_pod")
    return LLMOpsTrainJobOperator(task_id=task_id, arguments=arguments, nodes=nodes, gpus_per_node=gpus,
                                  node_resources=resources, **kwargs)


def _pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        fs_group=UID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _volumes(gpu: bool) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    hf_cache_pvc = os.environ.get("LLMOPS_HF_CACHE_PVC")
    volumes = [
        k8s.V1Volume(
            name="checkpoints",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=os.environ.get("LLMOPS_CHECKPOINTS_PVC", "llmops-checkpoints")
            ),
        ),
        k8s.V1Volume(
            name="hf-cache",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=hf_cache_pvc)
            if hf_cache_pvc
            else None,
            empty_dir=None if hf_cache_pvc else k8s.V1EmptyDirVolumeSource(),
        ),
        *(k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource()) for name in SCRATCH_MOUNTS),
    ]
    mounts = [
        k8s.V1VolumeMount(name="checkpoints", mount_path=CHECKPOINTS_MOUNT),
        k8s.V1VolumeMount(name="hf-cache", mount_path=HF_HOME),
        *(k8s.V1VolumeMount(name=name, mount_path=path) for name, path in SCRATCH_MOUNTS.items()),
    ]
    if gpu:  # PyTorch data loaders and NCCL need more shared memory than the container default
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return volumes, mounts


def build_pod_operator(
    task_id: str,
    arguments: Sequence[str],
    *,
    gpus: int = 0,
    resources: Mapping[str, str | int] | None = None,
    nodes: int = 1,
    **kwargs: Any,
) -> LLMOpsPodOperator | LLMOpsTrainJobOperator:
    """``llmops <arguments>`` in the trainer image; see :func:`llmops_airflow.operators.step_operator`.

    Dict-valued ``env_vars``, ``labels`` and ``node_selector`` passed in ``kwargs`` are merged over
    the defaults; any other KubernetesPodOperator argument replaces its default. ``nodes > 1``: a
    TrainJob of that many nodes of ``gpus`` GPUs instead (:func:`build_trainjob_operator`).
    """
    if nodes > 1:
        return build_trainjob_operator(task_id, arguments, nodes=nodes, gpus=gpus, resources=resources, **kwargs)
    gpu = gpus > 0
    quantities = {**DEFAULT_RESOURCES["gpu" if gpu else "cpu"], **{k: str(v) for k, v in (resources or {}).items()}}
    if gpu:
        quantities["nvidia.com/gpu"] = str(gpus)
    step = arguments[0] if arguments and isinstance(arguments[0], str) and "{" not in arguments[0] else "step"

    volumes, mounts = _volumes(gpu)

    env_vars = {
        "LLMOPS_DAG_ID": "{{ dag.dag_id }}",
        "LLMOPS_RUN_ID": "{{ run_id }}",
        "LLMOPS_TASK_ID": "{{ task.task_id }}",
        "LLMOPS_RESULT_FILE": RESULT_FILE,
        "LLMOPS_HOME": f"{CHECKPOINTS_MOUNT}/llmops",
        "HF_HOME": HF_HOME,
        "HOME": HOME,  # writable (an emptyDir), whichever user an image has
        "PYTHONUNBUFFERED": "1",
        **dict(kwargs.pop("env_vars", None) or {}),
    }
    labels = {
        "app.kubernetes.io/name": "llmops",
        "app.kubernetes.io/component": step,
        "app.kubernetes.io/managed-by": "airflow",
        "llmops/dag-id": "{{ dag.dag_id }}",
        "llmops/run-id": "{{ run_id }}",
        "llmops/task-id": "{{ task.task_id }}",
        **dict(kwargs.pop("labels", None) or {}),
    }
    node_selector = {
        **(_node_selector(os.environ.get("LLMOPS_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true")) if gpu else {}),
        **dict(kwargs.pop("node_selector", None) or {}),
    }
    hf_secret, mlflow_secret = default_secret_names()
    defaults: dict[str, Any] = {
        "namespace": os.environ.get("LLMOPS_K8S_NAMESPACE") or None,
        "image_pull_policy": "IfNotPresent",  # with a digest, a pull would fetch the same bytes
        "automount_service_account_token": False,  # steps never call the Kubernetes API
        "container_resources": k8s.V1ResourceRequirements(requests=dict(quantities), limits=dict(quantities)),
        "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else [],
        "affinity": gpu_node_affinity(gpus) if gpu else None,
        "volumes": volumes,
        "volume_mounts": mounts,
        "secrets": [Secret("env", "HF_TOKEN", hf_secret, "token"), Secret("env", None, mlflow_secret)],
        "security_context": _pod_security_context(),
        "container_security_context": _container_security_context(),
        "xcom_sidecar_container_security_context": _container_security_context(),
        "startup_timeout_seconds": 900 if gpu else 300,  # CUDA images are large to pull
        "schedule_timeout_seconds": 1800 if gpu else 600,  # GPU nodes may have to be scaled up
        "termination_message_policy": "FallbackToLogsOnError",
        "log_events_on_failure": True,
        "on_finish_action": "delete_pod",
        "do_xcom_push": True,  # the step's result JSON becomes the task's return value
    }
    return LLMOpsPodOperator(
        task_id=task_id,
        cmds=["llmops"],
        arguments=list(arguments) if isinstance(arguments, (list, tuple)) else arguments,
        env_vars=env_vars,
        labels=labels,
        node_selector=node_selector,
        **{**defaults, **kwargs},
    )
