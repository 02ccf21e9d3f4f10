"""Production traffic as MLflow traces: the record every served answer leaves, and how it is read.

One trace per answered prompt, in the deployment's traffic experiment
(``$LLMOPS_TRAFFIC_EXPERIMENT``, default ``<model name>-traffic``). Serving writes them
(:func:`record_answer`); feedback attaches MLflow assessments to them; curation and monitoring
read them back (:func:`search`, :class:`Answer`). This module is the contract between the three:

- root span ``answer`` (span type ``LLM``): inputs ``{"prompt": <text or message list>}``,
  outputs ``{"answer": <text>}``; status ERROR with the exception's message for a failed answer;
- trace tags: ``llmops.kind=production-traffic``, ``llmops.model_name``, ``llmops.model_version``;
- trace metadata (strings): ``llmops.model_uri`` (what the server was asked to serve, e.g.
  ``models:/llmops-chat@production``), ``llmops.prompt_key`` (the prompt's normalized key: the
  same question asked twice has the same key), ``llmops.tokens_in``, ``llmops.tokens_out``,
  ``llmops.latency_ms``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any

from llmops_tasks.core import settings

TRAFFIC_EXPERIMENT_ENV = "LLMOPS_TRAFFIC_EXPERIMENT"
SPAN_NAME = "answer"
KIND = "production-traffic"
TAG_KIND = "llmops.kind"
TAG_MODEL_NAME = "llmops.model_name"
TAG_MODEL_VERSION = "llmops.model_version"
META_MODEL_URI = "llmops.model_uri"
META_PROMPT_KEY = "llmops.prompt_key"
META_TOKENS_IN = "llmops.tokens_in"
META_TOKENS_OUT = "llmops.tokens_out"
META_LATENCY_MS = "llmops.latency_ms"


def traffic_experiment() -> str:
    """The experiment production traces go to: ``$LLMOPS_TRAFFIC_EXPERIMENT``, else ``<model>-traffic``."""
    return os.environ.get(TRAFFIC_EXPERIMENT_ENV, "").strip() or f"{settings.model_name()}-traffic"


def prompt_key(prompt: Any) -> str:
    """A stable key of a prompt: NFKC, case-folded, whitespace collapsed; a conversation by its
    roles and contents. Two users asking the same thing in different spacing or case share it."""
    if isinstance(prompt, list):
        text = json.dumps([[str(m.get("role", "")), _normal(m.get("content", ""))] for m in prompt],
                          ensure_ascii=False)
    else:
        text = _normal(prompt)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _normal(text: Any) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def record_answer(
    *, prompt: Any, answer: str | None, model_name: str, model_version: str, model_uri: str,
    tokens_in: int, tokens_out: int, start_ns: int, end_ns: int, experiment_id: str,
    error: str | None = None, otel_trace_id: int | None = None,
) -> str:
    """Write one answered (or failed) prompt as a trace; returns its trace id. ``otel_trace_id``:
    the OpenTelemetry trace id it gets (chosen by the server, which sent the answer with the MLflow
    trace id derived from it); default: one MLflow's tracer draws."""
    import mlflow
    from mlflow.entities import SpanStatusCode, SpanType

    latency_ms = max(0.0, (end_ns - start_ns) / 1e6)
    with _chosen_trace_id(otel_trace_id):
        span = mlflow.start_span_no_context(
            SPAN_NAME, span_type=SpanType.LLM, inputs={"prompt": prompt}, experiment_id=experiment_id,
            start_time_ns=start_ns,
            attributes={"model_name": model_name, "model_version": str(model_version)},
            tags={TAG_KIND: KIND, TAG_MODEL_NAME: model_name, TAG_MODEL_VERSION: str(model_version)},
            metadata={
                META_MODEL_URI: model_uri, META_PROMPT_KEY: prompt_key(prompt),
                META_TOKENS_IN: str(int(tokens_in)), META_TOKENS_OUT: str(int(tokens_out)),
                META_LATENCY_MS: f"{latency_ms:.3f}",
            },
        )
    if otel_trace_id is not None and span.trace_id != _mlflow_trace_id(otel_trace_id):
        raise RuntimeError(f"MLflow {mlflow.__version__} started trace {span.trace_id}, not the chosen "
                           f"{_mlflow_trace_id(otel_trace_id)} (its tracer no longer takes the id generator "
                           "set by llmops_tasks.serving.traces)")
    if error is not None:
        span.set_status(SpanStatusCode.ERROR)
        span.set_attribute("error", error)
    else:
        span.set_outputs({"answer": answer})
    span.end(end_time_ns=end_ns)
    return span.trace_id


