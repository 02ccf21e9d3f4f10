"""The whole llm_retraining DAG with real Airflow (``dag.test()``), real GX, TRL, evaluate, MLflow.

Nothing is mocked: heavy steps run as local subprocesses of ``llmops``, exactly as the embedded
mode runs them (only the Kubernetes path is left to the pod-spec tests, since no cluster exists
here). Each DAG run executes in a fresh interpreter because Airflow reads its configuration at
import; the MLflow store is a SQLite file in a temp folder shared by the runs of this module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks.core import data
from llmops_tasks.core.settings import safe_segment
from llmops_tasks.local import samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNNER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from llmops_tasks.local.embedded import dags_folder
bag = DagBag(dag_folder=str(dags_folder()))
assert not bag.import_errors, bag.import_errors
dag = bag.dags["llm_retraining"]
dag_run = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
print("RESULT " + json.dumps({"state": str(dag_run.state), "run_id": dag_run.run_id, "tasks": states}))
"""


def make_pipeline_env(store: Path, model_name: str) -> dict:
    """The environment of DAG runs sharing one MLflow store (SQLite) and artifact root in ``store``."""
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "LLMOPS_MLFLOW_ARTIFACTS": str(store / "mlartifacts"),
        "LLMOPS_ARTIFACT_ROOT": str(store / "artifacts"),
        "LLMOPS_MODEL_NAME": model_name,
        # This test deployment lets a run waive the human approval (require_approval=false), as the
        # demo does; tests/test_registry.py and the services test cover a deployment that does not.
        "LLMOPS_ALLOW_APPROVAL_WAIVER": "true",
        "LLMOPS_ALLOW_GATE_OVERRIDE": "false",
    })
    migrate = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env,
                             capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory):
    return make_pipeline_env(tmp_path_factory.mktemp("pipeline"), "itest-chat")


@pytest.fixture(scope="module")
def methods_env(tmp_path_factory):
    """A store of its own: these runs must not add versions to the one the other tests inspect."""
    return make_pipeline_env(tmp_path_factory.mktemp("methods"), "itest-methods")


def run_dag(env: dict, conf: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(conf)], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"dag.test() did not finish (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["log"] = proc.stdout + proc.stderr
    return result


def step_file(env: dict, result: dict, step: str, name: str) -> dict:
    """A JSON report from the DAG run's folder, ``{artifact_root}/llm_retraining/{run}/{step}/{name}``."""
    path = Path(env["LLMOPS_ARTIFACT_ROOT"]) / "llm_retraining" / safe_segment(result["run_id"]) / step / name
    return json.loads(path.read_text(encoding="utf-8"))


def registry_state(env: dict) -> tuple[dict, object]:
    from llmops_tasks import registry
    from llmops_tasks.core import tracking
    from llmops_tasks.core.settings import temporary_env

    keys = ("MLFLOW_TRACKING_URI", "LLMOPS_MODEL_NAME", "LLMOPS_MLFLOW_ARTIFACTS")
    with temporary_env({k: env[k] for k in keys}):
        client = tracking.client()
        return registry.alias_versions(env["LLMOPS_MODEL_NAME"], client), client


@pytest.fixture(scope="module")
def first_run(pipeline_env):
    return run_dag(pipeline_env, {"require_approval": False, "max_steps": 120})


