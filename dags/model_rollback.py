"""
### Put a previous model version back in production

Triggered by hand when the `production` model misbehaves. Moves alias `production` of the
registered model to `target_version` (empty: the version holding `previous-production`, the one
the last promotion replaced); the version it takes production from becomes `previous-production`,
so running it twice flips back. The same `llmops registry rollback` the CLI runs: the move waits
for any promotion in progress, refuses a version that never passed its gate, one a human
rejected, one never approved (nor waived where the deployment allows it) and one gated by a
non-standard policy the deployment does not allow, and is recorded on both versions (who, when,
why, this DAG run) and in the model's audit log.

MLflow settings come from the Airflow Connection `mlflow_default` when it exists (read when the
task runs), else from the worker's environment.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from llmops_airflow.steps import run_step

DAG_ID = "model_rollback"


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["llmops", "mlflow", "rollback"],
    params={
        # Optional fields are nullable: the trigger form treats an empty "string" as missing.
        "target_version": Param(None, type=["null", "string"], pattern=r"^[0-9]*$", title="Version to restore",
                                description="Model version number; empty: the 'previous-production' version."),
        "reason": Param("", type="string", minLength=3, title="Reason",
                        description="Why production is rolled back (required); recorded on both versions and in "
                                    "the audit log."),
        "model_name": Param(None, type=["null", "string"], title="Registered model",
                            description="Empty: $LLMOPS_MODEL_NAME (default llmops-chat)."),
    },
)
def model_rollback():
    @task(retries=0)
    def rollback(params=None, dag_run=None) -> dict:
        """Move production back; a refusal (no such version, no gate) fails without retry."""
        return run_step("registry", action="rollback", overrides={
            "to_version": params["target_version"] or "", "reason": params["reason"],
            "model_name": params["model_name"] or "",
            "actor": getattr(dag_run, "triggering_user_name", None) or "airflow"})

    rollback()


model_rollback()
