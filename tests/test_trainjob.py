"""The train step as a Kubeflow Trainer TrainJob, without a cluster.

- The manifests ``TrainJobOperator`` creates validate against Kubeflow Trainer's published CRD
  schema (v2.3.0, ``tests/data/kubeflow_trainer/``), with unknown fields refused (the API server
  would prune them silently) and the CRD's two CEL rules on the name checked here.
- Create / wait / reattach / failure / Kueue-timeout / deferral paths run the real operator, the
  provider's real ``KubernetesHook`` and the real ``kubernetes`` / ``kubernetes_asyncio`` clients
  over HTTP. Only the API server is faked (no cluster can exist here): :class:`FakeApiServer`, on
  loopback, keeps TrainJobs and pods in memory, validates every TrainJob it is sent against the
  CRD schema, and plays the job's status conditions as the Trainer controller would write them.
  The task instance and its task state store are plain stand-ins (no DAG run is involved).
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest

SCHEMA_FILE = Path(__file__).parent / "data" / "kubeflow_trainer" / "trainjob-v1alpha1.schema.json.gz"
JOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs"


# --- the CRD schema ------------------------------------------------------------------------------


def _strict(schema):
    """The schema with ``additionalProperties: false`` wherever it lists properties and does not
    keep unknown fields: what the API server would prune becomes an error."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validator():
    schema = json.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))
    schema = _strict(schema)
    # metadata is `type: object` in a CRD (the API server checks ObjectMeta itself): name, namespace, labels
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
    return jsonschema.Draft202012Validator(schema)


