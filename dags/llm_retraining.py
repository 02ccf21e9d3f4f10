"""
### Retrain the assistant model on new data, and promote it only when it has earned it

`resolve_inputs -> validate -> eda -> split -> train -> evaluate -> gate -> register (staging)
-> approval -> promote (production)`

* **validate** checks the data set with Great Expectations (rules, severities and thresholds from
  `validate_preference.yaml`: types, blanks, lengths, UTF-8, control characters, PII, duplicates,
  length bias, and contamination with `eval_dataset_uri` when it is set, which is itself checked
  with `validate_eval.yaml`); a blocking failure of either fails the run here with a message
  naming the file, the rules and rows, the failing rows in `quarantine.jsonl`, and nothing
  downstream runs. The log prints the Data Docs path; both are logged to the step's
  MLflow run.
* **eda** writes a self-contained HTML report of the data set (lengths, duplicates, n-grams, PII,
  sources) and what changed since the previous snapshot: the `eda.json` of this DAG's most recent
  finished `eda` from an earlier run, found through MLflow (none on the first run; a lookup that
  fails is logged and the report goes without the comparison).
* **split** divides the data set into train and eval by a hash of the normalized prompt, so no
  prompt is on both sides and a prompt stays on its side as new rows arrive.
* **train** fine-tunes the base model with TRL (`sft`, `dpo`, `kto`, `orpo`, or `grpo`/`rloo`
  against a reward model; LoRA optional) on a GPU pod (KubernetesPodOperator) or, in the
  embedded mode, as a local subprocess of the same `llmops train` command. A retry resumes
  from the last complete checkpoint.
* **evaluate** generates on the held-out prompts (see below) with the candidate and with the
  current `production` model (the base model when there is none) and scores BLEU / ROUGE.
* **gate** applies the thresholds below; a candidate that fails stops here (the downstream
  tasks show as skipped, the reason is in the gate's log and XCom) and nothing is registered.
* **register** logs the candidate to MLflow and moves alias `staging` to it.
* **approve** asks a human in *Required actions* when `require_approval` is on (the default),
  with the gate summary and a comment field; otherwise `auto_approve` records that approval was
  waived for this run. A Reject leaves production untouched; **record_rejection** tags the version
  and appends the rejection to the model's audit log.
* **promote** moves alias `production` to the new version (the replaced one keeps
  `previous-production` for rollback) unless production moved since the gate compared.
  The `model_rollback` DAG moves it back. MLflow settings come from the Airflow Connection
  `mlflow_default` when it exists, read when the registry tasks run.

Empty `dataset_uri` / `base_model` mean the embedded sample data set and the tiny local base
model under `$LLMOPS_HOME`, created on first use.

**Which prompts evaluate scores.** With `eval_dataset_uri` empty, the split's held-out part
(`eval_fraction` of the prompts): disjoint from training by construction, since split assigns
every row by a hash of its prompt with case and spacing normalized. With `eval_dataset_uri` set,
that fixed eval set instead, the same for every snapshot, so scores compare across runs; validate
then refuses a data set sharing a prompt with it (rules `prompt_not_in_against`, exact, and
`prompt_not_in_against_normalized`, up to case, spacing and punctuation; both blocking).
Training still uses only the split's train part in that case: the rows a snapshot trains on do
not depend on which eval set scores them. Lower `eval_fraction` to train on more of the rows.
"""

from __future__ import annotations

import datetime
import os

import pendulum
from airflow.sdk import Param, dag, task

from llmops_airflow.context import bind_run_context
from llmops_airflow.operators import step_operator

DAG_ID = "llm_retraining"
# Cron for scheduled retraining; set LLMOPS_RETRAIN_SCHEDULE="none" to trigger only by hand.
SCHEDULE = os.environ.get("LLMOPS_RETRAIN_SCHEDULE", "0 3 * * 1")
# method -> the split output it trains on. `reward` alone (a scorer, not a generator) is a CLI
# method only; grpo/rloo train their reward model in the same task unless the reward_model Param names one.
TRAIN_DATA_KEY = {"sft": "train_sft", "dpo": "train_preference", "kto": "train_preference",
                  "orpo": "train_preference", "grpo": "train_preference", "rloo": "train_preference"}
# GPUs of the train pod (deployment env, like the schedule); above 1 training runs under accelerate launch.
TRAIN_GPUS = int(os.environ.get("LLMOPS_TRAIN_GPUS", "1"))
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


