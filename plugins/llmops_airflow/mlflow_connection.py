"""MLflow settings for a task, from the Airflow Connection ``mlflow_default``, read at run time.

Connection fields (type ``http``): ``host`` (a name, or a full URL), ``port``, ``schema`` (the URL
scheme, ``http`` or ``https``; default ``http``), ``login`` / ``password`` (MLflow basic-auth
credentials), extra ``{"registry_uri": ...}`` when the registry lives elsewhere, and extra
``{"path": "/mlflow"}`` for a server behind a path prefix.

``mlflow_env()`` exports ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``) for the duration of the task's block only, then restores what was
there. ``connection_env()`` gives the same values for a step's own process: the local subprocess
gets all of them, a pod only the addresses (its credentials come from a Kubernetes Secret).
Credentials go to the environment MLflow's client reads, never into a return value (XCom), a log
line, an MLflow param or a pod spec; Airflow masks the Connection's password in task logs as well.
Without the Connection, the task keeps the environment it has (the embedded SQLite store).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from llmops_tasks.core.settings import temporary_env

CONN_ID = "mlflow_default"
TRACKING_URI = "MLFLOW_TRACKING_URI"
REGISTRY_URI = "MLFLOW_REGISTRY_URI"
USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"


def tracking_uri(connection) -> str:
    """The tracking server URL a Connection describes; never carries the credentials."""
    host = (connection.host or "").strip().rstrip("/")
    if not host:
        raise ValueError(f"Airflow Connection {connection.conn_id!r}: host is empty; set it to the MLflow server")
    if "://" in host:
        base = host
    else:
        scheme = (connection.schema or "http").strip() or "http"
        if scheme not in ("http", "https"):
            raise ValueError(f"Airflow Connection {connection.conn_id!r}: schema must be http or https "
                             f"(the URL scheme), got {scheme!r}")
        base = f"{scheme}://{host}"
    if connection.port and base.count(":") < 2:
        base = f"{base}:{connection.port}"
    path = str((connection.extra_dejson or {}).get("path", "")).strip("/")
    return f"{base}/{path}" if path else base


def settings_from(connection) -> dict[str, str]:
    """The environment variables MLflow's client reads, from one Connection."""
    env = {TRACKING_URI: tracking_uri(connection)}
    extra = connection.extra_dejson or {}
    if extra.get("registry_uri"):
        env[REGISTRY_URI] = str(extra["registry_uri"])
    if connection.login:
        env[USERNAME] = connection.login
        env[PASSWORD] = connection.password or ""
    return env


def read_connection(conn_id: str = CONN_ID):
    """The Connection, or None when it is not defined (the embedded mode)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def connection_env(conn_id: str = CONN_ID) -> dict[str, str | None]:
    """What the Connection sets in MLflow's environment, None for a variable to remove (a worker's
    own registry URI or credentials must not mix with another server); ``{}`` without it."""
    connection = read_connection(conn_id)
    if connection is None:
        return {}
    values: dict[str, str | None] = {key: None for key in (REGISTRY_URI, USERNAME, PASSWORD)}
    values.update(settings_from(connection))
    return values


@contextlib.contextmanager
def mlflow_env(conn_id: str = CONN_ID) -> Iterator[str]:
    """Point MLflow at the Connection's server for the block; yields the URI (no credentials)."""
    values = connection_env(conn_id)
    with temporary_env(values):
        yield values.get(TRACKING_URI) or os.environ.get(TRACKING_URI, "")