def check_trainjob(validator, manifest: dict) -> None:
    """JSON Schema, then the CRD's CEL rules on the name (``x-kubernetes-validations``)."""
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
    name = manifest["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    for label in manifest["metadata"]["labels"].values():  # a label value: 63 characters, [A-Za-z0-9._-]
        assert len(label) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", label), label


def test_schema_copy_is_the_published_crd():
    readme = (SCHEMA_FILE.parent / "README.md").read_text()
    assert "v2.3.0" in readme and "658725bdae5c7e3a0854d93ac6ff492e109a22ab" in readme
    schema = json.loads(gzip.decompress(SCHEMA_FILE.read_bytes()))
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["runtimeRef"]
    assert {"numNodes", "numProcPerNode", "resourcesPerNode", "command", "args", "env", "image"} <= set(
        spec["properties"]["trainer"]["properties"])


def test_manifests_validate_against_the_crd(crd_validator, monkeypatch):
    from llmops_airflow.operators.kubernetes import build_trainjob_operator
    from llmops_airflow.operators.trainjob import trainjob_manifest, trainjob_name

    monkeypatch.setenv("LLMOPS_GPU_PRODUCTS", "NVIDIA-H100-80GB-HBM3")
    monkeypatch.setenv("LLMOPS_TRAINER_IMAGE", "ghcr.io/llmops-airflow/trainer@sha256:" + "0" * 64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.llmops:5000")
    name = trainjob_name("train", "llm_retraining", "scheduled__2026-12-01T00:00:00+00:00", -1, 3)
    assert name.startswith("llmops-train-") and name.endswith("-3") and len(name) <= 63
    task = build_trainjob_operator("train", ["train", "dpo", "--config", "/recipes/dpo.yaml"], nodes=4, gpus=8,
                                   resources={"memory": "512Gi"}, kueue_queue="gpu-team",
                                   active_deadline_seconds=86400, labels={"team": "Search & Ranking!"})
    gpu = task.build_manifest({"ti": FakeTI(try_number=3)}, "ml")  # what the operator sends
    check_trainjob(crd_validator, gpu)
    trainer = gpu["spec"]["trainer"]
    assert trainer["image"].endswith("0" * 64)
    assert trainer["command"] == ["torchrun"] and trainer["args"][:2] == ["--module", "llmops_tasks.cli"]
    assert trainer["args"][2:] == ["train", "dpo", "--config", "/recipes/dpo.yaml"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "8", "memory": "512Gi", "nvidia.com/gpu": "8"}
    assert gpu["spec"]["suspend"] is True and gpu["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.llmops:5000" and env["LLMOPS_RESULT_LOG"]["value"] == "1"
    assert env["LLMOPS_HOME"]["value"] == "/checkpoints/llmops"  # on the shared volume: a new job resumes there
    # the runtime's torch plugin owns the rendezvous: a TrainJob setting PET_* is refused by its webhook
    assert not [n for n in env if n.startswith("PET_")]
    # secrets are optional references, never values
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "llmops-hf", "key": "token", "optional": True}
    assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    pod = gpu["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod["name"] == "node" and pod_spec["containers"][0]["name"] == "node"
    assert {"checkpoints", "hf-cache", "tmp", "home", "dshm"} == {v["name"] for v in pod_spec["volumes"]}
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    expressions = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert expressions[0] == {"key": "nvidia.com/gpu.count", "operator": "Gt", "values": ["7"]}
    assert expressions[1]["values"] == ["NVIDIA-H100-80GB-HBM3"]
    # a CPU job, no queue, and the generic builder with nothing but the essentials
    cpu = build_trainjob_operator("train", ["train", "sft"], nodes=2, gpus=0).build_manifest({"ti": FakeTI()}, "ml")
    check_trainjob(crd_validator, cpu)
    assert "suspend" not in cpu["spec"] and "numProcPerNode" not in cpu["spec"]["trainer"]
    bare = trainjob_manifest("llmops-train-x-1", ["train", "sft"], nodes=2, gpus_per_node=0, image="img",
                             namespace="default")
    check_trainjob(crd_validator, bare)
    assert "runtimePatches" not in bare["spec"] and "resourcesPerNode" not in bare["spec"]["trainer"]


def test_the_schema_check_catches_a_wrong_field(crd_validator):
    from llmops_airflow.operators.kubernetes import build_trainjob_operator

    manifest = build_trainjob_operator("train", ["train", "sft"], nodes=2, gpus=1).build_manifest({"ti": FakeTI()}, "ml")
    wrong = copy.deepcopy(manifest)
    wrong["spec"]["trainer"]["numNode"] = 2  # a typo the API server would drop without a word
    with pytest.raises(AssertionError, match="numNode"):
        check_trainjob(crd_validator, wrong)
    wrong = copy.deepcopy(manifest)
    wrong["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(AssertionError, match="numNodes"):
        check_trainjob(crd_validator, wrong)


# --- the fake API server -------------------------------------------------------------------------


class FakeApiServer:
    """TrainJobs and pods in memory behind the Kubernetes REST paths the operator uses.

    ``script[name]``: the status conditions successive GETs of that job return (the last repeats),
    as the Trainer controller would write them; ``pods`` / ``logs``: what JobSet would have made.
    """

    def __init__(self, validator):
        self.validator = validator
        self.jobs: dict[tuple[str, str], dict] = {}
        self.script: dict[str, list[list[dict]]] = {}
        self.pods: dict[str, list[dict]] = {}  # namespace -> pod objects
        self.logs: dict[str, str] = {}  # pod name -> log
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []  # every TrainJob body accepted
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                raw = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self._send(*server.handle("GET", self.path, None))

            def do_DELETE(self):
                self._send(*server.handle("DELETE", self.path, None))

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self._send(*server.handle("POST", self.path, json.loads(self.rfile.read(length))))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _status(code, reason, message):
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                      "message": message}

    def handle(self, method, raw_path, body):
        url = urlparse(raw_path)
        path, query = url.path, parse_qs(url.query)
        self.requests.append((method, path))
        if m := re.fullmatch(r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?", path):
            namespace, name = m.groups()
            if method == "POST":
                errors = list(self.validator.iter_errors(body))
                if errors:  # what the API server answers a manifest its schema refuses
                    return self._status(422, "Invalid", "; ".join(e.message for e in errors[:3]))
                key = (namespace, body["metadata"]["name"])
                if key in self.jobs:
                    return self._status(409, "AlreadyExists", f"trainjobs {key[1]!r} already exists")
                job = copy.deepcopy(body)
                job["metadata"].setdefault("creationTimestamp", datetime.now(UTC).isoformat())
                self.jobs[key] = job
                self.created.append(copy.deepcopy(body))
                return 201, job
            if name is None:
                selector = query.get("labelSelector", [""])[0]
                wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
                items = [self._play(j) for (ns, _), j in self.jobs.items() if ns == namespace
                         and all(j["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
                return 200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "items": items,
                             "metadata": {}}
            job = self.jobs.get((namespace, name))
            if job is None:
                return self._status(404, "NotFound", f"trainjobs {name!r} not found")
            if method == "DELETE":
                del self.jobs[(namespace, name)]
                return 200, {"kind": "Status", "status": "Success"}
            return 200, self._play(job)
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path):
            return 200, self.logs.get(m.group(2), "")
        if m := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path):
            selector = query.get("labelSelector", [""])[0]
            wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
            items = [p for p in self.pods.get(m.group(1), [])
                     if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
            return 200, {"apiVersion": "v1", "kind": "PodList", "items": items, "metadata": {}}
        return self._status(404, "NotFound", path)

    def _play(self, job):
        steps = self.script.get(job["metadata"]["name"])
        if steps:
            job.setdefault("status", {})["conditions"] = steps.pop(0) if len(steps) > 1 else steps[0]
        return job

    def leader(self, job_name, namespace, log):
        pod = f"{job_name}-node-0-0-abcde"
        self.pods.setdefault(namespace, []).append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod, "namespace": namespace, "creationTimestamp": datetime.now(UTC).isoformat(),
            "labels": {"jobset.sigs.k8s.io/jobset-name": job_name, "batch.kubernetes.io/job-completion-index": "0"}}})
        self.logs[pod] = log

    def posts(self):
        return [p for m, p in self.requests if m == "POST"]


def condition(kind, reason="", message="", status="True"):
    return {"type": kind, "status": status, "reason": reason or kind, "message": message,
            "lastTransitionTime": datetime.now(UTC).isoformat()}


RESULT = {"method": "sft", "model_dir": "/checkpoints/llmops/run/train/model", "global_step": 8,
          "mlflow_run_url": "http://mlflow/#/experiments/1/runs/abc", "gpu_hours": 1.5}


@pytest.fixture(scope="module")
def api(crd_validator):
    server = FakeApiServer(crd_validator)
    yield server
    server.httpd.shutdown()


@pytest.fixture
def kubeconfig(api, tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "ml"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    for state in (api.jobs, api.script, api.pods, api.requests, api.created):
        state.clear()
    monkeypatch.setenv("LLMOPS_TRAINER_IMAGE", "trainer:test")
    monkeypatch.setenv("LLMOPS_K8S_NAMESPACE", "ml")
    monkeypatch.delenv("LLMOPS_KUEUE_QUEUE", raising=False)
    return str(path)


class FakeTI:
    """The task instance's attributes the operator reads, and its XComs."""

    def __init__(self, try_number=1):
        self.dag_id, self.run_id, self.task_id, self.map_index = "llm_retraining", "manual__2026-12-02", "train", -1
        self.try_number = try_number
        self.stats_tags: dict = {}
        self.xcoms: dict = {}

    def xcom_push(self, key, value):
        self.xcoms[key] = value


class FakeTaskStateStore(dict):
    def set(self, key, value):
        self[key] = value


def operator(kubeconfig, **kwargs):
    from llmops_airflow.operators.kubernetes import LLMOpsTrainJobOperator

    settings = {"arguments": ["train", "sft", "--config", "/recipes/sft.yaml"], "nodes": 2, "gpus_per_node": 8,
                "config_file": kubeconfig, "kubernetes_conn_id": None, "deferrable": False, "poll_interval": 0.01,
                **kwargs}
    return LLMOpsTrainJobOperator(task_id="train", **settings)


def result_log(result=RESULT):
    return f"step 8/8\n2026-12-02 07:00:00,000 INFO llmops_tasks.train: llmops-result: {json.dumps(result)}\n"


def test_the_operator_and_the_step_agree_on_the_result_line():
    from llmops_airflow.operators import trainjob
    from llmops_tasks import train

    assert trainjob.RESULT_LOG_PREFIX == train.RESULT_LOG_PREFIX
    assert trainjob.result_from_log(result_log()) == RESULT
    assert trainjob.result_from_log("llmops-result: {not json\n") is None


def test_create_wait_read_the_leader_and_delete(api, kubeconfig):
    task = operator(kubeconfig)
    ti, store = FakeTI(), FakeTaskStateStore()
    from llmops_airflow.operators.trainjob import trainjob_name

    name = trainjob_name("train", ti.dag_id, ti.run_id, -1, 1)
    api.script[name] = [[], [condition("Suspended", "Resumed", status="False")], [condition("Complete", message="done")]]
    api.leader(name, "ml", result_log())
    result = task.execute({"ti": ti, "task_state_store": store})
    assert result == RESULT
    assert api.posts() == ["/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"]
    assert store["llmops_trainjob"] == {"name": name, "namespace": "ml"}  # what a retry reattaches to
    assert ti.xcoms["mlflow_run_url"] == RESULT["mlflow_run_url"]
    assert ("ml", name) not in api.jobs  # delete_succeeded: gone after success
    assert [r for r in api.requests if r[0] == "DELETE"] == [("DELETE", f"{JOBS.format(ns='ml')}/{name}")]
    (sent,) = api.created
    env = {e["name"]: e.get("value") for e in sent["spec"]["trainer"]["env"]}
    assert env["LLMOPS_RESULT_LOG"] == "1" and env["LLMOPS_RUN_ID"] == ti.run_id
    assert sent["metadata"]["labels"]["llmops/task-instance"]


def test_a_retry_reattaches_instead_of_submitting_again(api, kubeconfig):
    from llmops_airflow.operators.trainjob import trainjob_name

    ti = FakeTI(try_number=1)
    name = trainjob_name("train", ti.dag_id, ti.run_id, -1, 1)
    api.script[name] = [[]]  # running for as long as the first try waits
    first = operator(kubeconfig, deferrable=True)
    store = FakeTaskStateStore()
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred):  # the first try defers; say its worker dies here
        first.execute({"ti": ti, "task_state_store": store})
    assert len(api.posts()) == 1
    # try 2 with the task state store (Airflow 3.3): reattached, no second job
    api.script[name] = [[], [condition("Complete")]]
    api.leader(name, "ml", result_log())
    assert operator(kubeconfig).execute({"ti": FakeTI(try_number=2), "task_state_store": store}) == RESULT
    assert len(api.posts()) == 1 and len(api.jobs) == 0
    # without a store: the job is found by its task-instance label
    api.script[name] = [[]]
    with pytest.raises(TaskDeferred):
        operator(kubeconfig, deferrable=True).execute({"ti": FakeTI(try_number=1)})
    api.script[name] = [[], [condition("Complete")]]
    assert operator(kubeconfig).execute({"ti": FakeTI(try_number=2)}) == RESULT
    assert len(api.posts()) == 2  # one per scenario, none for the retries


def test_a_failed_job_fails_the_try_and_the_retry_submits_a_new_one(api, kubeconfig):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from llmops_airflow.operators.trainjob import trainjob_name

    store = FakeTaskStateStore()
    first = trainjob_name("train", "llm_retraining", "manual__2026-12-02", -1, 1)
    api.script[first] = [[], [condition("Failed", "FailedJobs", "jobset failed: node-0 exited 1")]]
    api.leader(first, "ml", "Traceback (most recent call last):\nRuntimeError: NCCL timeout\n")
    with pytest.raises(AirflowException, match=r"(?s)failed \(FailedJobs\): jobset failed.*NCCL timeout") as caught:
        operator(kubeconfig).execute({"ti": FakeTI(1), "task_state_store": store})
    assert not isinstance(caught.value, AirflowFailException)  # retried
    assert ("ml", first) in api.jobs  # kept for kubectl describe
    second = trainjob_name("train", "llm_retraining", "manual__2026-12-02", -1, 2)
    api.script[second] = [[condition("Complete")]]
    api.leader(second, "ml", result_log({**RESULT, "resumed_from": "/checkpoints/.../checkpoint-4"}))
    result = operator(kubeconfig).execute({"ti": FakeTI(2), "task_state_store": store})
    assert result["resumed_from"].endswith("checkpoint-4")  # the new job resumed from the shared volume
    assert api.posts() == [JOBS.format(ns="ml")] * 2
    assert store["llmops_trainjob"]["name"] == second


def test_kueue_never_admitting_fails_with_a_clear_message(api, kubeconfig):
    from airflow.sdk.exceptions import AirflowException

    from llmops_airflow.operators.trainjob import trainjob_name

    name = trainjob_name("train", "llm_retraining", "manual__2026-12-02", -1, 1)
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    api.script[name] = [[{**condition("Suspended", "Suspended", "TrainJob is suspended"),
                          "lastTransitionTime": long_ago}]]
    task = operator(kubeconfig, kueue_queue="gpu-team", schedule_timeout_seconds=60)
    with pytest.raises(AirflowException, match=r"never admitted.*Kueue queue 'gpu-team'.*kubectl get workloads"):
        task.execute({"ti": FakeTI(), "task_state_store": FakeTaskStateStore()})
    (sent,) = api.created  # created suspended, in the queue: Kueue admits it by resuming it
    assert sent["spec"]["suspend"] is True and sent["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team"
    assert ("ml", name) not in api.jobs  # and deleted: out of the queue, a retry queues afresh


def test_deferred_wait_in_the_trigger(api, kubeconfig):
    from airflow.sdk.exceptions import TaskDeferred

    from llmops_airflow.operators.trainjob import trainjob_name
    from llmops_airflow.triggers.trainjob import TrainJobTrigger

    ti = FakeTI()
    name = trainjob_name("train", ti.dag_id, ti.run_id, -1, 1)
    api.script[name] = [[], [], [condition("Complete")]]
    api.leader(name, "ml", result_log())
    task = operator(kubeconfig, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({"ti": ti, "task_state_store": FakeTaskStateStore()})
    trigger = deferred.value.trigger
    assert isinstance(trigger, TrainJobTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    trigger = TrainJobTrigger(**kwargs)  # what the triggerer rebuilds
    assert classpath == "llmops_airflow.triggers.trainjob.TrainJobTrigger"

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "complete" and event["name"] == name
    assert task.execute_complete({"ti": ti}, event) == RESULT
    assert ti.xcoms["mlflow_run_url"] == RESULT["mlflow_run_url"]


def test_train_operator_picks_the_trainjob_beyond_one_node(monkeypatch):
    from llmops_airflow.operators import train_operator

    monkeypatch.setenv("LLMOPS_EXECUTION", "kubernetes")
    monkeypatch.setenv("LLMOPS_TRAIN_NODES", "4")
    task = train_operator("train", ["train", "sft"], gpus=8, retries=2, on_finish_action="keep_pod",
                          get_logs=True, startup_timeout_seconds=900)
    assert type(task).__name__ == "LLMOpsTrainJobOperator" and task.nodes == 4 and task.gpus_per_node == 8
    assert task.on_finish_action == "keep" and task.retries == 2
    monkeypatch.setenv("LLMOPS_TRAIN_NODES", "1")
    assert type(train_operator("train", ["train", "sft"], gpus=8)).__name__ == "LLMOpsPodOperator"
    monkeypatch.setenv("LLMOPS_EXECUTION", "local")
    monkeypatch.setenv("LLMOPS_TRAIN_NODES", "4")
    assert type(train_operator("train", ["train", "sft"], gpus=8)).__name__ == "LocalStepOperator"
    monkeypatch.setenv("LLMOPS_TRAIN_NODES", "two")
    with pytest.raises(ValueError, match="LLMOPS_TRAIN_NODES must be a positive integer"):
        train_operator("train", ["train", "sft"])


# --- GPU-hours and cost (the train step's figures; the card and the approvals page show them) ------


def test_gpu_hours_count_every_node_and_the_price_is_a_deployment_setting(monkeypatch):
    from llmops_tasks import train
    from llmops_tasks.core.config import ConfigError

    monkeypatch.setattr(train, "gpus_per_node", lambda: 8)  # no GPU here: the node's allocation, faked
    monkeypatch.setenv("WORLD_SIZE", "32")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun: 4 nodes of 8 processes
    monkeypatch.delenv(train.CURRENCY_ENV, raising=False)
    usage = train.training_usage(5400.0, price=2.5)
    assert usage == {"gpus": 32, "train_wall_seconds": 5400.0, "gpu_hours": 48.0, "gpu_hour_price": 2.5,
                     "cost": 120.0, "cost_currency": "USD"}
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert train.training_usage(3600.0, price=None) == {"gpus": 8, "train_wall_seconds": 3600.0, "gpu_hours": 8.0}
    monkeypatch.setenv(train.PRICE_ENV, "2,50")
    with pytest.raises(ConfigError, match="LLMOPS_GPU_HOUR_PRICE must be a price per GPU-hour.*'2,50'"):
        train.gpu_hour_price()
    monkeypatch.setenv(train.PRICE_ENV, "-1")
    with pytest.raises(ConfigError, match="LLMOPS_GPU_HOUR_PRICE"):
        train.gpu_hour_price()
    monkeypatch.setenv(train.PRICE_ENV, " 3.1 ")
    assert train.gpu_hour_price() == 3.1


def test_the_cost_on_the_model_card_and_the_approvals_page():
    from types import SimpleNamespace

    from llmops_airflow import approvals_app
    from llmops_tasks.registry import modelcard

    usage = {"gpus": 32, "train_wall_seconds": 5400.0, "gpu_hours": 48.0, "gpu_hour_price": 2.5, "cost": 120.0,
             "cost_currency": "EUR"}
    card = modelcard.render(model_name="m", version="3", train={"method": "sft", "global_step": 8, **usage},
                            metrics={}, decision={}, validation=None, lineage={}, hyperparameters={})
    assert "Compute: 32 GPUs, 1.50 h: 48.00 GPU-hours, cost 120.00 EUR (2.50 per GPU-hour)." in card
    assert "Compute:" not in modelcard.render(model_name="m", version="1", train={"method": "sft"}, metrics={},
                                              decision={}, validation=None, lineage={}, hyperparameters={})
    # a version: cost from its tags where register copied them, else from its train run's metrics
    row = approvals_app._version_row(SimpleNamespace(version="3", tags={"llmops.gpu_hours": "48.0",
                                                                       "llmops.cost": "120.0"}), {})
    assert row["cost"] == {"gpu_hours": "48.0", "cost": "120.0"}

    class Client:
        def get_run(self, run_id):
            assert run_id == "abc"
            return SimpleNamespace(data=SimpleNamespace(metrics={**{k: v for k, v in usage.items() if k != "cost_currency"},
                                                                 "loss": 1.0},
                                                        tags={"llmops.cost_currency": "EUR"}))

    assert approvals_app._train_run_cost(Client(), "abc") == usage
    page = approvals_app.render_page([{"name": "m", "aliases": {}, "versions": [
        {**row, "aliases": [], "flags": [], "cost": usage}]}], [], "someone")
    assert "<th>training cost</th>" in page and "48.00 GPU-hours, cost 120.00 EUR" in page


def test_the_deployment_manifest_agrees_with_the_operator():
    import yaml

    from llmops_airflow.operators.trainjob import DEFAULT_RUNTIME

    root = Path(__file__).resolve().parents[1]
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((root / "docker" / "helm" / "trainjob.yaml").read_text())}
    namespace = yaml.safe_load_all((root / "docker" / "helm" / "training-namespace.yaml").read_text())
    training = next(d for d in namespace if d["kind"] == "Namespace")["metadata"]["name"]
    queue = docs[("LocalQueue", "llmops-gpu")]
    assert queue["metadata"]["namespace"] == training and queue["spec"]["clusterQueue"] in {
        name for kind, name in docs if kind == "ClusterQueue"}
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"])
             for r in docs[("Role", "llmops-trainjob-launcher")]["rules"]}
    assert {"create", "get", "list", "delete"} <= rules[(("trainer.kubeflow.org",), ("trainjobs",))]
    assert {"get"} <= rules[(("",), ("pods/log",))] and {"list"} <= rules[(("",), ("pods",))]
    subjects = {s["name"] for s in docs[("RoleBinding", "llmops-trainjob-launcher")]["subjects"]}
    assert {"llmops-worker", "llmops-triggerer"} <= subjects
    assert f"`{DEFAULT_RUNTIME}`" in (root / "docs" / "DEPLOYMENT.md").read_text()
