"""The previous data set snapshot's reports, so a step can say what changed since then.

The store every worker and pod sees is MLflow. Each ``eda`` step run of a DAG run
(``tracking.record_step``) carries the tags ``llmops.step``, ``llmops.dag_id`` and
``llmops.dag_run_id`` and holds its ``eda.json`` as the artifact ``reports/eda.json`` (when the
run folders are local) and as the param ``report_json`` (its path or URI in the run folder). The
previous snapshot is the data set of the most recent FINISHED ``eda`` run of the same DAG from
another DAG run: a retry of this run's own ``eda`` is not a previous snapshot.

The comparison is informative, not a gate: ``previous_eda_report`` never raises. When it finds
nothing (the first run) or cannot read what it finds, it logs one line saying why and returns
``""``, and the step goes on without a comparison.
"""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

from llmops_tasks.core import data, settings, tracking
from llmops_tasks.core.settings import RunContext

EDA_STEP = "eda"
EDA_ARTIFACT = "reports/eda.json"
# The param an eda step run records its report's path or URI under (the fallback source).
EDA_REPORT_PARAM = "report_json"
PREVIOUS_EDA_FILE = "previous_eda.json"
log = logging.getLogger(__name__)


def previous_eda_run(ctx: RunContext, mlflow_client=None):
    """The most recent FINISHED ``eda`` step run of ``ctx.dag_id`` from a DAG run other than
    ``ctx.run_id``, or ``None``. Raises when the tracking store cannot be searched."""
    mlflow_client = mlflow_client or tracking.client()
    experiment = mlflow_client.get_experiment_by_name(settings.experiment_name())
    if experiment is None:
        return None
    query = (
        f"tags.`{tracking.TAG_STEP}` = '{EDA_STEP}' "
        f"and tags.`{tracking.TAG_DAG_ID}` = '{tracking.quote(ctx.dag_id)}' "
        f"and tags.`{tracking.TAG_RUN_ID}` != '{tracking.quote(ctx.run_id)}' "
        "and attributes.status = 'FINISHED'"
    )
    found = mlflow_client.search_runs([experiment.experiment_id], filter_string=query, max_results=1,
                                      order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def previous_eda_report(dest_dir: str, ctx: RunContext | None = None, mlflow_client=None) -> str:
    """Fetch the previous snapshot's ``eda.json`` to ``{dest_dir}/previous_eda.json``.

    Returns that path (a URI when ``dest_dir`` is one), or ``""`` when there is no previous
    snapshot or it cannot be read; never raises (see the module docstring).
    """
    ctx = ctx or RunContext.from_env()
    if not ctx.dag_id:
        log.info("no comparison with a previous snapshot: not running in a DAG run (no LLMOPS_DAG_ID)")
        return ""
    try:
        run = previous_eda_run(ctx, mlflow_client)
    except Exception as exc:  # noqa: BLE001 (an unreachable or broken store must not stop the step)
        log.info(f"no comparison with a previous snapshot: searching MLflow failed ({type(exc).__name__}: {exc})")
        return ""
    if run is None:
        log.info(f"no comparison with a previous snapshot: no finished {EDA_STEP} run of DAG {ctx.dag_id!r} "
              "from an earlier DAG run (first run)")
        return ""
    label = f"{EDA_STEP} run {run.info.run_id} of DAG run {run.data.tags.get(tracking.TAG_RUN_ID, '?')}"
    report, failures = _read_report(run, mlflow_client)
    if report is None:
        log.info(f"no comparison with a previous snapshot: the report of {label} cannot be read "
              f"({'; '.join(failures)})")
        return ""
    path = f"{dest_dir.rstrip('/')}/{PREVIOUS_EDA_FILE}"
    try:
        data.write_json(path, report)
    except Exception as exc:  # noqa: BLE001 (any fsspec backend's error: still no reason to stop the step)
        log.info(f"no comparison with a previous snapshot: cannot write {path} ({type(exc).__name__}: {exc})")
        return ""
    log.info(f"comparing with the previous snapshot: {label} (data set {report.get('dataset')}), copied to {path}")
    return path


def _read_report(run, mlflow_client) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's eda.json: its MLflow artifact, else the file its ``report_json`` param names."""
    failures = []
    try:
        mlflow_client = mlflow_client or tracking.client()
        with tempfile.TemporaryDirectory(prefix="llmops-previous-eda-") as tmp:
            local = mlflow_client.download_artifacts(run.info.run_id, EDA_ARTIFACT, tmp)
            with open(local, encoding="utf-8") as handle:
                report = json.load(handle)
        if isinstance(report, dict):
            return report, failures
        failures.append(f"artifact {EDA_ARTIFACT}: not a JSON object")
    except Exception as exc:  # noqa: BLE001 (missing artifact, store or network errors, bad JSON: try the param)
        failures.append(f"artifact {EDA_ARTIFACT}: {type(exc).__name__}: {exc}")
    uri = run.data.params.get(EDA_REPORT_PARAM, "")
    if not uri:
        failures.append(f"no {EDA_REPORT_PARAM} param")
        return None, failures
    try:
        report = data.read_json(uri)
    except Exception as exc:  # noqa: BLE001 (gone (retention), unreachable, or not JSON: reported by the caller)
        failures.append(f"{uri}: {type(exc).__name__}: {exc}")
        return None, failures
    if isinstance(report, dict):
        return report, failures
    failures.append(f"{uri}: not a JSON object")
    return None, failures