def test_first_run_promotes_to_production(first_run, pipeline_env):
    assert first_run["state"] == "success", first_run["log"][-5000:]
    tasks = first_run["tasks"]
    assert tasks["approve"] == "skipped" and tasks["waive_approval"] == "success"
    assert tasks["promote"] == "success" and tasks["candidate_rejected"] == "skipped"
    assert tasks["close_mlflow_run"] == "success"
    aliases, client = registry_state(pipeline_env)
    assert aliases["production"] == aliases["staging"] == "1"
    version = client.get_model_version("itest-chat", "1")
    tags = version.tags
    assert tags["llmops.dag_run_id"] == first_run["run_id"]
    assert tags["llmops.dag_id"] == "llm_retraining"
    assert tags["llmops.gate_passed"] == "true"
    assert float(tags["metric.bleu"]) > 0.1  # trained on the help-desk answers, scored against them
    assert len(tags["llmops.dataset_hash"]) == 64
    # the waiver is recorded as one, on the version, its model card and in the audit log
    assert tags["llmops.approval"] == "waived" and "require_approval=false" in tags["llmops.approval_by"]
    assert tags["llmops.gate_policy_standard"] == "true" and json.loads(tags["llmops.gate_overrides"]) == {}
    assert tags["llmops.exceptions"].startswith("approval waived by auto (require_approval=false)")
    assert "approval waived" in version.description and "## Governance" in version.description
    from llmops_tasks import registry
    from llmops_tasks.core.settings import temporary_env

    with temporary_env({"MLFLOW_TRACKING_URI": pipeline_env["MLFLOW_TRACKING_URI"]}):
        events = registry.audit_events("itest-chat", client)
    assert [e["action"] for e in events] == ["staged", "waived", "promoted"]
    assert events[1]["exceptions"] == [tags["llmops.exceptions"]]
    # the DAG run's MLflow parent run ends with the run's outcome
    parent = _pipeline_run(client, first_run["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["llmops.outcome"] == "promoted"
    # the first snapshot in this store: nothing to compare the EDA with, and the run goes on
    assert "change" not in step_file(pipeline_env, first_run, "eda", "eda.json")
    assert "no comparison with a previous snapshot" in first_run["log"]


def test_regressing_candidate_is_stopped_at_the_gate(first_run, pipeline_env):
    """Five training steps cannot match production v1: the gate rejects, nothing is registered, and
    the run is red in the grid through the task named for it (the gate itself judged: green)."""
    assert first_run["state"] == "success"
    result = run_dag(pipeline_env, {"require_approval": False, "max_steps": 5})
    assert result["state"] == "failed", result["log"][-5000:]
    tasks = result["tasks"]
    assert tasks["gate"] == "success" and tasks["candidate_rejected"] == "failed", (tasks, result["log"][-6000:])
    for task_id in ("register", "approval_route", "approve", "waive_approval", "promote"):
        assert tasks[task_id] == "skipped", (task_id, tasks)
    # one line per rule in the task log, the failed ones first
    assert re.search(r"gate REJECTED: nothing is registered against production v1\n\s+FAIL max_regression", result["log"])
    _, client = registry_state(pipeline_env)
    parent = _pipeline_run(client, result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["llmops.outcome"] == "rejected by the gate"
    aliases, client = registry_state(pipeline_env)
    assert aliases["production"] == "1"
    assert [str(v.version) for v in client.search_model_versions("name = 'itest-chat'")] == ["1"]
    assert "REJECTED" in result["log"] and "max_regression" in result["log"]
    # the second snapshot's EDA says what changed since the first run's (found through MLflow)
    before = step_file(pipeline_env, first_run, "eda", "eda.json")
    report = step_file(pipeline_env, result, "eda", "eda.json")
    change = report["change"]
    assert change["previous_dataset_hash"] == before["dataset_hash"]
    rows = next(f for f in change["figures"] if f["figure"] == "rows")
    assert (rows["previous"], rows["current"], rows["change"]) == (before["rows"], report["rows"], 0)
    assert re.search(r"comparing with the previous snapshot: eda run \w+ of DAG run "
                     + re.escape(first_run["run_id"]), result["log"]), result["log"][-5000:]


def test_invalid_and_contaminated_data_fail_at_validation(first_run, pipeline_env, tmp_path):
    """Identical pairs, prompts of the fixed eval set (eval_dataset_uri) in the training data, and an
    eval set too small to gate on.

    One run for both (a dag.test() costs about a minute): each rule is checked on its own rows.
    """
    rows = samples.preference_rows()[:40]
    for row in rows[:3]:
        row["rejected"] = row["chosen"]  # identical pairs teach nothing and must be refused
    bad = tmp_path / "bad.jsonl"
    data.write_jsonl(str(bad), rows)
    # rows[5]'s prompt verbatim, rows[6]'s up to case, spacing and punctuation, and one unrelated
    held_out = tmp_path / "eval.jsonl"
    data.write_jsonl(str(held_out), [
        {"prompt": rows[5]["prompt"], "reference": "ask the service desk"},
        {"prompt": "  " + rows[6]["prompt"].upper().rstrip("?") + " !!", "reference": "ask the service desk"},
        {"prompt": "What is the capital of France?", "reference": "Paris"},
    ])
    result = run_dag(pipeline_env, {"require_approval": False, "dataset_uri": str(bad),
                                    "eval_dataset_uri": str(held_out)})
    assert result["state"] == "failed"
    tasks = result["tasks"]
    assert tasks["validate"] == "failed"
    assert all(tasks[t] in ("upstream_failed", "skipped", "None")
               for t in ("eda", "split", "train", "evaluate", "register"))
    assert "chosen_differs_from_rejected" in result["log"]
    assert "prompt_not_in_against (1 row: " in result["log"]
    assert "prompt_not_in_against_normalized (1 row: " in result["log"]
    report = step_file(pipeline_env, result, "validate", "validation.json")
    assert report["against"] == {"dataset": str(held_out), "rows": 3}
    rules = {r["rule"]: r for r in report["rules"]}
    for rule, row in (("prompt_not_in_against", rows[5]), ("prompt_not_in_against_normalized", rows[6])):
        assert rules[rule]["success"] is False and rules[rule]["severity"] == "block", rules[rule]
        assert rules[rule]["sample_ids"] == [row["id"]]
        assert rule in report["failed_rules"]
    # the fixed eval set itself is checked before any training: three prompts are too few to gate on
    eval_report = step_file(pipeline_env, result, "validate", "eval_set/validation.json")
    assert eval_report["dataset"] == str(held_out) and eval_report["failed_rules"] == ["row_count"]
    assert f"{held_out}: " in result["log"] and "row_count" in result["log"]
    aliases, _ = registry_state(pipeline_env)
    assert aliases["production"] == "1"


@pytest.mark.parametrize("method", ["kto", "grpo"])
def test_other_methods_train_through_the_dag(methods_env, method):
    """The trigger form's Method Param picks the trainer; the run goes on through evaluate and the gate.

    sft is the default the first tests here run, dpo trains in the fixed-eval-set run below; kto
    (unpaired rows from the preference split) and grpo (its reward model first, in the same task)
    here. orpo and rloo take the same DAG path (method -> packaged recipe -> the preference split)
    and train through the CLI in tests/test_training_methods.py; a DAG run each (~75 s on 2 cores)
    would prove no more wiring. Few steps: the point is the wiring, not the model's quality.
    """
    result = run_dag(methods_env, {"require_approval": False, "method": method, "max_steps": 4})
    assert_trained_through_the_dag(methods_env, result, method, 4)


def assert_trained_through_the_dag(env: dict, result: dict, method: str, steps: int) -> None:
    """The run trained ``method`` for ``steps`` (its packaged recipe, split output and MLflow run) and
    went on through evaluate and the gate."""
    assert result["state"] == "success", result["log"][-5000:]
    tasks = result["tasks"]
    assert tasks["train"] == tasks["evaluate"] == tasks["gate"] == "success", tasks
    trained = step_file(env, result, "train", "result.json")
    assert trained["method"] == method and trained["global_step"] == steps
    assert trained["train_data"].endswith("train_preference.jsonl")
    assert Path(trained["model_dir"], "config.json").is_file()
    if method in ("grpo", "rloo"):
        assert Path(trained["reward_model"], "config.json").is_file()
        assert trained["reward_result"]["global_step"] == 40  # reward_max_steps of the packaged recipe
    _, client = registry_state(env)
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["method"] == method and run.data.params["method"] == method
    assert run.data.tags["llmops.dag_run_id"] == result["run_id"]
    metrics = step_file(env, result, "evaluate", "metrics.json")
    assert {"bleu", "rougeL", "preference_accuracy"} <= set(metrics["candidate"])
    decision = step_file(env, result, "gate", "decision.json")
    assert decision["passed"] in (True, False) and decision["rules"]


def test_a_fixed_eval_set_is_validated_and_scored(methods_env, tmp_path):
    """With eval_dataset_uri, validate checks that set too (before training) and evaluate scores it
    instead of the split's held-out part; a data set that shares no prompt with it goes through.
    The run trains with method dpo: the one dag.test() that covers dpo's wiring too, and it does
    what a team does: picks the packaged 1B LoRA DPO recipe in the form and sets only the base
    model (the tiny one) and the steps. Every other training setting is the recipe's."""
    rows = samples.preference_rows()
    dataset, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    data.write_jsonl(str(dataset), rows[24:])
    data.write_jsonl(str(held_out), [{"prompt": r["prompt"], "reference": r["chosen"], "chosen": r["chosen"],
                                      "rejected": r["rejected"]} for r in rows[:24]])
    from llmops_tasks.local import bootstrap

    result = run_dag(methods_env, {"require_approval": False, "dataset_uri": str(dataset),
                                   "eval_dataset_uri": str(held_out), "method": "dpo", "max_steps": 2,
                                   "recipe": "dpo_llama_lora.yaml",
                                   "base_model": str(bootstrap.ensure_tiny_model())})
    assert_trained_through_the_dag(methods_env, result, "dpo", 2)
    trained = step_file(methods_env, result, "train", "result.json")
    _, client = registry_state(methods_env)
    params = client.get_run(trained["mlflow_run_id"]).data.params
    assert (params["learning_rate"], params["use_peft"], params["lora_r"]) == ("5e-06", "True", "16")
    assert (params["max_steps"], params["base_model"]) == ("2", str(bootstrap.ensure_tiny_model()))
    assert trained["adapter_dir"]
    assert "resolved settings (defaults < recipe < flags):" in result["log"] and "  learning_rate: 5e-06" in result["log"]
    eval_report = step_file(methods_env, result, "validate", "eval_set/validation.json")
    assert eval_report["valid"] is True and eval_report["rows"] == 24
    assert step_file(methods_env, result, "validate", "validation.json")["against"] == {"dataset": str(held_out),
                                                                                       "rows": 24}
    metrics = step_file(methods_env, result, "evaluate", "metrics.json")
    assert metrics["eval_data"] == str(held_out) and metrics["n"] == 24


def _pipeline_run(client, dag_run_id: str):
    """The MLflow parent run of DAG run ``dag_run_id``."""
    from llmops_tasks.core import settings, tracking

    experiment = client.get_experiment_by_name(settings.experiment_name())
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{tracking.TAG_ROLE}` = 'pipeline' and "
                                            f"tags.`{tracking.TAG_RUN_ID}` = '{dag_run_id}'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


def _step_run(client, step: str, dag_run_id: str | None):
    """The one MLflow run of ``step`` from DAG run ``dag_run_id`` (None: from the shell, no DAG run)."""
    from llmops_tasks.core import settings, tracking

    experiment = client.get_experiment_by_name(settings.experiment_name())
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{tracking.TAG_STEP}` = '{step}'")
    found = [r for r in runs if r.data.tags.get(tracking.TAG_RUN_ID) == dag_run_id]
    assert len(found) == 1, (step, dag_run_id, [r.data.tags for r in runs])
    return found[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """The run's artifact files; a Data Docs validation page is named by its run's time: <time>."""
    files = set()
    for item in client.list_artifacts(run_id, path):
        files |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return {re.sub(r"/validations/(.+?)/\d{8}T\d{6}\.\d+Z/", r"/validations/\1/<time>/", f) for f in files}


def _recorded(client, run, path_params: tuple[str, ...]) -> dict:
    """What a step run holds, its run-folder paths left out (they differ by design)."""
    params = dict(run.data.params)
    return {"status": run.info.status, "param_keys": sorted(params),
            "params": {k: v for k, v in params.items() if k not in path_params},
            "metrics": dict(run.data.metrics), "artifacts": sorted(_artifacts(client, run.info.run_id))}


def test_the_shell_commands_record_what_the_dag_tasks_record(first_run, pipeline_env):
    """``llmops validate|eda|split|gate`` typed in a shell (no DAG run) write the same outputs and the
    same MLflow step runs (params, metrics, artifacts) as the DAG's tasks: the tasks only wire."""
    from llmops_tasks.core import settings

    assert first_run["state"] == "success", first_run["log"][-5000:]
    env = {k: v for k, v in pipeline_env.items() if k not in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID")}
    dag_dir = Path(env["LLMOPS_ARTIFACT_ROOT"]) / "llm_retraining" / safe_segment(first_run["run_id"])
    shell_dir = Path(env["LLMOPS_ARTIFACT_ROOT"]) / "adhoc" / "latest"
    dataset = step_file(pipeline_env, first_run, "validate", "validation.json")["dataset"]
    llmops = str(Path(sys.executable).with_name("llmops"))
    commands = {
        "validate": ["validate", "--config", settings.packaged_policy("validate_preference.yaml"),
                     "--dataset", dataset, "--kind", "preference"],
        "eda": ["eda", "--dataset", dataset, "--kind", "preference", "--previous", "auto"],
        "split": ["split", "--dataset", dataset, "--eval-fraction", "0.2"],
        "gate": ["gate", "--metrics", str(dag_dir / "evaluate" / "metrics.json"),
                 "--policy", settings.packaged_policy("gate.yaml"), "--min-bleu", "0.0", "--max-regression", "0.02"],
    }
    for step, args in commands.items():
        proc = subprocess.run([llmops, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (step, proc.stderr[-3000:])

    # the same files, with the same contents but for the paths of their own run folder
    assert {p.name for p in (dag_dir / "validate").iterdir()} == {p.name for p in (shell_dir / "validate").iterdir()}
    paths = ("report", "quarantine", "data_docs")
    dag_validation, shell_validation = (json.loads((d / "validate" / "validation.json").read_text())
                                        for d in (dag_dir, shell_dir))
    assert {k: v for k, v in dag_validation.items() if k not in paths} == \
        {k: v for k, v in shell_validation.items() if k not in paths}
    for name in ("eda.json", "eda.html"):
        assert (dag_dir / "eda" / name).read_text() == (shell_dir / "eda" / name).read_text(), name
    for name in ("train_preference.jsonl", "train_sft.jsonl", "eval.jsonl"):
        assert (dag_dir / "split" / name).read_bytes() == (shell_dir / "split" / name).read_bytes(), name
    dag_decision, shell_decision = (json.loads((d / "gate" / "decision.json").read_text())
                                    for d in (dag_dir, shell_dir))
    outputs = ("decision_path", "report_path")
    assert {k: v for k, v in dag_decision.items() if k not in outputs} == \
        {k: v for k, v in shell_decision.items() if k not in outputs}
    assert dag_decision["passed"] is True

    _, client = registry_state(pipeline_env)
    path_params = {"validate": (), "eda": ("report_json",), "split": ("out_dir",), "gate": ()}
    for step, ignored in path_params.items():
        dag_run = _recorded(client, _step_run(client, step, first_run["run_id"]), ignored)
        shell_run = _recorded(client, _step_run(client, step, None), ignored)
        assert dag_run == shell_run, step
        assert dag_run["artifacts"] or step == "split", step  # reports are logged; split logs sizes only
