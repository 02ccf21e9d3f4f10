"""The pipeline on PostgreSQL: Airflow's metadata DB and MLflow's backend store on a real server.

The test starts its own PostgreSQL (``initdb`` + ``pg_ctl``) in a temp folder on a free loopback
port, creates one database for Airflow and one for MLflow, migrates Airflow's schema, runs
``llm_retraining`` with ``airflow dags test`` (as ``llmops demo`` does) and checks that the new
version holds ``production`` in the PostgreSQL-backed registry. The server is always stopped.

PostgreSQL refuses to run as root; when the tests run as root the server runs as the
``postgres`` system user (or ``nobody``). ``.ci/run`` installs the server binaries when missing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmops_tasks.local.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "llm_retraining"
MODEL_NAME = "pg-chat"
PG_USER = "llmops"


def _server_binaries() -> tuple[str, str]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):  # Debian keeps them out of PATH
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if versions:
            initdb, pg_ctl = str(versions[-1]), str(versions[-1].with_name("pg_ctl"))
    assert initdb and pg_ctl, "PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them"
    return initdb, pg_ctl


def _as_server_user() -> list[str]:
    """A prefix that runs a command as a non-root user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _server_binaries()
    prefix = _as_server_user()
    folder = Path(tempfile.mkdtemp(prefix="llmops-pg-"))  # not under pytest's root-only tmp dirs
    folder.chmod(0o755)
    if prefix:
        shutil.chown(folder, user=prefix[2])
    data_dir, port = folder / "data", free_port()
    subprocess.run([*prefix, initdb, "-D", str(data_dir), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    start = subprocess.run([*prefix, pg_ctl, "-D", str(data_dir), "-l", str(folder / "server.log"), "-w", "-t", "60",
                            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                           capture_output=True, text=True, check=False)
    try:
        assert start.returncode == 0, start.stdout + start.stderr + (folder / "server.log").read_text(errors="replace")
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE airflow")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield {"port": port, "url": f"{PG_USER}@127.0.0.1:{port}"}
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_pipeline_on_postgres(postgres, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "LLMOPS"))}
    env.update({
        "LLMOPS_HOME": str(home),
        "LLMOPS_MODEL_NAME": MODEL_NAME,
        "LLMOPS_RETRAIN_SCHEDULE": "none",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{postgres['url']}/airflow",
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the driver the package installs.
        "MLFLOW_TRACKING_URI": f"postgresql+psycopg2://{postgres['url']}/mlflow",
    })
    from llmops_tasks.local import embedded

    env = embedded.airflow_env(env)  # everything else as the embedded mode sets it
    env["LLMOPS_ALLOW_APPROVAL_WAIVER"] = "true"  # this deployment lets the run waive the human
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    conf = {"require_approval": False, "max_steps": 20, "max_new_tokens": 8}
    run = subprocess.run([airflow, "dags", "test", DAG_ID, "--conf", json.dumps(conf)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, check=False)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]

    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=postgres["port"], user=PG_USER, dbname="airflow")
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT state FROM dag_run WHERE dag_id = %s", (DAG_ID,))
        assert [row[0] for row in cursor.fetchall()] == ["success"]
        cursor.execute("SELECT task_id, state FROM task_instance WHERE dag_id = %s", (DAG_ID,))
        states = dict(cursor.fetchall())
    connection.close()
    assert states["promote"] == "success" and states["waive_approval"] == "success", states

    from llmops_tasks import registry
    from llmops_tasks.core import tracking
    from llmops_tasks.core.settings import temporary_env

    with temporary_env({"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"], "LLMOPS_MODEL_NAME": MODEL_NAME}):
        aliases = registry.alias_versions(MODEL_NAME, tracking.client())
    assert aliases.get(registry.PRODUCTION) == "1" and aliases.get(registry.STAGING) == "1", aliases
