"""
### Retrain the assistant model on new data, and promote it only when it has earned it

`resolve_inputs -> validate -> eda -> split -> train -> evaluate -> gate -> register (staging)
-> approve -> promote (production)`, then `close_mlflow_run` (always).

Runs on its cron (`LLMOPS_RETRAIN_SCHEDULE`) or on new data, whichever comes first: a curated
preference snapshot from `feedback_curation` (asset `llmops_preference_data`; the run trains on
that snapshot unless `dataset_uri` is set) or a retrain request from `llm_monitoring` (asset
`llmops_retrain_request`). A run no snapshot started (the cron, a retrain request, a manual run
with `dataset_uri` empty) trains on the newest curated snapshot in
`{artifact_root}/datasets/preference`, and on the embedded sample set only while there is none.
`resolve_inputs` logs what started the run and which data it trains on, and the registered version
records it (tag `llmops.trigger`, with the snapshot's hash and feedback rows in its lineage).

Each task runs one `llmops` step (in the worker, as a local subprocess, or in a GPU pod): the same
command, outputs and MLflow step run as on the command line. Invalid data fails the run at
`validate` (report, Data Docs and `quarantine.jsonl` in the task log and its MLflow run). A
candidate that fails its gate is not registered: task `candidate_rejected` fails and with it the
run (red in the grid; its log lists each rule), while `gate` itself stays green (it judged). The
run then waits in *Required actions* (`approve`) until someone approves or rejects; the answer is
recorded on the version either way, and a rejection is final. Skipping the human
(`require_approval` off) or a gate policy other than the deployment's works only where the
deployment allows it (`LLMOPS_ALLOW_APPROVAL_WAIVER`, `LLMOPS_ALLOW_GATE_OVERRIDE`), and is then
shown on the version, its model card and the approvals page. A form field left empty means the
recipe decides (training: the `recipe` Param's file, else the method's packaged tiny recipe;
evaluation: `eval_recipe`; validation: `validation_policy`); a value set in the form wins; with
neither, the embedded defaults (sample data set, tiny local model). With `eval_dataset_uri` set, evaluate scores that fixed set instead of
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
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task, teardown

from llmops_airflow.assets import PREFERENCE_DATA, RETRAIN_REQUEST, run_trigger
from llmops_airflow.context import bind_run_context
from llmops_airflow.operators import step_operator, train_operator
from llmops_airflow.steps import close_pipeline_run, run_step

DAG_ID = "llm_retraining"
# Cron for scheduled retraining; set LLMOPS_RETRAIN_SCHEDULE="none" for no cron.
SCHEDULE = os.environ.get("LLMOPS_RETRAIN_SCHEDULE", "0 3 * * 1")
# Also retrain on each new curated snapshot and each monitoring retrain request (set "false" to not).
ON_ASSETS = os.environ.get("LLMOPS_RETRAIN_ON_ASSETS", "true").strip().lower() not in ("false", "0", "no", "off")
# method -> the split output it trains on. `reward` alone (a scorer, not a generator) is a CLI
# method only; grpo/rloo train their reward model in the same task unless the reward_model Param names one.
TRAIN_DATA_KEY = {"sft": "train_sft", "dpo": "train_preference", "kto": "train_preference",
                  "orpo": "train_preference", "grpo": "train_preference", "rloo": "train_preference"}
# GPUs of the train pod (deployment env, like the schedule); above 1 training runs under accelerate launch.
TRAIN_GPUS = int(os.environ.get("LLMOPS_TRAIN_GPUS", "1"))
# Who "approved" when the require_approval Param waived the human (where the deployment allows it).
WAIVED_BY = "auto (require_approval=false)"
# Optional text Params: the trigger form treats an empty "string" as missing and blocks the run.
OPTIONAL_TEXT = ["null", "string"]


def _xcom(task_id: str, key: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


def _gate_policy() -> str:
    """The deployment's standard gate policy ($LLMOPS_GATE_POLICY, else the packaged gate.yaml)."""
    from llmops_tasks.core import settings

    return settings.gate_policy()


def _schedule():
    """New data or the cron, whichever comes first.

    The assets: a curated preference snapshot (``feedback_curation``) or a retrain request
    (``llm_monitoring``'s policy); ``LLMOPS_RETRAIN_ON_ASSETS=false`` leaves only the cron. The
    cron is a trigger timetable with no start date: unpausing the DAG (the UI ticks "unpause"
    when someone triggers it) waits for the next cron time instead of creating a run for the
    latest past one ahead of the user's own run.
    """
    cron = None if SCHEDULE.lower() == "none" else CronTriggerTimetable(SCHEDULE, timezone="UTC", run_immediately=False)
    if not ON_ASSETS:
        return cron
    assets = PREFERENCE_DATA | RETRAIN_REQUEST
    return assets if cron is None else AssetOrTimeSchedule(timetable=cron, assets=assets)


