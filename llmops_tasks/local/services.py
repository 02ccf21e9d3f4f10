"""``llmops up``: the embedded deployment as real services on loopback.

``llmops demo`` proves the pipeline with ``airflow dags test``; this starts what a team actually
uses: the Airflow API server (UI, REST API, our plugin page), scheduler with the LocalExecutor,
DAG processor and triggerer (which wakes the approval step), plus an MLflow server for the run
links, all on the embedded home's SQLite stores. Each service runs in its own process group with
its log under ``$LLMOPS_HOME/logs/services/``.

A :class:`Supervisor` keeps them running the way supervisord or systemd's ``Restart=always``
with ``StartLimitBurst`` do: a service that exits is restarted after a doubling delay, once what
it left behind is stopped and what it depends on is healthy; the scheduler starts only once the
API server answers, because its tasks (orphans it re-queues on start included) call the API
server's execution API first thing and would spend a retry on a refused connection. Too many
restarts within the window stop the stack with a message naming the service and its log; Ctrl-C
or SIGTERM stops every service (SIGTERM, then SIGKILL after ``stop_timeout``).

The tasks use the MLflow store (the embedded SQLite file, the server's backend store too)
directly, not the MLflow server, so an MLflow restart does not touch a running task.

Only environment variables and subprocesses: this package never imports Airflow.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import embedded

log = logging.getLogger(__name__)

AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
PID_FILE = "services.json"
RESTART_BACKOFF_CAP = 30.0  # seconds: the longest wait before one restart (unless restart_backoff is longer)


@dataclass
class UpConfig:
    host: str = field("127.0.0.1", help="address every service listens on (loopback: reachable from this machine only)")
    airflow_port: int = field(8080, help="port of the Airflow API server (UI, REST API, plugin page)")
    mlflow_port: int = field(5000, help="port of the MLflow server (UI for runs and the model registry)")
    parallelism: int = field(2, help="task slots of the LocalExecutor (each heavy step is one process)")
    users: str = field("admin:admin", help="simple auth manager users as name:role[,name:role]; roles: "
                                           "viewer, user, op, admin; passwords are generated on first start")
    mlflow: bool = field(True, help="also start the MLflow server next to Airflow")
    ready_timeout: int = field(300, help="seconds a service gets to report healthy, counted from each start "
                                         "(the first one and every restart)")
    stop_timeout: int = field(30, help="seconds a service gets to stop on SIGTERM before it is killed")
    restart_limit: int = field(5, help="restarts allowed per service within restart_window; one more exit stops "
                                       "every service (0: never restart, any exit stops the stack)")
    restart_window: float = field(300.0, help="seconds over which restart_limit counts a service's restarts "
                                              "(systemd's StartLimitIntervalSec)")
    restart_backoff: float = field(1.0, help="seconds before the first restart of a service; doubled for each "
                                             f"further restart within restart_window, up to {RESTART_BACKOFF_CAP:g} s")

    def __post_init__(self) -> None:
        for name in ("airflow_port", "mlflow_port"):
            port = getattr(self, name)
            require(0 < port < 65536, f"up: {name} must be a TCP port (1-65535), got {port}")
        require(self.airflow_port != self.mlflow_port or not self.mlflow,
                f"up: airflow_port and mlflow_port are both {self.airflow_port}; pick two ports")
        require(self.parallelism > 0, f"up: parallelism must be positive, got {self.parallelism}")
        require(self.ready_timeout > 0 and self.stop_timeout > 0, "up: ready_timeout and stop_timeout must be positive")
        require(self.restart_limit >= 0, f"up: restart_limit must be 0 (never restart) or more, got {self.restart_limit}")
        require(self.restart_window > 0, f"up: restart_window must be positive seconds, got {self.restart_window}")
        require(self.restart_backoff >= 0, f"up: restart_backoff must be 0 or more seconds, got {self.restart_backoff}")
        for entry in filter(None, (u.strip() for u in self.users.split(","))):
            require(entry.count(":") == 1 and all(entry.split(":")),
                    f"up: users entry {entry!r} is not name:role (e.g. admin:admin)")


def service_env(config: UpConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The embedded environment plus what the long-running services need.

    Ports and executor come from ``config`` (a flag wins); the auth settings keep a value the
    user already set, e.g. ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True``.
    """
    env = embedded.airflow_env(base)
    api = f"http://{config.host}:{config.airflow_port}"
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(config.parallelism),
        "AIRFLOW__API__HOST": config.host,
        "AIRFLOW__API__PORT": str(config.airflow_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
    })
    env.setdefault("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", config.users)
    if config.mlflow:
        env["LLMOPS_MLFLOW_UI"] = f"http://{config.host}:{config.mlflow_port}"
    return env


