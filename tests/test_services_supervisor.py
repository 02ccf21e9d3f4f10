"""The supervisor of ``llmops up`` with real short-lived processes (``python -c`` children that
exit, are killed, leave children behind or ignore SIGTERM): restarts with backoff and a limit,
the start order, what a dead service left behind, services.json, stopping. Nothing is mocked;
only the Airflow and MLflow programs are replaced by small Python ones.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import services
from llmops_tasks.local.services import RestartPolicy, Service, Supervisor, UpConfig, free_port

integration = pytest.mark.integration  # real subprocesses (the `unit` marker means none)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (a dead process its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat[stat.rindex(")") + 2] == "Z"


def _poll_until(supervisor: Supervisor, done, what: str, timeout: float = 30.0):
    """Poll the supervisor until ``done()``; fail with ``what`` and services.json if it never is."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            record = supervisor.pid_file.read_text() if supervisor.pid_file.is_file() else "(no services.json)"
            pytest.fail(f"{what} did not happen within {timeout} s; services.json:\n{record}")
        supervisor.poll()
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def make(tmp_path):
    made: list[Supervisor] = []

    def build(*specs: Service, limit: int = 3, window: float = 60.0, backoff: float = 0.05,
              ready_timeout: float = 20.0, stop_timeout: float = 2.0) -> Supervisor:
        supervisor = Supervisor(tmp_path, dict(os.environ), specs, RestartPolicy(limit, window, backoff),
                                ready_timeout, stop_timeout)
        made.append(supervisor)
        return supervisor

    yield build
    for supervisor in made:
        supervisor.stop()


@pytest.mark.unit
def test_backoff_doubles_per_restart_and_is_capped():
    policy = RestartPolicy(limit=10, window=300, backoff=1.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert RestartPolicy(3, 60, 0.0).delay(3) == 0.0
    assert RestartPolicy(3, 60, 45.0).delay(2) == 45.0  # a backoff above the cap is used as given


@pytest.mark.unit
@pytest.mark.parametrize(("setting", "value"), [("restart_limit", -1), ("restart_window", 0.0),
                                                ("restart_backoff", -0.5)])
def test_restart_settings_are_validated(setting, value):
    with pytest.raises(ConfigError, match=setting):
        UpConfig(**{setting: value})


@pytest.mark.unit
def test_scheduler_starts_after_the_api_server(tmp_path):
    env = {"LLMOPS_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    specs = {s.name: s for s in services.service_specs(UpConfig(), env)}
    assert set(specs) == {"api-server", "scheduler", "dag-processor", "triggerer", "mlflow"}
    assert specs["scheduler"].after == ("api-server",)
    assert all(not s.after for name, s in specs.items() if name != "scheduler"), specs
    # A restarted scheduler waits until its predecessor counts as dead, to reset its tasks at start.
    assert specs["scheduler"].min_restart_delay == 30.0
    assert all(s.min_restart_delay == 0 for name, s in specs.items() if name != "scheduler"), specs
    env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD"] = "45"
    assert {s.name: s for s in services.service_specs(UpConfig(), env)}["scheduler"].min_restart_delay == 45.0


@pytest.mark.unit
def test_a_relative_home_is_the_same_folder_made_absolute(tmp_path, monkeypatch):
    """LLMOPS_HOME=demo-home llmops up: every service gets the absolute folder (MLflow's artifact
    root is a file URI, and the services do not run in the user's folder)."""
    monkeypatch.chdir(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "LLMOPS"))}
    env = services.service_env(UpConfig(), {**base, "LLMOPS_HOME": "demo-home"})
    assert env["LLMOPS_HOME"] == str(tmp_path / "demo-home")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'demo-home' / 'mlflow.db'}"
    mlflow = services.service_commands(UpConfig(), env)["mlflow"]
    assert mlflow[mlflow.index("--default-artifact-root") + 1] == (tmp_path / "demo-home" / "mlartifacts").as_uri()


@pytest.mark.unit
def test_a_circular_start_order_is_refused(tmp_path):
    a, b = Service("a", ["true"], after=("b",)), Service("b", ["true"], after=("a",))
    with pytest.raises(ValueError, match="circle: a -> b -> a"):
        Supervisor(tmp_path, {}, [a, b], RestartPolicy(1, 60, 0), 10, 1)
    with pytest.raises(ValueError, match="not services here"):
        Supervisor(tmp_path, {}, [Service("a", ["true"], after=("nobody",))], RestartPolicy(1, 60, 0), 10, 1)


