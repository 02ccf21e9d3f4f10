"""Finding the previous data set snapshot's eda.json through a real MLflow store (SQLite in tmp_path).

The eda step runs are logged exactly as the DAG's ``eda`` task logs them (``tracking.record_step``
under a DAG run's identity), and the reports are written by the real ``eda`` step. One SQLite
store serves the module; each test works in its own experiment, which is what the lookup scopes to.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llmops_tasks import eda, snapshots
from llmops_tasks.core import data, tracking
from llmops_tasks.core.settings import RunContext, temporary_env
from llmops_tasks.local import samples

pytestmark = pytest.mark.unit

DAG = "llm_retraining"


@pytest.fixture(autouse=True)
def _log_lines(caplog):
    """The lookup says why it found nothing in the step's log (the Airflow task log)."""
    caplog.set_level(logging.INFO, logger="llmops_tasks")


@pytest.fixture(scope="module")
def store(module_store):
    return module_store[0]


@pytest.fixture
def experiment(store, request, monkeypatch) -> str:
    """A fresh experiment per test in the module's store."""
    name = f"snapshots-{request.node.name}"
    monkeypatch.setenv("LLMOPS_EXPERIMENT", name)
    return name


def snapshot(store: Path, dag_id: str, run_id: str, rows: int, *, log_artifact: bool = True,
             record_param: bool = True, fail: bool = False) -> dict:
    """Run the real eda step on ``rows`` sample rows inside DAG run ``run_id``; it records its MLflow
    run as in the DAG. The other variants write the report and a run that lacks the artifact, the
    param, or (``fail``) ends FAILED after logging its report."""
    ctx = RunContext(dag_id, run_id, "eda")
    dataset = store / "data" / dag_id / f"{run_id}.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows()[:rows])
    config = eda.EdaConfig(dataset=str(dataset), out=ctx.step_dir("eda"))
    if log_artifact and record_param and not fail:  # the step records its own run, as in the DAG
        with temporary_env(ctx.env()):
            result = eda.run(config)
        return json.loads(Path(result["report_json"]).read_text(encoding="utf-8"))
    result = eda.write_reports(config, config.out)  # the report alone; its run is made up below
    params = {"dataset": str(dataset)}
    if record_param:
        params[snapshots.EDA_REPORT_PARAM] = result["report_json"]
    with temporary_env(ctx.env()):
        if fail:
            with pytest.raises(RuntimeError, match="killed"), tracking.step_run("eda", params=params) as run:
                tracking.client().log_artifact(run, result["report_json"], artifact_path="reports")
                raise RuntimeError("killed")
        else:
            tracking.record_step("eda", params, {"rows": result["rows"]},
                                 [result["report_json"]] if log_artifact else [])
    return json.loads(Path(result["report_json"]).read_text(encoding="utf-8"))