def _executable(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


def service_commands(config: UpConfig, env: dict[str, str]) -> dict[str, list[str]]:
    airflow = _executable("airflow")
    commands = {
        "api-server": [airflow, "api-server", "--host", config.host, "--port", str(config.airflow_port), "--workers", "1"],
        "scheduler": [airflow, "scheduler"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer"],
    }
    if config.mlflow:
        home = Path(env["LLMOPS_HOME"])
        commands["mlflow"] = [
            _executable("mlflow"), "server", "--backend-store-uri", env["MLFLOW_TRACKING_URI"],
            "--default-artifact-root", (home / "mlartifacts").as_uri(),
            "--host", config.host, "--port", str(config.mlflow_port), "--workers", "1",
        ]
    return commands


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the system's pick), for a service started next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _http_json(url: str, timeout: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def mlflow_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def api_server_ready(base_url: str) -> bool:
    """True once the API server listens and reaches its database: tasks may call it from now on."""
    health = _http_json(f"{base_url}/api/v2/monitor/health")
    return bool(health) and (health.get("metadatabase") or {}).get("status") == "healthy"


def component_ready(base_url: str, part: str, since: float) -> bool:
    """True when ``part`` (scheduler, triggerer, dag_processor) is healthy with a heartbeat from
    after ``since`` (epoch seconds): the health of the process started then, not of the one it
    replaced, whose last heartbeat counts as healthy for a while after it died."""
    info = (_http_json(f"{base_url}/api/v2/monitor/health") or {}).get(part) or {}
    beat = info.get(f"latest_{part}_heartbeat")
    if info.get("status") != "healthy" or not beat:
        return False
    when = datetime.fromisoformat(beat)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.timestamp() >= since


def login_hint(env: dict[str, str]) -> str:
    """How to log in: all-admins mode, or the users with their generated passwords."""
    if env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").lower() == "true":
        return "no login (AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True: everyone is admin)"
    if env.get("AIRFLOW__CORE__AUTH_MANAGER") != SIMPLE_AUTH_MANAGER:
        return f"log in through {env['AIRFLOW__CORE__AUTH_MANAGER']}"
    path = Path(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                or Path(env["AIRFLOW_HOME"]) / PASSWORDS_FILE)
    passwords = json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}
    users = [u.split(":")[0] for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",") if u.strip()]
    shown = ", ".join(f"{user} / {passwords.get(user, '(not generated yet)')}" for user in users)
    return f"{shown}  (passwords kept in {path})"


@dataclass(frozen=True)
class RestartPolicy:
    """systemd's ``Restart=always`` (a service of ours never exits unasked, whatever its code)
    with ``StartLimitBurst`` (limit) per ``StartLimitIntervalSec`` (window), and a delay that
    doubles with each restart inside the window."""

    limit: int
    window: float
    backoff: float

    def delay(self, restart: int) -> float:
        """Seconds to wait before the ``restart``-th restart (1-based) within the window."""
        return min(self.backoff * 2 ** (restart - 1), max(self.backoff, RESTART_BACKOFF_CAP))


@dataclass
class Service:
    """One supervised program: how to start it, how to tell it is healthy, what must be healthy first.

    ``ready`` gets the wall-clock time of the start it judges (see :func:`component_ready`);
    ``min_restart_delay`` is how long after an exit it may start again at the earliest, whatever
    the backoff.
    """

    name: str
    command: list[str]
    ready: Callable[[float], bool] = lambda since: True
    after: tuple[str, ...] = ()
    min_restart_delay: float = 0.0


