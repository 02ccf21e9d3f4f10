"""
### Curate human feedback into a new preference snapshot, and tell retraining about it

`curate -> publish_snapshot`. `curate` runs `llmops curate` in the worker: it reads the production
traces answered since the last snapshot's watermark that carry feedback (`llmops feedback log`, or
any MLflow client: assessments `user_thumbs`, `user_rating`, `user_preferred_over`,
`user_correction`), mines preference pairs (corrections, pairwise choices, same-prompt answers with
opposite thumbs or ratings far apart), KTO rows (unpaired thumbs) and SFT rows (corrections), drops
conflicting votes and duplicates (of earlier snapshots too), applies the PII rule, validates the
merged snapshot with the same Great Expectations policy as any training data and only then writes
it as a new version (`{artifact_root}/datasets/preference/vNNNN-<hash>/`: data.parquet,
kto.parquet, sft.parquet, manifest.json, report.html). Invalid: the task fails, nothing is written.

`publish_snapshot` emits one event of the `llmops_preference_data` asset per new snapshot (extra:
uri, content_hash, rows, feedback_rows, manifest), which `llm_retraining` is scheduled on; with
no new feedback it is *skipped* and emits nothing.

Daily at 02:00 UTC (`LLMOPS_CURATION_SCHEDULE`, `none` for manual runs only), or trigger it with
Params; a field left empty means the step's default decides.
"""

from __future__ import annotations

import os

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from llmops_airflow.assets import PREFERENCE_DATA
from llmops_airflow.steps import run_step

DAG_ID = "feedback_curation"
SCHEDULE = os.environ.get("LLMOPS_CURATION_SCHEDULE", "0 2 * * *")
# Optional Params: the trigger form treats an empty "string" as missing and blocks the run.
OPTIONAL_TEXT = ["null", "string"]
OPTIONAL_INT = ["null", "integer"]
# Param -> curate setting; an empty Param leaves the setting to the step's default.
SETTINGS = ("experiment", "snapshot_root", "base_dataset", "policy", "retention_days", "rating_gap",
            "max_traces", "pii_mode")


def _schedule():
    """The cron as a trigger timetable with no start date (unpausing waits for the next cron time)."""
    if SCHEDULE.strip().lower() == "none":
        return None
    return CronTriggerTimetable(SCHEDULE, timezone="UTC", run_immediately=False)


@dag(
    dag_id=DAG_ID,
    schedule=_schedule(),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["llmops", "feedback", "curation"],
    default_args={"retries": 1},
    params={
        "experiment": Param(None, type=OPTIONAL_TEXT, title="Traffic experiment",
                            description="MLflow experiment of the production traces. Empty: "
                                        "$LLMOPS_TRAFFIC_EXPERIMENT, else <model name>-traffic."),
        "snapshot_root": Param(None, type=OPTIONAL_TEXT, title="Snapshot folder",
                               description="Where the versioned snapshots live. Empty: "
                                           "{artifact_root}/datasets/preference."),
        "base_dataset": Param(None, type=OPTIONAL_TEXT, title="Base data set",
                              description="Preference JSONL/Parquet the first snapshot starts from. Empty: the "
                                          "embedded sample set when it exists; none: no base."),
        "policy": Param(None, type=OPTIONAL_TEXT, title="Validation policy",
                        description="Empty: the packaged validate_preference.yaml (as any training data)."),
        "retention_days": Param(None, type=OPTIONAL_INT, minimum=0, title="Retention (days)",
                                description="Feedback rows older than this leave the snapshot (base rows stay); "
                                            "0 keeps all. Empty: 90."),
        "rating_gap": Param(None, type=OPTIONAL_INT, minimum=1, title="Rating gap",
                            description="Ratings this far apart on the same prompt make a pair. Empty: 2."),
        "max_traces": Param(None, type=OPTIONAL_INT, minimum=0, title="Most traces per run",
                            description="The watermark moves on by what was read. Empty: 200000."),
        "pii_mode": Param(None, type=["null", "string"], enum=[None, "redact", "block"], title="Personal data",
                          description="redact it, or block (drop) the row. Empty: redact."),
    },
)
def feedback_curation():
    @task
    def curate(params=None) -> dict:
        """Run ``llmops curate`` in this process (a light step: reads traces, writes Parquet)."""
        overrides = {key: params[key] for key in SETTINGS
                     if params.get(key) is not None and str(params[key]).strip() != ""}
        return run_step("curate", overrides=overrides)

    @task(outlets=[PREFERENCE_DATA], retries=0)
    def publish_snapshot(result: dict, outlet_events=None) -> dict:
        """One asset event per new snapshot; skipped (no event) when curate wrote none."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not result.get("written"):
            raise AirflowSkipException(result.get("outcome") or "no snapshot written")
        extra = {key: result[key] for key in ("uri", "content_hash", "rows", "feedback_rows", "manifest")}
        outlet_events[PREFERENCE_DATA].extra = extra
        return extra

    publish_snapshot(curate())


feedback_curation()