def eda_runs(experiment: str) -> list:
    client = tracking.client()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.TAG_STEP}` = 'eda'",
                              order_by=["attributes.start_time ASC"])


def test_picks_the_latest_finished_eda_of_an_earlier_dag_run(store, experiment, tmp_path, caplog):
    snapshot(store, DAG, "run-1", 40)
    expected = snapshot(store, DAG, "run-2", 60)
    snapshot(store, DAG, "run-3", 70, fail=True)  # newer, but FAILED
    snapshot(store, "other_dag", "run-9", 90)  # newer, but another DAG
    snapshot(store, DAG, "run-4", 80)  # the current DAG run's own (earlier attempt): not "previous"
    runs = eda_runs(experiment)
    assert [r.data.tags[tracking.TAG_RUN_ID] for r in runs] == ["run-1", "run-2", "run-3", "run-9", "run-4"]
    assert len({r.info.start_time for r in runs}) == len(runs)  # the order is by start time, no ties
    assert [r.info.status for r in runs].count("FAILED") == 1

    current = RunContext(DAG, "run-4", "eda")
    found = snapshots.previous_eda_run(current)
    assert found.data.tags[tracking.TAG_RUN_ID] == "run-2"

    caplog.clear()
    dest = tmp_path / "eda"
    path = snapshots.previous_eda_report(str(dest), current)
    assert path == f"{dest}/{snapshots.PREVIOUS_EDA_FILE}"
    assert json.loads(Path(path).read_text(encoding="utf-8")) == expected
    assert expected["rows"] == 60
    log = caplog.text
    assert "comparing with the previous snapshot" in log and "run-2" in log

    # what the eda task does with it: the new report carries the change since run-2
    dataset = store / "data" / "current.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows()[:100])
    result = eda.run(eda.EdaConfig(dataset=str(dataset), out=str(dest), previous=path))
    change = json.loads(Path(result["report_json"]).read_text(encoding="utf-8"))["change"]
    assert change["previous_dataset"] == expected["dataset"]
    assert change["previous_dataset_hash"] == expected["dataset_hash"]
    rows = next(f for f in change["figures"] if f["figure"] == "rows")
    assert (rows["previous"], rows["current"], rows["change"]) == (60, 100, 40)


def test_first_run_has_no_previous_snapshot(store, experiment, tmp_path, caplog):
    current = RunContext(DAG, "run-1", "eda")
    # no experiment at all yet: nothing to compare with, and the lookup creates nothing
    assert snapshots.previous_eda_report(str(tmp_path), current) == ""
    assert tracking.client().get_experiment_by_name(experiment) is None
    assert "first run" in caplog.text
    # the current DAG run's own eda (a retry) is not a previous snapshot
    snapshot(store, DAG, "run-1", 40)
    assert snapshots.previous_eda_run(current) is None
    assert snapshots.previous_eda_report(str(tmp_path), current) == ""
    assert "first run" in caplog.text
    assert not (tmp_path / snapshots.PREVIOUS_EDA_FILE).exists()


def test_other_dags_snapshots_are_ignored(store, experiment, tmp_path):
    snapshot(store, "other_dag", "run-1", 40)
    snapshot(store, "llm_retraining_v2", "run-2", 50)  # a prefix of the name is not the same DAG
    assert snapshots.previous_eda_report(str(tmp_path), RunContext(DAG, "run-3", "eda")) == ""
    found = snapshots.previous_eda_run(RunContext("other_dag", "run-3", "eda"))
    assert found.data.tags[tracking.TAG_DAG_ID] == "other_dag"


def test_report_from_the_run_folder_when_mlflow_holds_no_copy(store, experiment, tmp_path):
    """Run folders on object storage (s3://) are not copied into MLflow; the param names the file."""
    expected = snapshot(store, DAG, "run-1", 40, log_artifact=False)
    path = snapshots.previous_eda_report(str(tmp_path), RunContext(DAG, "run-2", "eda"))
    assert json.loads(Path(path).read_text(encoding="utf-8")) == expected


def test_unreadable_previous_report_is_logged_not_raised(store, experiment, tmp_path, caplog):
    snapshot(store, DAG, "run-1", 40, log_artifact=False, record_param=False)
    assert snapshots.previous_eda_report(str(tmp_path), RunContext(DAG, "run-2", "eda")) == ""
    log = caplog.text
    assert "cannot be read" in log and "reports/eda.json" in log and "no report_json param" in log
    assert not (tmp_path / snapshots.PREVIOUS_EDA_FILE).exists()


def test_broken_store_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not a SQLite database\n" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{broken}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert snapshots.previous_eda_report(str(tmp_path / "eda"), RunContext(DAG, "run-2", "eda")) == ""
    assert "searching MLflow failed" in caplog.text


def test_outside_a_dag_run_there_is_nothing_to_look_up(tmp_path, monkeypatch, caplog):
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert snapshots.previous_eda_report(str(tmp_path)) == ""
    assert "not running in a DAG run" in caplog.text
