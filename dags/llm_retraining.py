"""
### Retrain the assistant model on new data, and promote it only when it has earned it

`resolve_inputs -> validate -> eda -> split -> train -> evaluate -> gate -> register (staging)
-> approval -> promote (production)`

Each task runs one `llmops` step (in the worker, as a local subprocess, or in a GPU pod): the same
command, outputs and MLflow step run as on the command line. Invalid data fails the run at
`validate` (report, Data Docs and `quarantine.jsonl` in the task log and its MLflow run); a
candidate that fails its gate ends the run with everything after `gate` skipped and nothing
registered; with `require_approval` on (the default) the run waits in *Required actions* before
`production` moves. Empty Params mean the embedded defaults (sample data set, tiny local model,
the method's packaged recipe). With `eval_dataset_uri` set, evaluate scores that fixed set instead of
the split's held-out prompts, and validate checks it and refuses a data set sharing a prompt with
it (rules `prompt_not_in_against`, `prompt_not_in_against_normalized`). The `model_rollback` DAG
moves `production` back.

What each task does, its Params and outputs: `docs/ARCHITECTURE.md`, section "The pipeline", in
the project (`llmops --help` for the steps' settings).
"""

from __future__ import annotations

import datetime
import os

import pendulum
from airflow.sdk import Param, dag, task

from llmops_airflow.context import bind_run_context
from llmops_airflow.operators import step_operator
from llmops_airflow.steps import run_step

DAG_ID = "llm_retraining"
# Cron for scheduled retraining; set LLMOPS_RETRAIN_SCHEDULE="none" to trigger only by hand.
SCHEDULE = os.environ.get("LLMOPS_RETRAIN_SCHEDULE", "0 3 * * 1")
# method -> the split output it trains on. `reward` alone (a scorer, not a generator) is a CLI
# method only; grpo/rloo train their reward model in the same task unless the reward_model Param names one.
TRAIN_DATA_KEY = {"sft": "train_sft", "dpo": "train_preference", "kto": "train_preference",
                  "orpo": "train_preference", "grpo": "train_preference", "rloo": "train_preference"}
# GPUs of the train pod (deployment env, like the schedule); above 1 training runs under accelerate launch.
TRAIN_GPUS = int(os.environ.get("LLMOPS_TRAIN_GPUS", "1"))
# Who "approved" when the require_approval Param waived the human.
WAIVED_BY = "auto (require_approval=false)"
# Optional text Params: the trigger form treats an empty "string" as missing and blocks the run.
OPTIONAL_TEXT = ["null", "string"]


