"""The traces of served answers, written by a process of their own.

Writing a trace (MLflow's span processing, its export threads, the store's transactions) costs a
few milliseconds of CPU per answer: with a small model, more than generating the answer, and in
the serving process every bit of it competes with generation for the GIL. So the server only
builds each answer's record (:func:`record`, microseconds) and hands records, a batch at a time,
to :class:`TraceWriter`'s process, which writes them with :func:`traces.record_answer` into the
same store and experiment. The trace id is chosen when the record is built (a random 128-bit
OpenTelemetry trace id, as MLflow's tracer draws one; MLflow's trace id is derived from it), so the
response carries it before the trace is written; the writer's MLflow uses that id.

- Bounded: at most ``max_pending`` batches wait; past that, handing one over waits for the writer
  (the server slows down to what the store takes; no trace is dropped).
- :meth:`TraceWriter.flush` returns once everything handed over so far is exported (tests, the
  loop demo, a bench); :meth:`TraceWriter.close` flushes and stops the process.
- If the process cannot start or exits, the traces are written in the serving process from then on
  (one error line says so, and how many handed-over batches may not have been written).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import secrets
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def new_trace_id() -> tuple[int, str]:
    """A fresh OpenTelemetry trace id and the MLflow trace id of the trace it will start."""
    from mlflow.tracing.utils import generate_mlflow_trace_id_from_otel_trace_id

    otel_id = 0
    while otel_id == 0:  # 0 is OpenTelemetry's invalid trace id
        otel_id = secrets.randbits(128)
    return otel_id, generate_mlflow_trace_id_from_otel_trace_id(otel_id)


def record(**fields: Any) -> dict[str, Any]:
    """One answer's trace record (the keyword arguments of :func:`traces.record_answer`) with its
    trace id chosen now: ``record["trace_id"]`` is what the response carries."""
    otel_id, trace_id = new_trace_id()
    return {**fields, "otel_trace_id": otel_id, "trace_id": trace_id}


def write_here(records: list[dict[str, Any]]) -> None:
    """Write ``records`` as traces from this process (MLflow's asynchronous export)."""
    from llmops_tasks.serving import traces

    for one in records:
        fields = {k: v for k, v in one.items() if k != "trace_id"}
        try:
            traces.record_answer(**fields)
        except Exception as exc:  # noqa: BLE001 (an answer is not lost because its trace could not be written)
            log.warning("serve: could not record the trace %s of an answer: %s", one.get("trace_id"), exc)


class TraceWriter:
    """Hands trace records to a spawned writing process (see the module's docstring)."""

    def __init__(self, *, max_pending: int = 1000) -> None:
        import multiprocessing

        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._unacknowledged = 0  # batches handed over since the last acknowledged flush
        self._here = False  # no process (it could not start, or exited): write in this process
        self._requests = self._acks = self._process = None
        ours = logging.getLogger("llmops_tasks")
        formatter = ours.handlers[0].formatter if ours.handlers else None
        fmt = getattr(formatter, "_fmt", None) or _FORMAT
        theirs = None
        try:
            context = multiprocessing.get_context("spawn")  # no fork: the server holds threads and a model
            self._requests = context.Queue(maxsize=max_pending)  # needs a semaphore (/dev/shm)
            self._acks, theirs = context.Pipe(duplex=False)
            self._process = context.Process(target=_write, args=(self._requests, theirs, fmt), daemon=True,
                                            name="llmops-trace-writer")
            self._process.start()
        except Exception as exc:  # noqa: BLE001 (no process, no lost traces: write them here)
            log.error("serve: the trace writer process could not start (%s): writing traces in the serving "
                      "process", exc)
            self._here = True
        finally:
            if theirs is not None:
                theirs.close()

    @property
    def in_process(self) -> bool:
        """Whether traces are written in this process (the writer could not start or exited)."""
        return self._here

    def write(self, records: list[dict[str, Any]]) -> None:
        """Hand ``records`` over (waits while ``max_pending`` batches wait already)."""
        if not records:
            return
        if not self._here:
            while self._process.is_alive():
                try:
                    self._requests.put(("records", records), timeout=1.0)
                    self._unacknowledged += 1
                    return
                except queue.Full:  # the writer is behind: wait while it lives
                    pass
            self._gone()
        write_here(records)

    def flush(self, timeout: float = 120.0) -> bool:
        """Whether every record handed over so far was exported within ``timeout`` seconds."""
        import mlflow

        if self._here:
            mlflow.flush_trace_async_logging()
            return True
        with self._lock:
            token = next(self._tokens)
            deadline = time.monotonic() + timeout
            while self._process.is_alive():
                try:
                    self._requests.put(("flush", token), timeout=1.0)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        return False
            while self._process.is_alive() or self._acks.poll(0):
                if self._acks.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                    try:
                        if self._acks.recv() == token:
                            self._unacknowledged = 0
                            return True
                    except EOFError:
                        break
                if time.monotonic() > deadline:
                    return False
        self._gone()
        mlflow.flush_trace_async_logging()
        return False

    def close(self, timeout: float = 120.0) -> None:
        """Write what was handed over, then stop the process; idempotent."""
        if self._here:
            import mlflow

            mlflow.flush_trace_async_logging()
            return
        if self._process.is_alive():
            try:
                self._requests.put(("close", None), timeout=timeout)
            except queue.Full:  # for all that time: the writer is stuck
                log.error("serve: the trace writer did not take the stop request within %.0f s", timeout)
            self._process.join(timeout)
        if self._process.is_alive():
            log.error("serve: the trace writer did not stop within %.0f s: stopping it (traces still "
                      "pending are lost)", timeout)
            self._process.terminate()
            self._process.join(10)
        self._requests.close()
        self._requests.join_thread()
        self._acks.close()
        self._here = True  # anything written after close is written here

    def _gone(self) -> None:
        if self._here:
            return
        self._here = True
        self._process.join(1)
        log.error("serve: the trace writer process exited (code %s): writing traces in the serving process "
                  "from now on; up to %d batch(es) handed to it may not have been written",
                  self._process.exitcode, self._unacknowledged)


def _write(requests, acks, fmt: str) -> None:
    """The writing process: MLflow on the same store, then the records as they come. Ctrl-C is the
    server's to handle (it sends close, then this process writes what is left); a server gone
    without closing (killed) ends it too."""
    import os
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)  # answering first: on a busy CPU the writer takes what generation leaves
    parent = os.getppid()

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    package = logging.getLogger("llmops_tasks")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False

    import mlflow

    from llmops_tasks.core import tracking

    try:
        tracking.client()  # the store the server's environment names (inherited)
        while True:
            try:
                kind, value = requests.get(timeout=5.0)
            except queue.Empty:
                if os.getppid() != parent:
                    log.error("serve: the server exited without stopping the trace writer")
                    return
                continue
            if kind == "records":
                write_here(value)
            elif kind == "flush":
                mlflow.flush_trace_async_logging()
                acks.send(value)
            else:  # close
                mlflow.flush_trace_async_logging()
                return
    finally:
        acks.close()
        sys.stderr.flush()
        os._exit(0)  # everything is exported: skip tearing down MLflow's module graph
