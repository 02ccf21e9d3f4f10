"""Finding the previous data set snapshot's eda.json through a real MLflow store (SQLite in tmp_path).

The eda step runs are logged exactly as the DAG's ``eda`` task logs them (``tracking.record_step``
under a DAG run's identity), and the reports are written by the real ``eda`` step. One SQLite
store serves the module; each test works in its own experiment, which is what the lookup scopes to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_tasks import data, eda, samples, snapshots, tracking
from llmops_tasks.settings import RunContext, temporary_env

pytestmark = pytest.mark.unit

DAG = "llm_retraining"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        env.setenv("LLMOPS_HOME", str(root))
        env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(root / "mlartifacts"))
        env.setenv("LLMOPS_ARTIFACT_ROOT", str(root / "artifacts"))
        env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        yield root


@pytest.fixture
def experiment(store, request, monkeypatch) -> str:
    """A fresh experiment per test in the module's store."""
    name = f"snapshots-{request.node.name}"
    monkeypatch.setenv("LLMOPS_EXPERIMENT", name)
    return name


def snapshot(store: Path, dag_id: str, run_id: str, rows: int, *, log_artifact: bool = True,
             record_param: bool = True, fail: bool = False) -> dict:
    """Run the real eda step on ``rows`` sample rows inside DAG run ``run_id`` and log it as the DAG
    does. ``fail``: the step run ends FAILED after logging its report."""
    ctx = RunContext(dag_id, run_id, "eda")
    dataset = store / "data" / dag_id / f"{run_id}.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows()[:rows])
    result = eda.run(eda.EdaConfig(dataset=str(dataset), out=ctx.step_dir("eda")))
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


def test_picks_the_latest_finished_eda_of_an_earlier_dag_run(store, experiment, tmp_path, capsys):
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

    capsys.readouterr()
    dest = tmp_path / "eda"
    path = snapshots.previous_eda_report(str(dest), current)
    assert path == f"{dest}/{snapshots.PREVIOUS_EDA_FILE}"
    assert json.loads(Path(path).read_text(encoding="utf-8")) == expected
    assert expected["rows"] == 60
    log = capsys.readouterr().out
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


def test_first_run_has_no_previous_snapshot(store, experiment, tmp_path, capsys):
    current = RunContext(DAG, "run-1", "eda")
    # no experiment at all yet: nothing to compare with, and the lookup creates nothing
    assert snapshots.previous_eda_report(str(tmp_path), current) == ""
    assert tracking.client().get_experiment_by_name(experiment) is None
    assert "first run" in capsys.readouterr().out
    # the current DAG run's own eda (a retry) is not a previous snapshot
    snapshot(store, DAG, "run-1", 40)
    assert snapshots.previous_eda_run(current) is None
    assert snapshots.previous_eda_report(str(tmp_path), current) == ""
    assert "first run" in capsys.readouterr().out
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


def test_unreadable_previous_report_is_logged_not_raised(store, experiment, tmp_path, capsys):
    snapshot(store, DAG, "run-1", 40, log_artifact=False, record_param=False)
    assert snapshots.previous_eda_report(str(tmp_path), RunContext(DAG, "run-2", "eda")) == ""
    log = capsys.readouterr().out
    assert "cannot be read" in log and "reports/eda.json" in log and "no report_json param" in log
    assert not (tmp_path / snapshots.PREVIOUS_EDA_FILE).exists()


def test_broken_store_is_logged_not_raised(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not a SQLite database\n" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{broken}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert snapshots.previous_eda_report(str(tmp_path / "eda"), RunContext(DAG, "run-2", "eda")) == ""
    assert "searching MLflow failed" in capsys.readouterr().out


def test_outside_a_dag_run_there_is_nothing_to_look_up(tmp_path, monkeypatch, capsys):
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert snapshots.previous_eda_report(str(tmp_path)) == ""
    assert "not running in a DAG run" in capsys.readouterr().out
