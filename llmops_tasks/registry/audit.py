"""Who moved which alias of a registered model, when and why: locking and the append-only audit log.

Two registry guarantees live here, both built only on what every MLflow store offers:

- ``registry_lock``: MLflow has no compare-and-set on aliases, but creating a registered model is
  atomic in every store (the name is unique), so a short-lived registered model
  ``<name>.registry-lock`` is the mutex that serializes alias moves of ``<name>``. A holder that
  died leaves a lock whose ``llmops.lock_expires`` has passed; the next caller removes it.
- ``AuditLog``: one JSON line per event in ``audit.jsonl``, an artifact of a dedicated MLflow run per
  model (experiment ``<experiment>-registry-audit``, run tag ``llmops.audit_model``; the registered
  model's tag ``llmops.audit_run`` points at it). Appending re-uploads the file, so it is done under
  the lock, refuses to drop or change any earlier byte, and chains the lines: each carries the
  sha256 of everything before it (``prev_sha256``), so a rewritten history does not verify.
  Every event has a deterministic ``event_id``; appending one that is already there is a no-op,
  which keeps retried tasks from writing a second line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmops_tasks.core import settings, tracking
from llmops_tasks.core.errors import StepFailed

LOCK_SUFFIX = ".registry-lock"
AUDIT_FILE = "audit.jsonl"
AUDIT_RUN_TAG = "llmops.audit_run"
TAG_AUDIT_MODEL = "llmops.audit_model"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- lock


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def registry_lock(name: str, mlflow_client, *, holder: str, timeout_s: float = 120.0,
                  lease_s: float = 600.0) -> Iterator[None]:
    """Hold the mutex of model ``name`` for the block; wait up to ``timeout_s`` for another holder."""
    from mlflow.exceptions import MlflowException

    lock = lock_name(name)
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        expires = time.time() + lease_s
        try:
            mlflow_client.create_registered_model(
                lock,
                tags={"llmops.lock_holder": holder, "llmops.lock_expires": f"{expires:.3f}"},
                description=f"Held while `{name}`'s aliases move; removed when the move ends.",
            )
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        current = _lock_tags(lock, mlflow_client)
        if current is not None and float(current.get("llmops.lock_expires", "0") or 0) < time.time():
            _remove_lock(lock, mlflow_client)  # its holder died before releasing it
            continue
        if time.monotonic() > deadline:
            who = (current or {}).get("llmops.lock_holder", "unknown")
            raise StepFailed(
                f"registry: {name} is locked by another alias move ({who}) for more than {timeout_s:.0f}s; "
                f"if that holder is gone, delete the registered model '{lock}'",
                {"model_name": name, "changed": False, "locked_by": who},
            )
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        _remove_lock(lock, mlflow_client)


def _lock_tags(lock: str, mlflow_client) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(mlflow_client.get_registered_model(lock).tags or {})
    except MlflowException:
        return None


def _remove_lock(lock: str, mlflow_client) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):
        mlflow_client.delete_registered_model(lock)


# --------------------------------------------------------------------------- audit log


def event_id(*parts: Any) -> str:
    """Deterministic id of an event, so a retried task recognises the line it already wrote."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:24]


def verify(text: str) -> list[dict]:
    """Parse an audit log and check its hash chain; raise ValueError naming the first broken line."""
    events, digest = [], hashlib.sha256()
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        event = json.loads(line)
        if event.get("prev_sha256") != digest.hexdigest():
            raise ValueError(f"{AUDIT_FILE} line {number}: prev_sha256 does not match the lines before it")
        events.append(event)
        digest.update(line.encode())
    return events


class AuditLog:
    """The append-only ``audit.jsonl`` of one registered model. Append only under ``registry_lock``."""

    def __init__(self, name: str, mlflow_client):
        self.name = name
        self.client = mlflow_client
        self._run_id: str | None = None

    def run_id(self, create: bool = True) -> str | None:
        if self._run_id:
            return self._run_id
        experiment = _audit_experiment(self.client, create=create)
        if experiment is None:
            return None
        found = self.client.search_runs(
            [experiment], filter_string=f"tags.`{TAG_AUDIT_MODEL}` = '{self.name}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )
        if found:
            self._run_id = found[0].info.run_id
        elif create:
            run = self.client.create_run(experiment, run_name=f"audit: {self.name}",
                                         tags={TAG_AUDIT_MODEL: self.name, "llmops.role": "audit"})
            self.client.set_terminated(run.info.run_id, "FINISHED")
            self._run_id = run.info.run_id
            self.client.set_registered_model_tag(self.name, AUDIT_RUN_TAG, self._run_id)
        return self._run_id

    def text(self) -> str:
        """The log as stored ('' when nothing was recorded yet)."""
        run_id = self.run_id(create=False)
        if run_id is None or AUDIT_FILE not in {a.path for a in self.client.list_artifacts(run_id)}:
            return ""
        with tempfile.TemporaryDirectory() as folder:
            local = self.client.download_artifacts(run_id, AUDIT_FILE, folder)
            return Path(local).read_text(encoding="utf-8")

    def events(self) -> list[dict]:
        return verify(self.text())

    def append(self, event: dict[str, Any]) -> bool:
        """Add one event (it must carry ``event_id``); False when that event is already recorded."""
        before = self.text()
        known = verify(before)
        if any(e.get("event_id") == event["event_id"] for e in known):
            return False
        record = {"at": now(), "model": self.name, **event,
                  "prev_sha256": hashlib.sha256(before.encode()).hexdigest()}
        after = before + json.dumps(record, sort_keys=True, default=str) + "\n"
        if not after.startswith(before):  # the one property this file promises
            raise RuntimeError(f"{AUDIT_FILE}: an append would rewrite earlier lines")
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / AUDIT_FILE
            local.write_text(after, encoding="utf-8")
            self.client.log_artifact(self.run_id(), str(local))
        return True


def _audit_experiment(mlflow_client, create: bool) -> str | None:
    return tracking.get_or_create_experiment(f"{settings.experiment_name()}-registry-audit", mlflow_client,
                                             create=create)