def service_specs(config: UpConfig, env: dict[str, str]) -> list[Service]:
    """The services of ``llmops up`` with their health checks and start order."""
    api = f"http://{config.host}:{config.airflow_port}"
    mlflow_url = f"http://{config.host}:{config.mlflow_port}"
    ready: dict[str, Callable[[float], bool]] = {
        "api-server": lambda since: api_server_ready(api),
        "scheduler": lambda since: component_ready(api, "scheduler", since),
        "dag-processor": lambda since: component_ready(api, "dag_processor", since),
        "triggerer": lambda since: component_ready(api, "triggerer", since),
        "mlflow": lambda since: mlflow_healthy(mlflow_url),
    }
    # The LocalExecutor's tasks talk to the API server's execution API from their first line, and a
    # starting scheduler re-queues the orphans of the last one at once: before the API server
    # listens, each of them would fail and spend a retry. The DAG processor and the triggerer use an
    # in-process execution API, and MLflow needs nobody.
    after = {"scheduler": ("api-server",)}
    # A dead scheduler's tasks stay `running` in the database. A new scheduler resets them (to run
    # again at once) only at its start and then every orphaned_tasks_check_interval (5 min), and
    # only once the old one's heartbeat is scheduler_health_check_threshold old: starting it
    # sooner leaves the killed tasks hanging until the next check or their heartbeat timeout.
    settle = {"scheduler": float(env.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD", "30"))}
    return [Service(name, command, ready[name], after.get(name, ()), settle.get(name, 0.0))
            for name, command in service_commands(config, env).items()]


class _Proc(NamedTuple):
    ppid: int
    pgid: int
    sid: int  # -1 where the platform does not say
    start: str  # start time since boot: tells a process from a later one that got its pid
    state: str  # "Z": a zombie, already dead


def _process_table() -> dict[int, _Proc]:
    """Every process of this machine (Linux: /proc; elsewhere `ps`, without sessions)."""
    proc = Path("/proc")
    table: dict[int, _Proc] = {}
    if (proc / "self" / "stat").is_file():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:  # exited while we looked
                continue
            fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
            table[int(entry.name)] = _Proc(int(fields[1]), int(fields[2]), int(fields[3]), fields[19], fields[0])
        return table
    listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat="],
                             capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            table[int(parts[0])] = _Proc(int(parts[1]), int(parts[2]), -1, "", parts[3][0])
    return table


def service_processes(leader: int, table: dict[int, _Proc] | None = None) -> dict[int, str]:
    """The live processes a service started with ``start_new_session`` (``leader``: its pid), as
    pid -> start token: its process group, its session (Airflow's task processes take a group of
    their own) and every descendant of those (our operator's step subprocesses take a session of
    their own). Found by session and group, they are found also after the leader died."""
    table = _process_table() if table is None else table
    found = {pid for pid, p in table.items() if leader in (p.pgid, p.sid)}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, p in table.items():
        children[p.ppid].append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(os.getpid())
    return {pid: table[pid].start for pid in found if table[pid].state != "Z"}


def _still_there(table: dict[int, _Proc], pid: int, start: str) -> bool:
    entry = table.get(pid)
    return entry is not None and entry.state != "Z" and entry.start == start


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(leaders: Iterable[int], timeout: float, children: Iterable[subprocess.Popen] = ()) -> int:
    """Stop the services led by ``leaders`` with everything they started: SIGTERM to each group and
    each process of :func:`service_processes`, SIGKILL to what is left after ``timeout`` seconds.

    ``children`` are the leaders' Popen objects, reaped here. Returns how many processes other than
    the leaders there were.
    """
    leaders, children = list(leaders), list(children)
    members: dict[int, str] = {}
    for leader in leaders:
        members.update(service_processes(leader))
    for leader in leaders:
        _signal_group(leader, signal.SIGTERM)
    for pid in members:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        for child in children:
            child.poll()
        table = _process_table()
        left = {pid: start for pid, start in members.items() if _still_there(table, pid, start)}
        for leader in leaders:  # what the services started while they stopped
            left.update(service_processes(leader, table))
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for leader in leaders:
        _signal_group(leader, signal.SIGKILL)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    killed = time.monotonic()
    while left and time.monotonic() < killed + 5:  # SIGKILL is delivered, not waited for
        time.sleep(0.05)
        table = _process_table()
        left = {pid: start for pid, start in left.items() if _still_there(table, pid, start)}
    if left:
        log.warning("llmops up: processes %s still run after SIGKILL", sorted(left))
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("llmops up: pid %d did not exit after SIGKILL", child.pid)
    return len(set(members) - set(leaders))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else ["(no log yet)"]
    return "\n  ".join(text)


class _Unit:
    """A service and what the supervisor knows about it."""

    def __init__(self, service: Service, log_path: Path) -> None:
        self.service, self.log_path = service, log_path
        self.process: subprocess.Popen | None = None
        self.log_file = None
        self.state = "waiting"  # waiting (for its delay, then for `after`) -> starting -> ready
        self.due = 0.0  # monotonic time before which it is not started
        self.started = 0.0  # monotonic time of the last start
        self.started_at = 0.0  # the same as wall-clock time, for the heartbeats a service writes
        self.exits: deque[float] = deque()  # monotonic times of its exits within the restart window
        self.restarts: list[dict] = []
        self.exit_code: int | None = None
        self.said_waiting = False


class Supervisor:
    """Runs services, each as its own process group, in the order ``after`` gives, restarting one
    that exits.

    A service that exits has what it left behind stopped (:func:`stop_processes`), then waits
    ``policy.delay(n)`` and until the services it runs ``after`` are healthy, and is started and
    health-checked again; the restart is logged and recorded in ``services.json``. An exit beyond
    ``policy.limit`` restarts within ``policy.window`` seconds, or a start that is not healthy
    within ``ready_timeout``, raises StepFailed naming the service and its log; the caller then
    calls ``stop()``. ``poll()`` is one round that waits for nothing but a health check or the
    leftovers of an exited service, so the caller stays responsive to Ctrl-C.
    """

    def __init__(self, home: Path, env: dict[str, str], services: Iterable[Service], policy: RestartPolicy,
                 ready_timeout: float, stop_timeout: float) -> None:
        self.pid_file = home / PID_FILE
        self.log_dir = home / "logs" / "services"
        self.env, self.policy = env, policy
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.units = {s.name: _Unit(s, self.log_dir / f"{s.name}.log") for s in services}
        for unit in self.units.values():
            unknown = sorted(set(unit.service.after) - set(self.units))
            if unknown:
                raise ValueError(f"service {unit.service.name} runs after {unknown}, which are not services here")
        self._check_order()

    def _check_order(self) -> None:
        done: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            if name in path:
                raise ValueError(f"services wait for each other in a circle: {' -> '.join(path + [name])}")
            if name not in done:
                for first in self.units[name].service.after:
                    visit(first, path + [name])
                done.add(name)

        for name in self.units:
            visit(name, [])

    def poll(self) -> None:
        for unit in self.units.values():
            if unit.process is not None and unit.process.poll() is not None:
                self._exited(unit)
        for unit in self.units.values():
            if unit.state == "waiting":
                self._start_when_due(unit)
            elif unit.state == "starting":
                self._check_ready(unit)

    def all_ready(self) -> bool:
        return all(unit.state == "ready" for unit in self.units.values())

    def restarts(self) -> dict[str, int]:
        return {name: len(unit.restarts) for name, unit in self.units.items()}

    def _start_when_due(self, unit: _Unit) -> None:
        if time.monotonic() < unit.due:
            return
        blocking = [name for name in unit.service.after if self.units[name].state != "ready"]
        if blocking:
            if not unit.said_waiting:
                log.info("llmops up: %s starts once %s is healthy", unit.service.name, ", ".join(blocking))
                unit.said_waiting = True
            return
        self._spawn(unit)

    def _spawn(self, unit: _Unit) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if unit.log_file is None:
            unit.log_file = open(unit.log_path, "ab")  # noqa: SIM115 - kept across restarts, closed in stop()
        command = unit.service.command
        unit.log_file.write(f"\n[{_now_iso()}] $ {' '.join(command)}\n".encode())
        unit.log_file.flush()
        # Own session and group: the group's workers and the session's task processes are found by it.
        unit.process = subprocess.Popen(command, env=self.env, stdout=unit.log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        unit.state, unit.started, unit.started_at = "starting", time.monotonic(), time.time()
        unit.said_waiting = False
        if unit.restarts:
            log.info("llmops up: restarted %s (pid %d)", unit.service.name, unit.process.pid)
        self._record()

    def _check_ready(self, unit: _Unit) -> None:
        name, took = unit.service.name, time.monotonic() - unit.started
        if unit.service.ready(unit.started_at):
            unit.state = "ready"
            again = f" again after restart {len(unit.restarts)}" if unit.restarts else ""
            log.info("llmops up: %s is healthy%s (%.0f s after its start)", name, again, took)
            self._record()
        elif took > self.ready_timeout:
            raise StepFailed(f"up: {name} (pid {unit.process.pid}) was not healthy {self.ready_timeout:g} s after "
                             f"it started, so every service was stopped; log {unit.log_path}, last lines:\n  "
                             + _tail(unit.log_path))

    def _exited(self, unit: _Unit) -> None:
        process, unit.process = unit.process, None
        code = unit.exit_code = process.returncode
        name = unit.service.name
        leftovers = stop_processes([process.pid], self.stop_timeout)
        now = time.monotonic()
        unit.exits.append(now)
        while unit.exits[0] <= now - self.policy.window:
            unit.exits.popleft()
        count, limit = len(unit.exits), self.policy.limit
        event = {"at": _now_iso(), "pid": process.pid, "exit_code": code, "leftovers_stopped": leftovers}
        left = f"; stopped {leftovers} process(es) it left behind" if leftovers else ""
        if count > limit:
            unit.state = "failed"
            unit.restarts.append({**event, "restart": None})
            self._record()
            why = ("restarts are off (restart_limit 0)" if limit == 0 else
                   f"it exited {count} times within {self.policy.window:g} s, more than restart_limit {limit} "
                   f"allows (restart_window {self.policy.window:g} s)")
            raise StepFailed(f"up: {name} exited with code {code} and {why}, so every service was stopped; "
                             f"log {unit.log_path}, last lines:\n  " + _tail(unit.log_path))
        delay = max(self.policy.delay(count), unit.service.min_restart_delay)
        unit.state, unit.due = "waiting", now + delay
        unit.restarts.append({**event, "restart": count, "limit": limit, "delay_s": delay})
        log.warning("llmops up: %s exited with code %s%s; restarting (%d/%d) in %g s — log: %s",
                    name, code, left, count, limit, delay, unit.log_path)
        self._record()

    def _record(self) -> None:
        """services.json: who supervises, each service's pid and state, and every restart."""
        record = {"supervisor": os.getpid(), "updated": _now_iso(), "services": {
            name: {"pid": unit.process.pid if unit.process else None, "state": unit.state,
                   "started": datetime.fromtimestamp(unit.started_at, UTC).isoformat(timespec="seconds")
                   if unit.started_at else None,
                   "restarts": unit.restarts}
            for name, unit in self.units.items()}}
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.pid_file.with_name(self.pid_file.name + ".partial")
        partial.write_text(json.dumps(record, indent=2))
        os.replace(partial, self.pid_file)  # readers never see half a file

    def stop(self) -> dict[str, int | None]:
        """Stop every service and what it started; safe to call more than once."""
        running = [unit for unit in self.units.values() if unit.process is not None]
        if running:
            stop_processes([u.process.pid for u in running], self.stop_timeout, [u.process for u in running])
        for unit in running:
            unit.exit_code, unit.process, unit.state = unit.process.returncode, None, "stopped"
        for unit in self.units.values():
            if unit.log_file is not None:
                unit.log_file.close()
                unit.log_file = None
        self.pid_file.unlink(missing_ok=True)
        return {name: unit.exit_code for name, unit in self.units.items()}


def recorded_pids(home: Path) -> tuple[int | None, dict[str, int]]:
    """(pid of the supervising ``llmops up``, service name -> pid) from ``services.json``; also
    reads the flat ``{name: pid}`` file of earlier versions."""
    pid_file = home / PID_FILE
    try:
        record = json.loads(pid_file.read_text() or "{}")
    except (OSError, ValueError):
        return None, {}
    if "services" not in record:
        return None, {name: int(pid) for name, pid in record.items()}
    pids = {name: int(info["pid"]) for name, info in record["services"].items() if info.get("pid")}
    return record.get("supervisor"), pids


def stop_recorded(home: Path, timeout: float = 30) -> list[int]:
    """Stop what a previous ``llmops up`` recorded: the supervisor first (else it would restart
    what is stopped here), then every service with what it started (after a crash or SIGKILL)."""
    supervisor, pids = recorded_pids(home)
    if supervisor and supervisor != os.getpid() and _alive(supervisor):
        _signal(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(supervisor):
            time.sleep(0.5)
    leaders = list(pids.values())
    stop_processes(leaders, timeout)
    (home / PID_FILE).unlink(missing_ok=True)
    return leaders


def _say(text: str) -> None:
    log.info("%s", text)


def run(config: UpConfig) -> dict:
    from llmops_tasks.local import bootstrap, samples

    env = service_env(config)
    home = Path(env["LLMOPS_HOME"])
    supervisor_pid, recorded = recorded_pids(home)
    running = {name: pid for name, pid in recorded.items() if _alive(pid)}
    if supervisor_pid and _alive(supervisor_pid):
        running["llmops up"] = supervisor_pid
    if running:
        raise StepFailed(f"up: services already run for {home} (pids {running}); stop that `llmops up` first")
    (home / PID_FILE).unlink(missing_ok=True)
    ports = {"airflow_port": config.airflow_port, **({"mlflow_port": config.mlflow_port} if config.mlflow else {})}
    for name, port in ports.items():
        if not _port_free(config.host, port):
            raise StepFailed(f"up: port {port} on {config.host} is already in use; pass --{name.replace('_', '-')} PORT")

    os.environ.update({k: env[k] for k in ("LLMOPS_HOME", "MLFLOW_TRACKING_URI")})
    samples.ensure_sample_data()
    bootstrap.ensure_tiny_model()
    policy = RestartPolicy(config.restart_limit, config.restart_window, config.restart_backoff)
    supervisor = Supervisor(home, env, service_specs(config, env), policy, config.ready_timeout, config.stop_timeout)
    supervisor.log_dir.mkdir(parents=True, exist_ok=True)
    _say(f"llmops up: home {home}; logs in {supervisor.log_dir}")
    with open(supervisor.log_dir / "db-migrate.log", "wb") as log:
        migrate = subprocess.run([_executable("airflow"), "db", "migrate"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if migrate.returncode != 0:
        raise StepFailed(f"up: `airflow db migrate` failed (exit {migrate.returncode}); see "
                         f"{supervisor.log_dir / 'db-migrate.log'}")

    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    airflow_url = f"http://{config.host}:{config.airflow_port}"
    mlflow_url = f"http://{config.host}:{config.mlflow_port}"
    failure = ""
    announced = False
    try:
        while not stop_requested.is_set():
            supervisor.poll()
            if not announced and supervisor.all_ready():
                announced = True
                _say(_banner(config, env, airflow_url, mlflow_url))
            stop_requested.wait(1.0)
    except StepFailed as exc:
        failure = str(exc)
    finally:
        _say("llmops up: stopping the services")
        codes = supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = {"airflow_url": airflow_url, "mlflow_url": mlflow_url if config.mlflow else "",
              "home": str(home), "logs": str(supervisor.log_dir), "exit_codes": codes,
              "restarts": supervisor.restarts()}
    if failure:
        raise StepFailed(failure, result)
    return result


def _banner(config: UpConfig, env: dict[str, str], airflow_url: str, mlflow_url: str) -> str:
    lines = [
        "",
        "llmops up: ready (Ctrl-C stops every service)",
        f"  Airflow UI      {airflow_url}   (DAG llm_retraining: Trigger opens the form with every Param)",
        f"  Approvals page  {airflow_url}/llmops/   (also under Browse > LLMOps approvals in the UI)",
        f"  REST API        {airflow_url}/api/v2   (token: POST {airflow_url}/auth/token with username/password)",
    ]
    if config.mlflow:
        lines.append(f"  MLflow UI       {mlflow_url}")
    lines += [
        f"  log in          {login_hint(env)}",
        f"  executor        LocalExecutor, {config.parallelism} slots; metadata and MLflow on SQLite under {env['LLMOPS_HOME']}",
        (f"  restarts        a service that exits is restarted, at most {config.restart_limit} times within "
         f"{config.restart_window:g} s"),
        "",
    ]
    return "\n".join(lines)


def render(result: dict) -> str:
    return f"llmops up: stopped (logs in {result['logs']})"


def command():
    from llmops_tasks.core.command import Command

    return Command(UpConfig, run, "start Airflow (API server, scheduler, DAG processor, triggerer) and MLflow "
                   "on loopback for the embedded home; a service that dies is restarted (restart_limit), "
                   "Ctrl-C stops them", render=render)