def _mlflow_trace_id(otel_trace_id: int) -> str:
    from mlflow.tracing.utils import generate_mlflow_trace_id_from_otel_trace_id

    return generate_mlflow_trace_id_from_otel_trace_id(otel_trace_id)


class _ChosenIds:
    """An OpenTelemetry id generator that gives the trace id this thread chose, once, and otherwise
    what the generator it wraps gives (span ids, traces started without a chosen id)."""

    def __init__(self, drawn) -> None:
        self.drawn = drawn
        self.chosen = threading.local()

    def generate_trace_id(self) -> int:
        chosen = getattr(self.chosen, "trace_id", None)
        if chosen is None:
            return self.drawn.generate_trace_id()
        self.chosen.trace_id = None
        return chosen

    def generate_span_id(self) -> int:
        return self.drawn.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # the chosen ids are drawn at random too (trace_writer.new_trace_id)


_CHOSEN_LOCK = threading.Lock()


@contextlib.contextmanager
def _chosen_trace_id(otel_trace_id: int | None):
    """MLflow's tracer starts the next trace of this thread with ``otel_trace_id``.

    MLflow builds its own OpenTelemetry tracer provider (no hook for an id generator), so this sets
    the generator on it and on the tracer it starts spans with (OpenTelemetry SDK attributes), again
    whenever MLflow has rebuilt them; :func:`record_answer` checks the trace id it got.
    """
    if otel_trace_id is None:
        yield
        return
    from mlflow.tracing import provider

    tracer = provider._get_tracer(provider.__name__)  # what start_span_no_context uses (start_detached_span)
    with _CHOSEN_LOCK:
        generator = getattr(tracer, "id_generator", None)
        if not isinstance(generator, _ChosenIds):
            generator = _ChosenIds(generator)
            tracer.id_generator = generator
            tracer_provider = provider.provider.get()
            if hasattr(tracer_provider, "id_generator"):
                tracer_provider.id_generator = generator
    generator.chosen.trace_id = otel_trace_id
    try:
        yield
    finally:
        generator.chosen.trace_id = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """One production answer read back from its trace."""

    trace_id: str
    timestamp_ms: int
    prompt: Any
    answer: str | None
    model_name: str
    model_version: str
    prompt_key: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    error: bool
    assessments: tuple[Any, ...]  # mlflow.entities.Assessment (feedback and expectations)

    @classmethod
    def from_trace(cls, trace) -> Answer:
        """From a trace with its spans: the root span's inputs and outputs."""
        root = next((s for s in trace.data.spans if s.parent_id is None), None) if trace.data else None
        inputs = (root.inputs if root is not None else None) or {}
        outputs = (root.outputs if root is not None else None) or {}
        return cls.from_info(trace.info, inputs if isinstance(inputs, dict) else {"prompt": inputs},
                             outputs if isinstance(outputs, dict) else {})

    @classmethod
    def from_info(cls, info, inputs: dict, outputs: dict) -> Answer:
        """From a trace's info record and the root span's inputs and outputs (read from the spans,
        or from the info's request/response previews when those hold them whole)."""
        meta = info.trace_metadata or {}
        tags = info.tags or {}
        return cls(
            trace_id=info.trace_id,
            timestamp_ms=int(info.request_time),
            prompt=inputs.get("prompt"),
            answer=outputs.get("answer"),
            model_name=tags.get(TAG_MODEL_NAME, ""),
            model_version=tags.get(TAG_MODEL_VERSION, ""),
            prompt_key=meta.get(META_PROMPT_KEY, ""),
            tokens_in=int(meta.get(META_TOKENS_IN, 0) or 0),
            tokens_out=int(meta.get(META_TOKENS_OUT, 0) or 0),
            latency_ms=float(meta.get(META_LATENCY_MS, 0) or 0),
            error=_failed(info),
            assessments=tuple(info.assessments or ()),
        )


# The most traces one search request may ask for: the MLflow server's cap (its search-traces
# handler refuses more than 500); a local store gains little from larger pages.
MAX_PAGE = 500
SPAN_FETCH = 100  # traces fetched with their spans per request, by id


def _failed(info) -> bool:
    return str(getattr(info.state, "value", info.state)) == "ERROR"