@dag(
    dag_id=DAG_ID,
    schedule=_schedule(),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["llmops", "retraining", "mlflow"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=1)},
    params={
        "dataset_uri": Param("", type=OPTIONAL_TEXT, title="Preference data set",
                             description="JSONL or Parquet URI with prompt/chosen/rejected rows. Empty: the "
                                         "curated snapshot whose asset event started this run, else the "
                                         "newest curated snapshot, else the embedded sample data set."),
        "eval_dataset_uri": Param("", type=OPTIONAL_TEXT, title="Held-out eval set",
                                  description="JSONL or Parquet URI of a fixed eval set (prompt, reference; with "
                                              "chosen/rejected also preference accuracy). When set, evaluate scores "
                                              "on it instead of the split's held-out part, and validate fails the run "
                                              "if a training prompt also appears in it (exact or normalized). "
                                              "Empty: evaluate on the split's held-out prompts."),
        "base_model": Param("", type=OPTIONAL_TEXT, title="Base model",
                            description="Hub id or local folder to fine-tune. Empty: the recipe's base_model, "
                                        "else the tiny local demo model."),
        "method": Param("sft", type="string", enum=list(TRAIN_DATA_KEY), title="Method",
                        description="sft: supervised fine-tuning on chosen answers; dpo: direct preference optimization; "
                                    "kto: unpaired preferences; orpo: SFT + odds-ratio preference in one stage; "
                                    "grpo / rloo: online RL against a reward model (RLHF)."),
        "reward_model": Param("", type=OPTIONAL_TEXT, title="Reward model (grpo, rloo)",
                              description="Folder or hub id of a trained reward model (llmops train reward). "
                                          "Empty: the recipe's reward_model, else the train task first trains one "
                                          "from the same preference pairs."),
        "recipe": Param("", type=OPTIONAL_TEXT, title="Training recipe",
                        description="YAML training recipe (a path, or the name of a packaged one such as "
                                    "dpo_llama_lora.yaml); it decides every training setting the fields below "
                                    "leave empty. Empty: the packaged tiny recipe of the method "
                                    "(<method>_tiny.yaml)."),
        "max_steps": Param(None, type=["null", "integer"], minimum=1, maximum=1_000_000, title="Training steps",
                           description="Optimizer steps (trainer.max_steps). Empty: the recipe decides "
                                       "(the tiny recipes: 120)."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1, title="Learning rate",
                               description="Peak learning rate (trainer.learning_rate). Empty: the recipe decides "
                                           "(tiny recipes: 3e-3, for a random 1M-parameter model only; the 1B LoRA "
                                           "recipes: 5e-6 to 2e-4)."),
        "lora": Param("recipe", type="string", enum=["recipe", "on", "off"], title="LoRA",
                      values_display={"recipe": "as the recipe says", "on": "train a LoRA adapter",
                                      "off": "train all weights"},
                      description="Train a LoRA adapter instead of all weights (model.use_peft). Default: the "
                                  "recipe decides (tiny recipes: off; *_lora recipes: on)."),
        "eval_fraction": Param(0.2, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                               title="Held-out share",
                               description="Share of prompts held out of training for evaluation (scored only "
                                           "when eval_dataset_uri is empty)."),
        "eval_recipe": Param("", type=OPTIONAL_TEXT, title="Evaluation recipe",
                             description="YAML evaluation recipe (generation length, batch size, bootstrap "
                                         "samples, tokenization). Empty: the packaged evaluate_tiny.yaml."),
        "max_new_tokens": Param(None, type=["null", "integer"], minimum=1, maximum=4096, title="Max new tokens (eval)",
                                description="Longest answer generated per eval prompt. Empty: the evaluation "
                                            "recipe decides (evaluate_tiny.yaml: 32)."),
        "validation_policy": Param("", type=OPTIONAL_TEXT, title="Validation policy",
                                   description="YAML validation policy for the data set (rules, severities, "
                                               "limits). Empty: the packaged validate_preference.yaml."),
        "gate_min_bleu": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Gate: minimum BLEU",
                               description="Lowest BLEU the candidate may score, on a 0-1 scale. Empty: the gate "
                                           "policy decides. A value that differs from the deployment's policy makes "
                                           "the gate non-standard (allowed only where LLMOPS_ALLOW_GATE_OVERRIDE is "
                                           "set)."),
        "gate_max_regression": Param(None, type=["null", "number"], minimum=0,
                                     title="Gate: largest regression allowed",
                                     description="Largest drop vs the production model on any metric (0-1 scale). "
                                                 "Empty: the gate policy decides. Non-standard like the field above."),
        "gate_policy": Param("", type=OPTIONAL_TEXT, title="Gate policy file",
                             description="YAML gate policy (limits, regression, required improvement). Empty: the "
                                         "deployment's standard policy ($LLMOPS_GATE_POLICY, else the packaged "
                                         "gate.yaml). A policy with other thresholds is non-standard: refused unless "
                                         "the deployment sets LLMOPS_ALLOW_GATE_OVERRIDE=true, then shown on the "
                                         "version. The two gate fields above win over the file."),
        "require_approval": Param(True, type="boolean", title="Require human approval",
                                  description="Wait in Required actions for someone to approve before production. "
                                              "Off waives the human only where the deployment sets "
                                              "LLMOPS_ALLOW_APPROVAL_WAIVER=true (the run fails otherwise); the "
                                              "waiver is shown on the version, its model card and the approvals "
                                              "page."),
    },
    render_template_as_native_obj=False,
)
def llm_retraining():
    @task(retries=0)  # a missing recipe or policy does not appear on a retry
    def resolve_inputs(params=None, **context) -> dict:
        """Decide each input once, by one rule: a form field set wins, else the recipe, else the
        embedded default (sample data, tiny base model). The data set: the form's, else the
        snapshot of the asset event that started the run, else the newest snapshot, else the sample. The training settings
        the form sets go to the train step as ``--set-json``, and nothing else: what the form
        leaves empty stays the recipe's."""
        import logging

        bind_run_context()
        trigger = run_trigger(context)
        logger = logging.getLogger(__name__)
        logger.info("run started by %s", trigger["summary"])
        dataset = (params["dataset_uri"] or "").strip()
        from llmops_tasks.curation import store

        snapshot, chosen = store.training_snapshot(trigger["snapshot"])
        if dataset and snapshot:
            logger.info("dataset_uri %s wins over %s (%s)", dataset, chosen, snapshot.get("uri"))
        elif snapshot:
            logger.info("training on %s: %s", chosen, snapshot.get("uri"))
            if not trigger["snapshot"]:
                trigger["summary"] += f"; data: {chosen}"
        from llmops_tasks.core import settings
        from llmops_tasks.core.config import load_yaml
        from llmops_tasks.local import bootstrap, samples

        recipe = settings.config_file(params["recipe"] or f"{params['method']}_tiny.yaml")
        recipe_values = load_yaml(recipe)
        base_model = (params["base_model"] or "").strip() or recipe_values.get("base_model") or str(
            bootstrap.ensure_tiny_model())
        train_settings: dict = {"base_model": base_model}
        trainer = {name: params[name] for name in ("max_steps", "learning_rate") if params.get(name) is not None}
        if trainer:
            train_settings["trainer"] = trainer
        if params.get("lora") in ("on", "off"):
            train_settings["model"] = {"use_peft": params["lora"] == "on"}
        if (params.get("reward_model") or "").strip():
            train_settings["reward_model"] = params["reward_model"].strip()
        eval_settings = {"max_new_tokens": params["max_new_tokens"]} if params.get("max_new_tokens") else {}
        from_snapshot = not dataset and bool(snapshot.get("uri"))
        return {
            "dataset": dataset or snapshot.get("uri") or str(samples.ensure_sample_data()),
            "trigger": trigger["summary"],
            # The snapshot's manifest (lineage: its hash, how many rows came from feedback), when
            # the data set is that snapshot.
            "snapshot_manifest": str(snapshot.get("manifest") or "") if from_snapshot else "",
            "base_model": base_model,
            "recipe": recipe,
            "train_settings": train_settings,
            "eval_recipe": settings.config_file(params.get("eval_recipe") or "evaluate_tiny.yaml"),
            "eval_settings": eval_settings,
            "validation_policy": settings.config_file(params.get("validation_policy") or "validate_preference.yaml"),
            # "": no fixed eval set; evaluate uses the split's held-out part.
            "eval_dataset": (params.get("eval_dataset_uri") or "").strip(),
        }

    @task(retries=0)
    def validate(inputs: dict) -> dict:
        # A fixed eval set is the `against` set (a training prompt in it is contamination) and is
        # itself validated with validate_eval.yaml.
        return run_step("validate", config_file=inputs["validation_policy"], overrides={
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
    # One node: a pod (or a local subprocess); LLMOPS_TRAIN_NODES > 1: a Kubeflow Trainer TrainJob.
    train = train_operator(
        "train",
        [
            "train", "{{ params.method }}",
            "--config", _xcom("resolve_inputs", "recipe"),
            # Only what the form set (and the resolved base model): the recipe keeps the rest.
            "--set-json", "{{ ti.xcom_pull(task_ids='resolve_inputs')['train_settings'] | tojson }}",
            "--train-data", train_data,
            # The deployment's GPUs per pod decide the processes (the pod requests that many).
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
            "--config", _xcom("resolve_inputs", "eval_recipe"),
            "--set-json", "{{ ti.xcom_pull(task_ids='resolve_inputs')['eval_settings'] | tojson }}",
            "--candidate-model", _xcom("train", "model_dir"),
            "--champion-model", "production",
            "--base-model", _xcom("resolve_inputs", "base_model"),
            "--eval-data", eval_data,
            # Preference accuracy / reward margin as DPO implicit rewards against the base model.
            "--reference-model", "base",
        ],
        gpus=1,
    )

    @task.branch
    def gate(metrics: dict, params=None, ti=None) -> str:
        """Judge the candidate; on to ``register`` when it passes, to ``candidate_rejected`` when not.

        A gate that cannot judge (no metrics, bad policy) fails this task instead. The decision is
        in XComs ``decision`` and ``report`` (report.html with the decision on top) and the gate's
        MLflow run.
        """
        overrides = {"metrics": metrics["metrics"], "policy": params["gate_policy"] or _gate_policy()}
        for name, param in (("min_bleu", "gate_min_bleu"), ("max_regression", "gate_max_regression")):
            if params.get(param) is not None:  # empty: the policy decides
                overrides[name] = params[param]
        decision = run_step("gate", rejection_is_result=True, overrides=overrides)
        ti.xcom_push(key="decision", value=decision)
        ti.xcom_push(key="report", value=decision.get("report_path", ""))
        return "register" if decision["passed"] else "candidate_rejected"

    @task(retries=0)
    def candidate_rejected(ti=None) -> None:
        """Fail the run on purpose: the candidate did not earn a version (nothing was registered)."""
        from airflow.sdk.exceptions import AirflowFailException

        from llmops_tasks.gate import explain

        decision = ti.xcom_pull(task_ids="gate", key="decision") or {}
        raise AirflowFailException("\n".join([*explain(decision), f"report: {decision.get('report_path', '')}"]))

    @task
    def register(train_result: dict, metrics: dict, validation: dict, inputs: dict, ti=None) -> dict:
        return run_step("registry", action="register", overrides={
            "train_result": train_result["result_file"], "metrics": metrics["metrics"],
            "decision": ti.xcom_pull(task_ids="gate", key="decision")["decision_path"],
            "dataset_hash": validation["dataset_hash"], "validation": validation.get("report", ""),
            "snapshot": inputs["snapshot_manifest"], "trigger": inputs["trigger"]})

    @task.branch
    def approval_route(params=None) -> str:
        return "approve" if params["require_approval"] else "waive_approval"

    @task(retries=0)
    def waive_approval(registered: dict) -> dict:
        """The explicit way past the human, where the deployment allows it; refused (the task fails)
        elsewhere. Recorded on the version as ``waived``."""
        return run_step("registry", action="approval", overrides={
            "version": registered["version"], "decision": "waived", "by": WAIVED_BY,
            "comment": "approval waived for this run by the require_approval Param"})

    from llmops_airflow.approval import RecordedApproval

    approve = RecordedApproval(
        task_id="approve",
        version_task_id="register",
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
            "`previous-production` for rollback. Rejecting leaves production as it is and is final: "
            "the rejection, you and your comment are recorded on the version, and no promotion or "
            "rollback can make it production."
        ),
        params={"comment": Param("", type=OPTIONAL_TEXT, title="Comment",
                                 description="Why: recorded on the model version and in its audit log.")},
        # A plain timedelta: the worker sends it to its supervisor over msgpack, which rejects
        # pendulum's Duration (the run would fail on parking in Required actions).
        response_timeout=datetime.timedelta(days=3),
        retries=0,
    )

    # Upstream only register and the two approval paths (evaluate's result is pulled, not an
    # edge): after a gate rejection all three are skipped, so promote is skipped too.
    @task(trigger_rule="none_failed_min_one_success")
    def promote(registered: dict, ti=None) -> dict:
        """Move production to the approved (or waived) version; the registry checks the rules."""
        metrics = ti.xcom_pull(task_ids="evaluate") or {}
        return run_step("registry", action="promote", overrides={
            "version": registered["version"], "expected_production": metrics.get("champion_version") or "none"})

    @teardown
    @task
    def close_mlflow_run() -> dict:
        """End the DAG run's MLflow parent run with the run's outcome, whatever happened before."""
        return close_pipeline_run()

    splits >> train >> evaluate
    report >> train
    route_gate = gate(evaluate.output)
    rejected = candidate_rejected()
    registered = register(train.output, evaluate.output, validation, inputs)
    route_gate >> [registered, rejected]
    route = approval_route()
    waived = waive_approval(registered)
    registered >> route >> [approve, waived]
    promoted = promote(registered)
    [approve, waived] >> promoted
    [promoted, rejected] >> close_mlflow_run()


llm_retraining()