def _xcom(task_id: str, key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


def _responder(answer: dict) -> str:
    """The name of whoever answered the approval (Airflow stores the user as a dict)."""
    user = answer.get("responded_by_user") or {}
    if isinstance(user, dict):
        return str(user.get("name") or user.get("id") or "airflow user")
    return str(user)


def _comment(answer: dict) -> str:
    """The comment field of the approval form."""
    return str((answer.get("params_input") or {}).get("comment") or "")


def _policy(name: str) -> str:
    """A validation or gate policy shipped in the package (llmops_tasks/policies)."""
    from llmops_tasks.core import settings

    return settings.packaged_policy(name)


@dag(
    dag_id=DAG_ID,
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["llmops", "retraining", "mlflow"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=1)},
    params={
        "dataset_uri": Param("", type=OPTIONAL_TEXT, title="Preference data set",
                             description="JSONL or Parquet URI with prompt/chosen/rejected rows. "
                                         "Empty: the embedded sample data set."),
        "eval_dataset_uri": Param("", type=OPTIONAL_TEXT, title="Held-out eval set",
                                  description="JSONL or Parquet URI of a fixed eval set (prompt, reference; with "
                                              "chosen/rejected also preference accuracy). When set, evaluate scores "
                                              "on it instead of the split's held-out part, and validate fails the run "
                                              "if a training prompt also appears in it (exact or normalized). "
                                              "Empty: evaluate on the split's held-out prompts."),
        "base_model": Param("", type=OPTIONAL_TEXT, title="Base model",
                            description="Hub id or local folder to fine-tune. Empty: the tiny local demo model."),
        "method": Param("sft", type="string", enum=list(TRAIN_DATA_KEY), title="Method",
                        description="sft: supervised fine-tuning on chosen answers; dpo: direct preference optimization; "
                                    "kto: unpaired preferences; orpo: SFT + odds-ratio preference in one stage; "
                                    "grpo / rloo: online RL against a reward model (RLHF)."),
        "reward_model": Param("", type=OPTIONAL_TEXT, title="Reward model (grpo, rloo)",
                              description="Folder or hub id of a trained reward model (llmops train reward). "
                                          "Empty: the train task first trains one from the same preference pairs."),
        "recipe": Param("", type=OPTIONAL_TEXT, title="Recipe",
                        description="YAML training recipe; empty: the packaged tiny recipe of the method."),
        "max_steps": Param(120, type="integer", minimum=1, maximum=1_000_000, title="Training steps"),
        "learning_rate": Param(3e-3, type="number", exclusiveMinimum=0, maximum=1, title="Learning rate"),
        "lora": Param(False, type="boolean", title="LoRA", description="Train a LoRA adapter instead of all weights."),
        "eval_fraction": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                               title="Held-out share",
                               description="Share of prompts held out of training for evaluation (scored only "
                                           "when eval_dataset_uri is empty)."),
        "max_new_tokens": Param(32, type="integer", minimum=1, maximum=4096, title="Max new tokens (eval)"),
        "gate_min_bleu": Param(0.0, type="number", minimum=0, maximum=1, title="Gate: minimum BLEU",
                               description="Lowest BLEU the candidate may score, on a 0-1 scale."),
        "gate_max_regression": Param(0.02, type="number", minimum=0, title="Gate: largest regression allowed",
                                     description="Largest drop vs the production model on any metric (all on a 0-1 scale)."),
        "gate_policy": Param("", type=OPTIONAL_TEXT, title="Gate policy file",
                             description="YAML gate policy (limits, regression, required improvement). Empty: the "
                                         "packaged gate.yaml. The two gate Params above win where they differ "
                                         "from their defaults."),
        "require_approval": Param(True, type="boolean", title="Require human approval",
                                  description="Wait in Required actions for someone to approve before production."),
    },
    render_template_as_native_obj=False,
)
def llm_retraining():
    @task
    def resolve_inputs(params=None) -> dict:
        """Fill in the embedded defaults (sample data, tiny base model) when a Param is empty."""
        bind_run_context()
        from llmops_tasks.core import settings
        from llmops_tasks.local import bootstrap, samples

        dataset = params["dataset_uri"] or str(samples.ensure_sample_data())
        base_model = params["base_model"] or str(bootstrap.ensure_tiny_model())
        recipe = params["recipe"] or settings.packaged_recipe(f"{params['method']}_tiny.yaml")
        # "": no fixed eval set; evaluate uses the split's held-out part.
        eval_dataset = (params.get("eval_dataset_uri") or "").strip()
        return {"dataset": dataset, "base_model": base_model, "recipe": recipe, "eval_dataset": eval_dataset}

    @task(retries=0)
    def validate(inputs: dict) -> dict:
        # A fixed eval set is the `against` set (a training prompt in it is contamination) and is
        # itself validated with validate_eval.yaml.
        return run_step("validate", config_file=_policy("validate_preference.yaml"), overrides={
            "dataset": inputs["dataset"], "kind": "preference", "against": inputs["eval_dataset"],
            "against_policy": "validate_eval.yaml" if inputs["eval_dataset"] else ""})

    @task
    def eda(inputs: dict, validation: dict) -> dict:
        return run_step("eda", overrides={"dataset": inputs["dataset"], "kind": "preference", "previous": "auto"})

    @task
    def split(inputs: dict, validation: dict, params=None) -> dict:
        return run_step("split", overrides={"dataset": inputs["dataset"], "eval_fraction": params["eval_fraction"]})

    inputs = resolve_inputs()
    validation = validate(inputs)
    report = eda(inputs, validation)
    splits = split(inputs, validation)

    train_data = (
        "{{ ti.xcom_pull(task_ids='split')[" + repr(TRAIN_DATA_KEY) + "[params.method]] }}"
    )
    train = step_operator(
        "train",
        [
            "train", "{{ params.method }}",
            "--config", _xcom("resolve_inputs", "recipe"),
            "--base-model", _xcom("resolve_inputs", "base_model"),
            "--train-data", train_data,
            "--set", "trainer.max_steps={{ params.max_steps }}",
            "--set", "trainer.learning_rate={{ params.learning_rate }}",
            "--set", "model.use_peft={{ params.lora }}",
            "--set", "reward_model={{ params.reward_model or '' }}",
            "--set", f"num_processes={TRAIN_GPUS}",
        ],
        gpus=TRAIN_GPUS,
    )
    # The fixed eval set when the Param names one (validate has checked it shares no prompt with
    # the data set), else the split's held-out part.
    eval_data = ("{{ ti.xcom_pull(task_ids='resolve_inputs').get('eval_dataset') "
                 "or ti.xcom_pull(task_ids='split')['eval'] }}")
    evaluate = step_operator(
        "evaluate",
        [
            "evaluate",
            "--candidate-model", _xcom("train", "model_dir"),
            "--champion-model", "production",
            "--base-model", _xcom("resolve_inputs", "base_model"),
            "--eval-data", eval_data,
            "--max-new-tokens", "{{ params.max_new_tokens }}",
            # Preference accuracy / reward margin as DPO implicit rewards against the base model.
            "--reference-model", "base",
        ],
        gpus=1,
    )

    @task.short_circuit(ignore_downstream_trigger_rules=True)
    def gate(metrics: dict, params=None, ti=None) -> bool:
        """Skip everything downstream (no version, no alias move) when the candidate fails.

        A rejection ends the run successful with the downstream tasks skipped, and shows why: the
        log line, XComs ``decision`` and ``report`` (report.html with the decision on top) and the
        gate's MLflow run. A gate that cannot judge (no metrics, bad policy) fails the task instead.
        """
        decision = run_step("gate", rejection_is_result=True, overrides={
            "metrics": metrics["metrics"], "policy": params["gate_policy"] or _policy("gate.yaml"),
            "min_bleu": params["gate_min_bleu"], "max_regression": params["gate_max_regression"]})
        ti.xcom_push(key="decision", value=decision)
        ti.xcom_push(key="report", value=decision.get("report_path", ""))
        return bool(decision["passed"])

    @task
    def register(train_result: dict, metrics: dict, validation: dict, ti=None) -> dict:
        return run_step("registry", action="register", overrides={
            "train_result": train_result["result_file"], "metrics": metrics["metrics"],
            "decision": ti.xcom_pull(task_ids="gate", key="decision")["decision_path"],
            "dataset_hash": validation["dataset_hash"], "validation": validation.get("report", "")})

    @task.branch
    def approval_route(params=None) -> str:
        return "approve" if params["require_approval"] else "auto_approve"

    @task
    def auto_approve(registered: dict) -> dict:
        """The explicit path when approval is waived by Param; recorded on the version."""
        run_step("registry", action="approval", overrides={
            "version": registered["version"], "decision": "approved", "by": WAIVED_BY,
            "comment": "approval waived for this run by the require_approval Param"})
        return {"approved_by": WAIVED_BY, "comment": "approval waived by Param"}

    from airflow.providers.standard.operators.hitl import ApprovalOperator

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ params.method }} candidate to production?",
        body=(
            "Candidate **v{{ ti.xcom_pull(task_ids='register')['version'] }}** of "
            "`{{ ti.xcom_pull(task_ids='register')['model_name'] }}` passed its gate.\n\n"
            "Gate: {{ ti.xcom_pull(task_ids='gate', key='decision')['reason'] }}\n\n"
            "Compared against: {{ ti.xcom_pull(task_ids='evaluate')['champion_label'] }}; "
            "change vs it: {{ ti.xcom_pull(task_ids='evaluate')['delta'] }}\n\n"
            "The version's model card (its description in MLflow) has the metrics with intervals, "
            "the data snapshot and the lineage.\n\n"
            "Approving moves alias `production` to it; the current production version keeps "
            "`previous-production` for rollback. Rejecting leaves production as it is and records "
            "the rejection and your comment on the version."
        ),
        params={"comment": Param("", type=OPTIONAL_TEXT, title="Comment",
                                 description="Why: recorded on the model version and in its audit log.")},
        # A plain timedelta: the worker sends it to its supervisor over msgpack, which rejects
        # pendulum's Duration (the run would fail on parking in Required actions).
        response_timeout=datetime.timedelta(days=3),
        retries=0,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def promote(registered: dict, metrics: dict, ti=None) -> dict:
        answer = ti.xcom_pull(task_ids="approve") or {}
        auto = ti.xcom_pull(task_ids="auto_approve") or {}
        approved_by = auto.get("approved_by") or _responder(answer)
        comment = auto.get("comment") or _comment(answer)
        if answer:
            run_step("registry", action="approval", overrides={
                "version": registered["version"], "decision": "approved", "by": approved_by, "comment": comment})
        return run_step("registry", action="promote", overrides={
            "version": registered["version"], "expected_production": metrics.get("champion_version") or "none",
            "approved_by": approved_by, "comment": comment})

    # none_failed, not all_done: as the only leaf it decides the run state, so a failed validate or
    # promote upstream must leave it upstream_failed (run failed), not skipped (run success).
    @task(trigger_rule="none_failed", retries=2)
    def record_rejection(registered: dict, ti=None) -> dict:
        """A human Reject skips ``promote``; this records it on the version and in its audit log."""
        from airflow.sdk.exceptions import AirflowSkipException

        answer = ti.xcom_pull(task_ids="approve") or {}
        if "Reject" not in (answer.get("chosen_options") or []):
            raise AirflowSkipException("no rejection to record")
        return run_step("registry", action="approval", overrides={
            "version": registered["version"], "decision": "rejected", "by": _responder(answer),
            "comment": _comment(answer)})

    splits >> train >> evaluate
    report >> train
    passed = gate(evaluate.output)
    registered = register(train.output, evaluate.output, validation)
    passed >> registered
    route = approval_route()
    waived = auto_approve(registered)
    registered >> route >> [approve, waived]
    promoted = promote(registered, evaluate.output)
    [approve, waived] >> promoted >> record_rejection(registered)


llm_retraining()