def _airflow_fail(exc: Exception):
    """Data that is invalid will not become valid on retry: fail without retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(exc))


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
        from llmops_tasks import bootstrap, samples

        dataset = params["dataset_uri"] or str(samples.ensure_sample_data())
        base_model = params["base_model"] or str(bootstrap.ensure_tiny_model())
        recipe = params["recipe"] or bootstrap.packaged_recipe(f"{params['method']}_tiny.yaml")
        # "": no fixed eval set; evaluate uses the split's held-out part.
        eval_dataset = (params.get("eval_dataset_uri") or "").strip()
        return {"dataset": dataset, "base_model": base_model, "recipe": recipe, "eval_dataset": eval_dataset}

    @task(retries=0)
    def validate(inputs: dict) -> dict:
        bind_run_context()
        from llmops_tasks import bootstrap, tracking
        from llmops_tasks import validate as step
        from llmops_tasks.config import load
        from llmops_tasks.errors import StepFailed
        from llmops_tasks.settings import RunContext

        # Rules, severities and thresholds come from the packaged recipe; the data set from the run.
        # A fixed eval set is the `against` set: a training prompt found in it is contamination.
        config = load(step.ValidateConfig, bootstrap.packaged_recipe("validate_preference.yaml"),
                      {"dataset": inputs["dataset"], "kind": "preference",
                       "against": inputs.get("eval_dataset", "")})

        def check(config, step_name: str) -> tuple[dict, StepFailed | None]:
            """Run one validation; log validation.json, the quarantine file and the Data Docs site
            to its MLflow run. Returns the result and the failure (None when valid)."""
            try:
                result, failure = step.run(config), None
            except StepFailed as exc:
                result, failure = exc.result, exc
            for label, path in (("quarantine", result.get("quarantine")), ("Data Docs", result.get("data_docs"))):
                if path:
                    print(f"{step_name} {label}: {path}")
            if result.get("warnings"):
                print(f"{step_name} warnings (not blocking): {', '.join(result['warnings'])}")
            url = tracking.record_step(
                step_name, {"dataset": config.dataset, "dataset_hash": result.get("dataset_hash"),
                            "valid": failure is None, "against": config.against},
                {"rows": result.get("rows", 0), "quarantined_rows": result.get("quarantined_rows", 0)},
                [result.get("report", ""), result.get("quarantine") or ""])
            if result.get("data_docs"):
                tracking.client().log_artifacts(url.rsplit("/", 1)[-1], os.path.dirname(result["data_docs"]),
                                                artifact_path="reports/data_docs")
            result["mlflow_run_url"] = url
            return result, failure

        result, failure = check(config, "validate")
        failures = [failure] if failure else []
        if config.against:
            # The fixed eval set is checked too (its own rules: prompt / reference, size, duplicates),
            # here rather than when evaluate reads it after the training has been paid for.
            eval_config = load(step.ValidateConfig, bootstrap.packaged_recipe("validate_eval.yaml"),
                               {"dataset": config.against, "kind": "eval",
                                "report_dir": RunContext.from_env().step_dir("validate") + "/eval_set"})
            eval_result, eval_failure = check(eval_config, "validate_eval_set")
            result["eval_set"] = {key: eval_result.get(key) for key in
                                  ("valid", "rows", "report", "warnings", "quarantine", "data_docs", "mlflow_run_url")}
            failures += [eval_failure] if eval_failure else []
        if failures:
            raise _airflow_fail(StepFailed("\n".join(str(f) for f in failures)))
        return result

    @task
    def eda(inputs: dict, validation: dict) -> dict:
        bind_run_context()
        from llmops_tasks import eda as step
        from llmops_tasks import snapshots, tracking
        from llmops_tasks.settings import RunContext

        out = RunContext.from_env().step_dir("eda")
        # The previous snapshot's eda.json through MLflow, or "" (first run, or it could not be
        # read: snapshots logs why); never fails the task.
        previous = snapshots.previous_eda_report(out)
        result = step.run(step.EdaConfig(dataset=inputs["dataset"], kind="preference", out=out, previous=previous))
        print(f"EDA report: {result['report_html']}")
        result["previous"] = previous
        result["mlflow_run_url"] = tracking.record_step(
            "eda", {"dataset": inputs["dataset"], snapshots.EDA_REPORT_PARAM: result["report_json"],
                    "previous": previous},
            {"rows": result["rows"]}, [result["report_html"], result["report_json"]])
        return result

    @task
    def split(inputs: dict, validation: dict, params=None) -> dict:
        bind_run_context()
        from llmops_tasks import split as step
        from llmops_tasks.errors import StepFailed

        try:
            return step.run(step.SplitConfig(dataset=inputs["dataset"], eval_fraction=params["eval_fraction"]))
        except StepFailed as exc:
            raise _airflow_fail(exc) from exc

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
            "--set", "max_steps={{ params.max_steps }}",
            "--set", "learning_rate={{ params.learning_rate }}",
            "--set", "lora={{ params.lora }}",
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
        gate's MLflow run. A crash (no metrics, bad policy) fails the task instead.
        """
        bind_run_context()
        from llmops_airflow.mlflow_connection import mlflow_env
        from llmops_tasks import bootstrap, tracking
        from llmops_tasks import gate as step
        from llmops_tasks.errors import StepFailed

        config = step.GateConfig(metrics=metrics["metrics"],
                                 policy=params["gate_policy"] or bootstrap.packaged_recipe("gate.yaml"),
                                 min_bleu=params["gate_min_bleu"], max_regression=params["gate_max_regression"])
        try:
            decision = step.run(config)
        except StepFailed as exc:
            if not isinstance(exc.result, dict) or "passed" not in exc.result:
                raise  # not a decision: the gate could not judge, which is a failure, not a rejection
            decision = exc.result
        ti.xcom_push(key="decision", value=decision)
        ti.xcom_push(key="report", value=decision.get("report_path", ""))
        verdict = "PASSED" if decision["passed"] else "REJECTED (nothing is registered; downstream tasks skip)"
        print(f"gate {verdict}: {decision['reason']}")
        print(f"gate report: {decision.get('report_path', '')}")
        with mlflow_env():
            ti.xcom_push(key="mlflow_run_url", value=tracking.record_step(
                "gate", {"policy": config.policy, **config.thresholds()},
                {"passed": float(decision["passed"]), "rules_failed": float(len(decision["failed_rules"]))},
                [decision["decision_path"], decision.get("report_path", "")]))
        return bool(decision["passed"])

    @task
    def register(train_result: dict, metrics: dict, validation: dict) -> dict:
        bind_run_context()
        from llmops_airflow.mlflow_connection import mlflow_env
        from llmops_tasks import registry
        from llmops_tasks.settings import RunContext

        with mlflow_env():
            return registry.register(registry.RegisterConfig(
                train_result=train_result["result_file"],
                metrics=metrics["metrics"],
                decision=RunContext.from_env().step_dir("gate") + "/decision.json",
                dataset_hash=validation["dataset_hash"],
                validation=validation.get("report", ""),
            ))

    @task.branch
    def approval_route(params=None) -> str:
        return "approve" if params["require_approval"] else "auto_approve"

    @task
    def auto_approve(registered: dict) -> dict:
        """The explicit path when approval is waived by Param; recorded on the version."""
        bind_run_context()
        from llmops_airflow.mlflow_connection import mlflow_env
        from llmops_tasks import registry

        with mlflow_env():
            registry.record_approval(registered["version"], approved=True, by="auto (require_approval=false)",
                                     comment="approval waived for this run by the require_approval Param")
        return {"approved_by": "auto (require_approval=false)", "comment": "approval waived by Param"}

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
        bind_run_context()
        from llmops_airflow.mlflow_connection import mlflow_env
        from llmops_tasks import registry

        answer = ti.xcom_pull(task_ids="approve") or {}
        auto = ti.xcom_pull(task_ids="auto_approve") or {}
        approved_by = auto.get("approved_by") or _responder(answer)
        comment = auto.get("comment") or str((answer.get("params_input") or {}).get("comment") or "")
        with mlflow_env():
            if answer:
                registry.record_approval(registered["version"], approved=True, by=approved_by, comment=comment)
            return registry.promote(registry.PromoteConfig(
                version=registered["version"],
                expected_production=metrics.get("champion_version") or "none",
                approved_by=approved_by,
                comment=comment,
            ))

    # none_failed, not all_done: as the only leaf it decides the run state, so a failed validate or
    # promote upstream must leave it upstream_failed (run failed), not skipped (run success).
    @task(trigger_rule="none_failed", retries=2)
    def record_rejection(registered: dict, ti=None) -> dict:
        """A human Reject skips ``promote``; this records it on the version and in its audit log."""
        from airflow.sdk.exceptions import AirflowSkipException

        answer = ti.xcom_pull(task_ids="approve") or {}
        if "Reject" not in (answer.get("chosen_options") or []):
            raise AirflowSkipException("no rejection to record")
        bind_run_context()
        from llmops_airflow.mlflow_connection import mlflow_env
        from llmops_tasks import registry

        comment = str((answer.get("params_input") or {}).get("comment") or "")
        with mlflow_env():
            return registry.record_approval(registered["version"], approved=False, by=_responder(answer),
                                            comment=comment)

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
