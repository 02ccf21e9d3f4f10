"""MLflow tracking helpers: the step runs, and the background run that training logs through.

Real MLflow on a SQLite store in tmp_path; the logging process is a real spawned process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from llmops_tasks.core import tracking

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _own_store(mlflow_store):
    """Every test here gets a fresh MLflow store (conftest's mlflow_store)."""


def _wait_for_status(run_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    status = tracking.client().get_run(run_id).info.status
    while status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = tracking.client().get_run(run_id).info.status
    return status


def test_background_run_logs_params_metrics_and_answers_calls():
    with tracking.background_step_run("train-sft", params={"max_steps": 3}, tags={"method": "sft"}) as run:
        run.log_metrics([("loss", 2.0, 1), ("loss", 1.5, 2), ("note", "not a number", 2)])
        run.log_metrics([("loss", 1.0, 3)])
        url = run.call(tracking.run_url)  # runs in the logging process, with the run id first
        run_id = run.run_id
    assert url == run.url and url.endswith(run_id)
    mlflow_client = tracking.client()
    finished = mlflow_client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params["max_steps"] == "3" and finished.data.tags["method"] == "sft"
    history = mlflow_client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert "note" not in finished.data.metrics


def test_a_failing_block_marks_the_run_failed():
    with pytest.raises(ValueError, match="diverged"), tracking.background_step_run("train-dpo") as run:
        run_id = run.run_id
        raise ValueError("loss diverged")
    assert tracking.client().get_run(run_id).info.status == "FAILED"


def test_a_failing_call_is_reported_with_its_name_and_the_run_goes_on():
    with tracking.background_step_run("train-dpo") as run:
        with pytest.raises(RuntimeError, match=r"MLflow: _get_missing_run: MlflowException: .*missing"):
            run.call(_get_missing_run)
        run.log_metrics([("loss", 1.0, 1)])
        run_id = run.run_id
    finished = tracking.client().get_run(run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics == {"loss": 1.0}


def _get_missing_run(run_id: str):  # a module-level function: the logging process imports it by name
    return tracking.client().get_run("missing" + run_id)


def test_a_run_that_cannot_be_created_fails_before_training(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracking")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="MLflow: .*nosuchscheme"), tracking.background_step_run("train-sft") as run:
        run.run_id  # noqa: B018
    assert time.monotonic() - started < 60


def test_a_killed_step_leaves_its_run_failed_not_running(tmp_path):
    """SIGKILL of the step (preemption): its logging process sees the pipe close and ends the run."""
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent("""
        import os, signal
        from llmops_tasks.core import tracking

        if __name__ == "__main__":
            with tracking.background_step_run("train-sft") as run:
                print(run.run_id, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    """))
    step = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=120)
    assert step.returncode == -9, step.stderr[-2000:]
    run_id = step.stdout.strip().splitlines()[-1]
    assert _wait_for_status(run_id) == "FAILED"


def test_processes_opening_a_new_sqlite_store_at_once_do_not_race(tmp_path, monkeypatch):
    """MLflow migrates a new SQLite database on first open; the lock lets only one process do it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}")
    code = "from llmops_tasks.core import tracking; print(tracking.experiment_id())"
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=os.environ.copy()) for _ in range(3)]
    outcomes = [p.communicate(timeout=180) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-1500:] for _, err in outcomes]
    assert len({out.strip() for out, _ in outcomes}) == 1


def test_metrics_are_not_lost_when_sent_from_a_training_thread():
    """Callbacks may run off the main thread: sends to the logging process are serialized."""
    with tracking.background_step_run("train-sft") as run:
        threads = [threading.Thread(target=run.log_metrics, args=([(f"m{i}", float(i), 1)],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        run_id = run.run_id
    assert set(tracking.client().get_run(run_id).data.metrics) == {"m0", "m1", "m2", "m3"}


def test_a_fresh_process_records_a_light_step_from_a_process_started_at_the_step_start(tmp_path):
    """A step's own process (no MLflow loaded): the run is written by the spawned recorder, which
    opened the store while the step worked; the step's process never imports MLflow."""
    report = tmp_path / "report.json"
    report.write_text("{}\n")
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from llmops_tasks.core import tracking

        if __name__ == "__main__":
            with tracking.step_recorder() as recorder:
                spawned = recorder._process is not None
                url = recorder.record("eda", {{"dataset": "d.jsonl"}}, {{"rows": 3}}, [{str(report)!r}])
            print(spawned, "mlflow" in sys.modules, url)
    """))
    step = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=180)
    assert step.returncode == 0, step.stderr[-2000:]
    spawned, imported, url = step.stdout.split()
    assert (spawned, imported) == ("True", "False")
    run = tracking.client().get_run(url.rsplit("/", 1)[-1])
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == "d.jsonl"
    assert run.data.metrics["rows"] == 3.0
    artifacts = [a.path for a in tracking.client().list_artifacts(run.info.run_id, "reports")]
    assert artifacts == ["reports/report.json"]


def test_a_recorder_reports_mlflow_errors_and_records_here_when_its_process_is_gone(monkeypatch):
    import multiprocessing

    def spawned() -> tracking.StepRecorder:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=tracking._record_when_asked, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        return tracking.StepRecorder(ours, process)

    with monkeypatch.context() as env:  # the recording process's store cannot be opened: its error, raised here
        env.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
        recorder = spawned()
    with pytest.raises(RuntimeError, match="MLflow: .*nosuchscheme"):
        recorder.record("eda", {}, {"rows": 1}, [])
    recorder = spawned()
    recorder._process.kill()
    recorder._process.join(10)
    url = recorder.record("eda", {"dataset": "d.jsonl"}, {"rows": 1}, [])  # recorded in this process instead
    assert tracking.client().get_run(url.rsplit("/", 1)[-1]).info.status == "FINISHED"
    with tracking.step_recorder() as warm:  # MLflow is open in this process now: nothing is spawned
        assert warm._process is None
