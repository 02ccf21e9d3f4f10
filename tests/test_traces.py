"""Reading production traces back (``serving.traces.search``) on a real MLflow store.

The fast path reads pages without spans and takes prompt and answer from MLflow's request and
response previews; these tests prove it returns exactly what reading every trace with its spans
returns: long texts past the preview length, message-list prompts, failed answers, assessments,
time windows, and many traces in one millisecond across page boundaries.
"""

from __future__ import annotations

import pytest

from llmops_tasks.core import tracking
from llmops_tasks.serving import traces

BASE_MS = 1_780_000_000_000


def _write(experiment_id: str, prompt, answer: str | None, ms: int, error: str | None = None) -> str:
    start = ms * 1_000_000
    return traces.record_answer(prompt=prompt, answer=answer, model_name="m", model_version="3",
                                model_uri="models:/m@production", tokens_in=4, tokens_out=2, start_ns=start,
                                end_ns=start + 2_000_000, experiment_id=experiment_id, error=error)


def _with_spans(experiment_id: str) -> list[traces.Answer]:
    """Every trace read with its spans, through MLflow's offset token: the slow reference path."""
    client = tracking.client()
    found, token = [], None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=100, order_by=["timestamp_ms ASC"],
                                    page_token=token)
        found += [traces.Answer.from_trace(t) for t in page]
        token = page.token
        if not token:
            return sorted(found, key=lambda a: (a.timestamp_ms, a.trace_id))


def _key(answers):
    return sorted(answers, key=lambda a: (a.timestamp_ms, a.trace_id))


@pytest.fixture
def traffic(mlflow_store, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    experiment = tracking.get_or_create_experiment("traces-test-traffic")
    ids = {
        "short": _write(experiment, "How do I reset my password?", "Open Settings, then Security.", BASE_MS),
        "long": _write(experiment, "Why? " * 400, "Because. " * 300, BASE_MS + 1),  # both past 1000 chars
        "chat": _write(experiment, [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "¿Dónde está la impresora? 打印机在哪里"}],
                       "Second floor.", BASE_MS + 2),
        "failed": _write(experiment, "Summarize this.", None, BASE_MS + 3, error="CUDA out of memory"),
        "quotes": _write(experiment, 'Say "hi" \\ and {braces}', 'He said "hi"...', BASE_MS + 4),
    }
    mlflow.log_feedback(trace_id=ids["short"], name="user_thumbs", value=True)
    return experiment, ids


def test_previews_and_spans_give_the_same_answers(traffic):
    experiment, ids = traffic
    read = list(traces.search(experiment))
    assert read == _with_spans(experiment)
    by_id = {a.trace_id: a for a in read}
    assert by_id[ids["long"]].prompt == "Why? " * 400 and by_id[ids["long"]].answer == "Because. " * 300
    assert by_id[ids["chat"]].prompt[1]["content"] == "¿Dónde está la impresora? 打印机在哪里"
    assert by_id[ids["failed"]].error is True and by_id[ids["failed"]].answer is None
    assert [a.name for a in by_id[ids["short"]].assessments] == ["user_thumbs"]
    assert [a.trace_id for a in read] == [ids[k] for k in ("short", "long", "chat", "failed", "quotes")]


def test_a_window_and_small_pages(traffic):
    experiment, ids = traffic
    window = list(traces.search(experiment, since_ms=BASE_MS + 1, until_ms=BASE_MS + 4, page_size=1))
    assert [a.trace_id for a in window] == [ids["long"], ids["chat"], ids["failed"]]