def _preview_limit() -> int:
    """Previews longer than this are cut (to this length, ending in "..."): MLflow's own limits."""
    from mlflow.tracing.constant import (
        TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_DBX,
        TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_OSS,
    )
    from mlflow.utils.uri import is_databricks_uri

    return (TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_DBX if is_databricks_uri(settings.tracking_uri())
            else TRACE_REQUEST_RESPONSE_PREVIEW_MAX_LENGTH_OSS)


def _whole(preview: str | None, limit: int) -> Any:
    """The JSON a preview holds, when it certainly holds all of it (shorter than the cut length)."""
    if preview is None or len(preview) >= limit:
        return None
    try:
        return json.loads(preview)
    except ValueError:
        return None


def _from_preview(info, limit: int) -> Answer | None:
    """The answer from the info's previews alone, or None when they may be cut or are not ours."""
    inputs = _whole(info.request_preview, limit)
    failed = _failed(info)
    outputs = {} if failed else _whole(info.response_preview, limit)
    if not (isinstance(inputs, dict) and "prompt" in inputs and isinstance(outputs, dict)
            and (failed or "answer" in outputs)):
        return None
    return Answer.from_info(info, inputs, outputs)


def _answers(client, experiment_id: str, infos: list, limit: int) -> Iterator[Answer]:
    """The answers of a page of trace infos, in order; spans fetched (by id) only where needed."""
    answers = [_from_preview(info, limit) for info in infos]
    need = [info.trace_id for info, answer in zip(infos, answers) if answer is None]
    whole: dict[str, Answer] = {}
    for first in range(0, len(need), SPAN_FETCH):
        ids = ", ".join(f"'{t}'" for t in need[first:first + SPAN_FETCH])
        for trace in client.search_traces(locations=[experiment_id], max_results=SPAN_FETCH,
                                          filter_string=f"attributes.request_id IN ({ids})"):
            whole[trace.info.trace_id] = Answer.from_trace(trace)
    for info, answer in zip(infos, answers):
        answer = answer or whole.get(info.trace_id)
        if answer is not None:
            yield answer


def search(experiment_id: str, *, since_ms: int | None = None, until_ms: int | None = None,
           extra_filter: str | None = None, page_size: int = MAX_PAGE) -> Iterator[Answer]:
    """The experiment's production answers, oldest first, page by page (never all in memory),
    optionally within ``[since_ms, until_ms)`` of their request time.

    Read through MLflow's API, so it works on any tracking store and against an MLflow server.
    Pages are read without spans (``include_spans=False``: MLflow's span loading costs ~9x the rest
    on a SQL store) and the prompt and answer taken from the trace's request/response previews,
    which MLflow keeps whole up to its preview length (1000 characters outside Databricks); a trace
    whose preview may be cut is fetched with its spans, by id. Paging is by request time (keyset:
    the next page starts at the last one's millisecond, skipping what was read there), not by
    MLflow's offset token, whose cost grows with every trace before the page; only a millisecond
    holding a whole page is read with the token.
    """
    import mlflow

    client = mlflow.MlflowClient()
    page_size = max(1, min(int(page_size), MAX_PAGE))
    limit = _preview_limit()
    base = [f"tags.`{TAG_KIND}` = '{KIND}'"]
    if until_ms is not None:
        base.append(f"attributes.timestamp_ms < {int(until_ms)}")
    if extra_filter:
        base.append(extra_filter)

    def page_of(clauses: list[str], token: str | None = None):
        return client.search_traces(locations=[experiment_id], filter_string=" AND ".join(clauses),
                                    max_results=page_size, order_by=["timestamp_ms ASC"], include_spans=False,
                                    page_token=token)

    lower, seen = since_ms, set()  # seen: the traces already yielded at request time == lower
    while True:
        page = page_of(base + ([f"attributes.timestamp_ms >= {int(lower)}"] if lower is not None else []))
        infos = [t.info for t in page if t.info.trace_id not in seen]
        yield from _answers(client, experiment_id, infos, limit)
        if len(page) < page_size:
            return
        last = int(page[-1].info.request_time)
        at_last = {t.info.trace_id for t in page if int(t.info.request_time) == last}
        if len(at_last) == len(page):  # a whole page in one millisecond: read that one with the token
            read, token = seen | at_last, None
            while True:
                more = page_of(base + [f"attributes.timestamp_ms = {last}"], token)
                yield from _answers(client, experiment_id, [t.info for t in more if t.info.trace_id not in read],
                                    limit)
                read |= {t.info.trace_id for t in more}
                token = more.token
                if not token:
                    break
            lower, seen = last + 1, set()
        else:
            lower, seen = last, at_last
