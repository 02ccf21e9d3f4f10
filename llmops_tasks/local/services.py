"""``llmops up``: the embedded deployment as real services on loopback.

``llmops demo`` proves the pipeline with ``airflow dags test``; this starts what a team actually
uses: the Airflow API server (UI, REST API, our plugin page), scheduler with the LocalExecutor,
DAG processor and triggerer (which wakes the approval step), plus an MLflow server for the run
links, all on the embedded home's SQLite stores. Each service runs in its own process group with
its log under ``$LLMOPS_HOME/logs/services/``; Ctrl-C or SIGTERM stops every group (SIGTERM,
then SIGKILL after ``stop_timeout``), and a service that dies stops the rest.

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
from dataclasses import dataclass
from pathlib import Path

from llmops_tasks.core.config import field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import embedded

log = logging.getLogger(__name__)

AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
PID_FILE = "services.json"


@dataclass
class UpConfig:
    host: str = field("127.0.0.1", help="address every service listens on (loopback: reachable from this machine only)")
    airflow_port: int = field(8080, help="port of the Airflow API server (UI, REST API, plugin page)")
    mlflow_port: int = field(5000, help="port of the MLflow server (UI for runs and the model registry)")
    parallelism: int = field(2, help="task slots of the LocalExecutor (each heavy step is one process)")
    users: str = field("admin:admin", help="simple auth manager users as name:role[,name:role]; roles: "
                                           "viewer, user, op, admin; passwords are generated on first start")
    mlflow: bool = field(True, help="also start the MLflow server next to Airflow")
    ready_timeout: int = field(300, help="seconds to wait for every service to report healthy")
    stop_timeout: int = field(30, help="seconds a service gets to stop on SIGTERM before it is killed")

    def __post_init__(self) -> None:
        for name in ("airflow_port", "mlflow_port"):
            port = getattr(self, name)
            require(0 < port < 65536, f"up: {name} must be a TCP port (1-65535), got {port}")
        require(self.airflow_port != self.mlflow_port or not self.mlflow,
                f"up: airflow_port and mlflow_port are both {self.airflow_port}; pick two ports")
        require(self.parallelism > 0, f"up: parallelism must be positive, got {self.parallelism}")
        require(self.ready_timeout > 0 and self.stop_timeout > 0, "up: ready_timeout and stop_timeout must be positive")
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


def airflow_healthy(base_url: str) -> bool:
    """True when the API server answers and reports every component healthy."""
    health = _http_json(f"{base_url}/api/v2/monitor/health")
    if not health:
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((health.get(part) or {}).get("status") == "healthy" for part in parts)


def mlflow_healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


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


class Services:
    """The started process groups; ``stop()`` is safe to call more than once."""

    def __init__(self, home: Path) -> None:
        self.pid_file = home / PID_FILE
        self.log_dir = home / "logs" / "services"
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        # Own process group: stopping a service also stops its workers and task subprocesses.
        self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(json.dumps({n: p.pid for n, p in self.processes.items()}))

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def stop(self, timeout: float) -> dict[str, int | None]:
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)  # leftovers of the group (workers, tasks)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs:
            log.close()
        self._logs.clear()
        self.pid_file.unlink(missing_ok=True)
        return {name: p.returncode for name, p in self.processes.items()}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_recorded(home: Path, timeout: float = 30) -> list[int]:
    """Stop the process groups a previous ``llmops up`` recorded (after a crash or SIGKILL)."""
    pid_file = home / PID_FILE
    if not pid_file.is_file():
        return []
    pids = [int(p) for p in json.loads(pid_file.read_text() or "{}").values()]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return pids


def _say(text: str) -> None:
    log.info("%s", text)


def run(config: UpConfig) -> dict:
    from llmops_tasks.local import bootstrap, samples

    env = service_env(config)
    home = Path(env["LLMOPS_HOME"])
    pid_file = home / PID_FILE
    if pid_file.is_file():
        recorded = json.loads(pid_file.read_text() or "{}")
        running = {name: pid for name, pid in recorded.items() if _alive(int(pid))}
        if running:
            raise StepFailed(f"up: services already run for {home} (pids {running}); stop that `llmops up` first")
        pid_file.unlink()
    ports = {"airflow_port": config.airflow_port, **({"mlflow_port": config.mlflow_port} if config.mlflow else {})}
    for name, port in ports.items():
        if not _port_free(config.host, port):
            raise StepFailed(f"up: port {port} on {config.host} is already in use; pass --{name.replace('_', '-')} PORT")

    os.environ.update({k: env[k] for k in ("LLMOPS_HOME", "MLFLOW_TRACKING_URI")})
    samples.ensure_sample_data()
    bootstrap.ensure_tiny_model()
    services = Services(home)
    services.log_dir.mkdir(parents=True, exist_ok=True)
    _say(f"llmops up: home {home}; logs in {services.log_dir}")
    with open(services.log_dir / "db-migrate.log", "wb") as log:
        migrate = subprocess.run([_executable("airflow"), "db", "migrate"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if migrate.returncode != 0:
        raise StepFailed(f"up: `airflow db migrate` failed (exit {migrate.returncode}); see "
                         f"{services.log_dir / 'db-migrate.log'}")

    stop_requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop_requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    airflow_url = f"http://{config.host}:{config.airflow_port}"
    mlflow_url = f"http://{config.host}:{config.mlflow_port}"
    failure = ""
    try:
        for name, command in service_commands(config, env).items():
            services.start(name, command, env)
        deadline = time.monotonic() + config.ready_timeout
        ready = False
        while not stop_requested.is_set() and not failure:
            if dead := services.exited():
                failure = _failure(dead, services.log_dir)
                break
            if not ready and airflow_healthy(airflow_url) and (not config.mlflow or mlflow_healthy(mlflow_url)):
                ready = True
                _say(_banner(config, env, airflow_url, mlflow_url))
            if not ready and time.monotonic() > deadline:
                failure = (f"up: the services were not healthy after {config.ready_timeout} s; "
                           f"see the logs in {services.log_dir}")
                break
            stop_requested.wait(1.0)
    finally:
        _say("llmops up: stopping the services")
        codes = services.stop(config.stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = {"airflow_url": airflow_url, "mlflow_url": mlflow_url if config.mlflow else "",
              "home": str(home), "logs": str(services.log_dir), "exit_codes": codes}
    if failure:
        raise StepFailed(failure, result)
    return result


def _failure(dead: dict[str, int], log_dir: Path) -> str:
    lines = []
    for name, code in dead.items():
        tail = (log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
        lines.append(f"{name} exited with code {code}; last lines of {log_dir / (name + '.log')}:\n  "
                     + "\n  ".join(tail))
    return "up: a service stopped, so every service was stopped:\n" + "\n".join(lines)


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
        "",
    ]
    return "\n".join(lines)


def render(result: dict) -> str:
    return f"llmops up: stopped (logs in {result['logs']})"


def command():
    from llmops_tasks.core.command import Command

    return Command(UpConfig, run, "start Airflow (API server, scheduler, DAG processor, triggerer) and MLflow "
                   "on loopback for the embedded home; Ctrl-C stops them", render=render)