def test_many_traces_in_one_millisecond_cross_pages_once_each(mlflow_store, monkeypatch):
    """Keyset paging resumes at the last page's millisecond; a millisecond holding more than a page
    is read with MLflow's token. Nothing is read twice or skipped."""
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    experiment = tracking.get_or_create_experiment("traces-test-ties")
    written = [_write(experiment, f"question {i}", f"answer {i}", BASE_MS + (0 if i < 7 else i // 3)) for i in range(16)]
    reference = _with_spans(experiment)
    for page_size in (1, 3, 5, 7, 500):
        read = list(traces.search(experiment, page_size=page_size))
        assert _key(read) == reference, page_size
        assert sorted(a.trace_id for a in read) == sorted(written), page_size
        assert [a.timestamp_ms for a in read] == sorted(a.timestamp_ms for a in read), page_size


def _records(experiment_id: str, n: int, first_ms: int) -> list[dict]:
    from llmops_tasks.serving import trace_writer

    return [trace_writer.record(prompt=f"question {i}", answer=f"answer {i}", model_name="m", model_version="3",
                                model_uri="models:/m@production", tokens_in=4, tokens_out=2,
                                start_ns=(first_ms + i) * 1_000_000, end_ns=(first_ms + i) * 1_000_000 + 2_000_000,
                                experiment_id=experiment_id) for i in range(n)]


def test_the_trace_writer_process_writes_each_trace_under_the_id_chosen_before(mlflow_store):
    """What the server sends with an answer (the record's trace id) is the id of the trace that the
    writer's process (real spawn, real MLflow export on the test's SQLite store) writes."""
    from llmops_tasks.serving.trace_writer import TraceWriter

    experiment = tracking.get_or_create_experiment("traces-test-writer")
    writer = TraceWriter()
    try:
        assert not writer.in_process
        batches = [_records(experiment, 5, BASE_MS), _records(experiment, 3, BASE_MS + 10)]
        for batch in batches:
            writer.write(batch)
        assert writer.flush(timeout=120)
        read = {a.trace_id: a for a in traces.search(experiment)}
        sent = [r for batch in batches for r in batch]
        assert sorted(read) == sorted(r["trace_id"] for r in sent)
        assert all(read[r["trace_id"]].answer == r["answer"] and read[r["trace_id"]].prompt == r["prompt"]
                   for r in sent)
        assert all(r["trace_id"].startswith("tr-") and len(r["trace_id"]) == 35 for r in sent)
        writer.write(_records(experiment, 2, BASE_MS + 20))
    finally:
        writer.close()  # writes what was handed over, then the process exits
    assert not writer._process.is_alive() and writer._process.exitcode == 0
    assert len(list(traces.search(experiment))) == 10


def test_a_writer_gone_is_said_and_its_traces_are_written_here(mlflow_store, caplog):
    import logging

    from llmops_tasks.serving.trace_writer import TraceWriter

    experiment = tracking.get_or_create_experiment("traces-test-writer-gone")
    writer = TraceWriter()
    writer._process.kill()
    writer._process.join(30)
    caplog.set_level(logging.ERROR, logger="llmops_tasks.serving.trace_writer")
    records = _records(experiment, 4, BASE_MS)
    writer.write(records)
    assert writer.in_process and "the trace writer process exited" in caplog.text
    assert writer.flush()
    assert sorted(a.trace_id for a in traces.search(experiment)) == sorted(r["trace_id"] for r in records)
    writer.close()


def test_a_chosen_trace_id_in_this_process_and_traces_without_one(mlflow_store, monkeypatch):

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    experiment = tracking.get_or_create_experiment("traces-test-chosen")
    record = _records(experiment, 1, BASE_MS)[0]
    chosen = traces.record_answer(**{k: v for k, v in record.items() if k != "trace_id"})
    drawn = _write(experiment, "another", "one", BASE_MS + 1)  # no id chosen: MLflow's tracer draws one
    assert chosen == record["trace_id"] != drawn
    assert {a.trace_id for a in traces.search(experiment)} == {chosen, drawn}


def test_a_writer_that_cannot_start_writes_here(mlflow_store, monkeypatch, caplog):
    """No process-shared semaphores (a container without /dev/shm): one error line, traces written here."""
    import logging
    import multiprocessing

    from llmops_tasks.serving.trace_writer import TraceWriter

    def no_semaphores(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(multiprocessing.get_context("spawn"), "Queue", no_semaphores)
    caplog.set_level(logging.ERROR, logger="llmops_tasks.serving.trace_writer")
    experiment = tracking.get_or_create_experiment("traces-test-writer-none")
    writer = TraceWriter()
    assert writer.in_process and "could not start (" in caplog.text
    records = _records(experiment, 3, BASE_MS)
    writer.write(records)
    assert writer.flush()
    writer.close()
    assert sorted(a.trace_id for a in traces.search(experiment)) == sorted(r["trace_id"] for r in records)