@integration
def test_a_failing_service_is_restarted_up_to_the_limit_then_the_stack_stops(make, caplog):
    supervisor = make(Service("flaky", _python("import sys; sys.exit(3)")), limit=2, backoff=0.05)
    caplog.set_level(logging.INFO, logger="llmops_tasks.local.services")
    failure: list[StepFailed] = []

    def gave_up() -> bool:
        try:
            supervisor.poll()
        except StepFailed as exc:
            failure.append(exc)
        return bool(failure)

    _poll_until(supervisor, gave_up, "giving up on `flaky`")
    message = str(failure[0])
    log_path = supervisor.log_dir / "flaky.log"
    assert "flaky exited with code 3" in message and "restart_limit 2" in message, message
    assert str(log_path) in message and "every service was stopped" in message, message
    restarting = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert restarting == [f"llmops up: flaky exited with code 3; restarting (1/2) in 0.05 s — log: {log_path}",
                          f"llmops up: flaky exited with code 3; restarting (2/2) in 0.1 s — log: {log_path}"]
    record = json.loads(supervisor.pid_file.read_text())
    assert record["supervisor"] == os.getpid()
    flaky = record["services"]["flaky"]
    assert flaky["state"] == "failed" and flaky["pid"] is None, flaky
    assert [(r["restart"], r["exit_code"]) for r in flaky["restarts"]] == [(1, 3), (2, 3), (None, 3)]
    assert [r["delay_s"] for r in flaky["restarts"][:2]] == [0.05, 0.1]
    assert log_path.read_text().count("$ ") == 3  # each start is marked in the one log


@integration
def test_restart_limit_zero_stops_at_the_first_exit(make):
    supervisor = make(Service("once", _python("import sys; sys.exit(4)")), limit=0)
    with pytest.raises(StepFailed, match=r"once exited with code 4 and restarts are off \(restart_limit 0\)"):
        _poll_until(supervisor, lambda: False, "the first exit of `once`")


@integration
def test_a_minimum_restart_delay_wins_over_a_shorter_backoff(make):
    supervisor = make(Service("settling", _python("import sys; sys.exit(6)"), min_restart_delay=0.4),
                      backoff=0.01)
    unit = supervisor.units["settling"]
    _poll_until(supervisor, lambda: len(unit.restarts) == 1, "the first exit of `settling`")
    assert unit.restarts[0]["delay_s"] == 0.4, unit.restarts
    assert unit.due - unit.exits[-1] == pytest.approx(0.4)  # due: the exit's time plus the delay
    _poll_until(supervisor, lambda: len(unit.restarts) == 2, "the second exit of `settling`")
    assert unit.restarts[1]["delay_s"] == 0.4, unit.restarts  # backoff 0.02 < 0.4


@integration
def test_exits_older_than_the_window_do_not_count(make):
    # Each run lasts 0.6 s, longer than the 0.3 s window: every exit finds the one before it
    # outside the window, so restart_limit 1 never runs out.
    supervisor = make(Service("slow-crash", _python("import time, sys; time.sleep(0.6); sys.exit(5)")),
                      limit=1, window=0.3, backoff=0.0)
    unit = supervisor.units["slow-crash"]
    _poll_until(supervisor, lambda: len(unit.restarts) >= 3, "three restarts of `slow-crash`")
    assert all(r["restart"] == 1 for r in unit.restarts), unit.restarts


# Like a scheduler: its LocalExecutor task takes a group of its own in the service's session, and
# the task's step subprocess (our operator) a session of its own, deaf to SIGTERM here. The task
# writes both pids to argv[1] once the step runs.
TASK = """
import os, subprocess, sys, time
step = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "open(__import__('sys').argv[1], 'w').close(); time.sleep(600)", sys.argv[1] + ".step"],
                        start_new_session=True)
while not os.path.exists(sys.argv[1] + ".step"):
    time.sleep(0.01)
os.remove(sys.argv[1] + ".step")
with open(sys.argv[1] + ".partial", "w") as out:
    out.write(f"{os.getpid()} {step.pid}")
os.replace(sys.argv[1] + ".partial", sys.argv[1])
time.sleep(600)
"""
LEAVES_CHILDREN = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {TASK!r}, sys.argv[1]], process_group=0)
time.sleep(600)
"""


@integration
def test_what_a_killed_service_left_behind_is_stopped_before_its_restart(make, tmp_path):
    pids_file = tmp_path / "children"
    supervisor = make(Service("parent", _python(LEAVES_CHILDREN) + [str(pids_file)],
                              ready=lambda since: pids_file.is_file()), stop_timeout=1.0)
    unit = supervisor.units["parent"]
    _poll_until(supervisor, lambda: unit.state == "ready", "the first start of `parent`")
    first = unit.process.pid
    task, step = map(int, pids_file.read_text().split())
    assert os.getpgid(task) == task and os.getsid(task) == first, "the task process is not set up as in Airflow"
    assert os.getsid(step) == step, "the step process did not get a session of its own"
    pids_file.unlink()

    os.kill(first, signal.SIGKILL)  # only the leader: its children live on until the supervisor acts
    _poll_until(supervisor, lambda: unit.process is not None and unit.process.pid != first, "the restart of `parent`")
    assert _gone(task) and _gone(step), f"leftovers of the killed service survived its restart: {task}, {step}"
    assert unit.restarts[0]["leftovers_stopped"] == 2 and unit.restarts[0]["exit_code"] == -signal.SIGKILL

    _poll_until(supervisor, lambda: unit.state == "ready", "`parent` healthy again")
    second_task, second_step = map(int, pids_file.read_text().split())
    codes = supervisor.stop()  # the step ignores SIGTERM: stop() has to escalate to SIGKILL
    assert codes == {"parent": -signal.SIGTERM}, codes
    assert _gone(second_task) and _gone(second_step), "stop() left processes of the service running"
    assert not supervisor.pid_file.exists(), "services.json outlived stop()"


API = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))  # a slow start, like the API server's
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.BaseHTTPRequestHandler).serve_forever()
"""
CLIENT = """
import socket, sys, time
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
    seen = "listening"
except OSError:
    seen = "refused"
with open(sys.argv[2], "a") as out:
    out.write(seen + "\\n")
time.sleep(600)
"""


@integration
def test_the_dependent_service_starts_only_once_its_dependency_is_healthy_also_on_restarts(make, tmp_path):
    port, seen = free_port(), tmp_path / "seen"
    api = Service("api", _python(API) + [str(port), "0.5"], ready=lambda since: _listening(port))
    client = Service("client", _python(CLIENT) + [str(port), str(seen)], after=("api",),
                     ready=lambda since: seen.is_file())
    supervisor = make(client, api, backoff=0.0)
    units = supervisor.units
    _poll_until(supervisor, supervisor.all_ready, "both services healthy")
    assert seen.read_text().split() == ["listening"]

    # The dependency dies alone: the dependent keeps running (its tasks bridge the gap).
    client_pid = units["client"].process.pid
    os.killpg(units["api"].process.pid, signal.SIGKILL)
    _poll_until(supervisor, lambda: len(units["api"].restarts) == 1 and units["api"].state == "ready",
                "`api` restarted and healthy")
    assert units["client"].process.pid == client_pid and not units["client"].restarts

    # Both die: the dependent, with no backoff, still waits until the dependency listens again.
    os.killpg(units["api"].process.pid, signal.SIGKILL)
    os.killpg(client_pid, signal.SIGKILL)
    _poll_until(supervisor, lambda: len(units["client"].restarts) == 1 and supervisor.all_ready(),
                "both restarted and healthy")
    assert seen.read_text().split() == ["listening", "listening"], "the dependent started before its dependency"


@integration
def test_a_start_that_never_gets_healthy_stops_the_stack(make):
    supervisor = make(Service("mute", _python("import time; time.sleep(600)"), ready=lambda since: False),
                      ready_timeout=0.5)
    with pytest.raises(StepFailed, match=r"mute \(pid \d+\) was not healthy 0.5 s after it started"):
        _poll_until(supervisor, lambda: False, "the readiness timeout of `mute`")


@integration
def test_stop_recorded_stops_what_a_crashed_up_left_running(make, tmp_path):
    pids_file = tmp_path / "children"
    supervisor = make(Service("parent", _python(LEAVES_CHILDREN) + [str(pids_file)],
                              ready=lambda since: pids_file.is_file()))
    _poll_until(supervisor, supervisor.all_ready, "`parent` healthy")
    leader = supervisor.units["parent"].process.pid
    task, step = map(int, pids_file.read_text().split())
    # As if `llmops up` had been SIGKILLed: only services.json tells what runs.
    stopped = services.stop_recorded(tmp_path, timeout=1.0)
    assert stopped == [leader]
    assert all(_gone(pid) for pid in (leader, task, step)), "stop_recorded left processes running"
    assert not (tmp_path / services.PID_FILE).exists()


@integration
def test_component_ready_wants_a_heartbeat_of_the_new_process(tmp_path):
    """Against a real HTTP server: a healthy status from the dead process's last heartbeat is not
    the restarted one being healthy."""
    since = time.time()
    beats = {"old": datetime.fromtimestamp(since, UTC) - timedelta(seconds=10),
             "new": datetime.fromtimestamp(since, UTC) + timedelta(seconds=1)}
    current = {"beat": beats["old"]}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"metadatabase": {"status": "healthy"},
                               "scheduler": {"status": "healthy",
                                             "latest_scheduler_heartbeat": current["beat"].isoformat()}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert services.api_server_ready(base)
        assert not services.component_ready(base, "scheduler", since)
        current["beat"] = beats["new"]
        assert services.component_ready(base, "scheduler", since)
        assert not services.component_ready(base, "triggerer", since)  # not in the answer: not healthy
    finally:
        server.shutdown()
        server.server_close()
    assert not services.api_server_ready(base)  # nobody listens any more
