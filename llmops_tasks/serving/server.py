"""``llmops serve``: a registered version over HTTP on MLflow's scoring protocol, every answer traced.

``llmops serve --model models:/llmops-chat@production`` (the default; any ``models:/<name>@<alias>``
or ``models:/<name>/<version>``) loads the version's pyfunc (``model.py``) and answers with its
:class:`~llmops_tasks.serving.generation.Generator`, the code evaluate scored with, so what is
served is what was gated. The app is FastAPI on uvicorn, the stack of ``mlflow models serve``, and
reads requests with MLflow's own parsing:

- ``GET /ping`` (and ``/health``): 200 with ``{"model_name", "model_version"}`` once a version is loaded;
- ``GET /version``: the MLflow version, as MLflow's server answers;
- ``POST /invocations`` (``application/json`` or ``text/csv``): exactly one of ``inputs`` /
  ``instances`` (a list of prompts; a prompt is a string, a list of ``{"role", "content"}``
  messages, or ``{"prompt": ...}``), ``dataframe_records`` / ``dataframe_split`` (a ``prompt``
  column), and optional ``params`` (``max_new_tokens``, at most the server's). Answer:
  ``{"predictions": [{"answer", "trace_id", "model_name", "model_version", "tokens_in",
  "tokens_out"}, ...]}``, one per prompt, in order; ``trace_id`` is null only when the trace could
  not be written (logged). A bad request is 400 with MLflow's error body
  ``{"error_code": "BAD_REQUEST", "message": ...}`` naming what is wrong; an unsupported content
  type 415.

A request's prompts are generated together, ``max_batch_size`` at a time, on one version (a
request never straddles a switch). Each answered prompt is one MLflow trace in the traffic
experiment (``traces.record_answer``: prompt, answer, model name and version, latency, token
counts); MLflow exports traces in the background, so only creating the span is on the answer's
path, and the server flushes them on shutdown. Served by alias, the server checks the alias every
``poll_interval`` seconds; when it moves (a promotion, a rollback) the new version is loaded in
full beside the old one, then swapped in: requests in flight finish on the old one, and the log
says ``production moved: v1 -> v2``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from llmops_tasks.core import settings
from llmops_tasks.core.config import ConfigError, field, require

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass
class ServeConfig:
    model: str = field("", help="registered version to serve: models:/<name>@<alias> (follows the alias) or "
                                "models:/<name>/<version> (default: models:/$LLMOPS_MODEL_NAME@production)")
    host: str = field("127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    port: int = field(8080, help="port to listen on (0: any free port, logged)")
    max_batch_size: int = field(16, help="prompts generated together on the model; a request with more is "
                                         "answered in several batches")
    max_prompts: int = field(256, help="prompts one request may carry at most (more: 400)")
    max_new_tokens: int = field(64, help="tokens generated per answer at most; a request may ask fewer "
                                         "(params.max_new_tokens)")
    poll_interval: float = field(30.0, help="seconds between checks of the alias for a new version (0: never "
                                            "switch); unused when a version number is served")
    traffic_experiment: str = field("", help="MLflow experiment of the answers' traces (default: "
                                             "$LLMOPS_TRAFFIC_EXPERIMENT, else <LLMOPS_MODEL_NAME>-traffic)")
    access_log: bool = field(True, help="log one line per HTTP request")

    def __post_init__(self) -> None:
        self.model = self.model.strip() or f"models:/{settings.model_name()}@production"
        require(_MODEL_URI.match(self.model) is not None,
                f"model (--model): expected models:/<name>@<alias> or models:/<name>/<version>, got {self.model!r}")
        self.host = self.host.strip()
        require(bool(self.host), "host (--host): expected an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        require(0 <= self.port <= 65535, f"port (--port): expected 0 to 65535, got {self.port}")
        require(self.max_batch_size >= 1, f"max_batch_size (--max-batch-size): expected at least 1, got "
                                          f"{self.max_batch_size}")
        require(self.max_prompts >= 1, f"max_prompts (--max-prompts): expected at least 1, got {self.max_prompts}")
        require(self.max_new_tokens >= 1, f"max_new_tokens (--max-new-tokens): expected at least 1, got "
                                          f"{self.max_new_tokens}")
        require(math.isfinite(self.poll_interval) and self.poll_interval >= 0,
                f"poll_interval (--poll-interval): expected seconds >= 0, got {self.poll_interval}")
        self.traffic_experiment = self.traffic_experiment.strip()

    @property
    def model_name(self) -> str:
        return _MODEL_URI.match(self.model)["name"]

    @property
    def alias(self) -> str | None:
        return _MODEL_URI.match(self.model)["alias"]

    @property
    def version(self) -> str | None:
        return _MODEL_URI.match(self.model)["version"]


class BadRequest(ValueError):
    """A request the server cannot answer as asked: 400 with this message."""


# --------------------------------------------------------------------------- the served version


@dataclass(frozen=True)
class Served:
    """One loaded version: its generator, and a lock so one batch at a time runs on it."""

    name: str
    version: str
    generator: Any
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, compare=False)


def _generator_of(pyfunc_model) -> Any:
    """The pyfunc's :class:`Generator`. A version logged before the pyfunc had one (its code is frozen
    in its artifacts) keeps its own model and tokenizer: they are wrapped, not loaded again."""
    from llmops_tasks.serving.generation import Generator

    python_model = pyfunc_model.unwrap_python_model()
    generator = getattr(python_model, "generator", None)
    if generator is not None:
        return generator
    tokenizer = python_model.tokenizer
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    return Generator(python_model.model, tokenizer, str(python_model.model.device))


class Service:
    """What the HTTP layer calls: the served version, hot-switched when its alias moves, and tracing."""

    def __init__(self, config: ServeConfig) -> None:
        from llmops_tasks.core import tracking
        from llmops_tasks.serving import traces

        self.config = config
        self.client = tracking.client()  # also points MLflow's fluent API (pyfunc loading, traces) at the store
        version = self._target_version()  # a model that is not there is refused before anything is created
        self.experiment_name = config.traffic_experiment or traces.traffic_experiment()
        self.experiment_id = tracking.get_or_create_experiment(self.experiment_name, self.client)
        self.switch_lock = threading.Lock()
        self.switches: list[tuple[str, str]] = []
        self.answers = 0
        from llmops_tasks.serving.trace_writer import TraceWriter

        self.writer = TraceWriter()  # its process imports MLflow while the model loads here
        try:
            self.current = self._load(version)
        except BaseException:
            self.writer.close()
            raise
        log.info("serve: traces of every answer go to experiment %r (id %s), written by %s", self.experiment_name,
                 self.experiment_id, "this process" if self.writer.in_process else "a trace writer process")
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _target_version(self) -> str:
        """The version the config names now (the alias's, when it names an alias)."""
        from mlflow.exceptions import MlflowException

        config = self.config
        try:
            if config.alias:
                return str(self.client.get_model_version_by_alias(config.model_name, config.alias).version)
            return str(self.client.get_model_version(config.model_name, config.version).version)
        except MlflowException as exc:
            raise ConfigError(f"model (--model): {config.model} is not in the registry at "
                              f"{settings.tracking_uri()}: {exc.message}") from None

    def _load(self, version: str) -> Served:
        import mlflow.pyfunc

        uri = f"models:/{self.config.model_name}/{version}"
        log.info("serve: loading %s v%s (%s) ...", self.config.model_name, version, uri)
        start = time.monotonic()
        served = Served(self.config.model_name, version, _generator_of(mlflow.pyfunc.load_model(uri)))
        log.info("serve: %s v%s loaded in %.1f s (%s)", served.name, version, time.monotonic() - start,
                 served.generator.device)
        return served

    # ----------------------------------------------------------------------- hot switch

    def check_alias(self) -> bool:
        """Load and swap in the alias's version if it moved; whether it switched."""
        if not self.config.alias:
            return False
        target = self._target_version()
        if target == self.current.version:
            return False
        loaded = self._load(target)  # in full, before the swap: requests keep going to the old one
        with self.switch_lock:
            previous, self.current = self.current, loaded
            self.switches.append((previous.version, loaded.version))
        log.info("serve: %s moved: v%s -> v%s (%s now answers; requests in flight finish on v%s)",
                 self.config.alias, previous.version, loaded.version, self.config.model, previous.version)
        return True

    def start_polling(self) -> None:
        if not self.config.alias or self.config.poll_interval <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll, name="llmops-serve-alias", daemon=True)
        self._poller.start()
        log.info("serve: checking alias %r every %g s", self.config.alias, self.config.poll_interval)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_interval):
            try:
                self.check_alias()
            except Exception as exc:  # noqa: BLE001 (the registry unreachable, a version that fails to load: keep serving)
                log.warning("serve: could not check or load %s (still serving v%s): %s",
                            self.config.model, self.current.version, " ".join(str(exc).split()))

    def close(self) -> None:
        """Stop following the alias; write every trace handed over (then the writer stops)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self.writer.close()

    def flush(self, timeout: float = 120.0) -> bool:
        """Whether the traces of every answer given so far are in the store (within ``timeout`` s)."""
        return self.writer.flush(timeout)

    # ----------------------------------------------------------------------- answering

    def answer(self, prompts: list[Any], max_new_tokens: int | None = None) -> list[dict[str, Any]]:
        """Answers to ``prompts`` from the version serving now, ``max_batch_size`` at a time, one trace each."""
        served = self.current  # this request's version, whatever moves meanwhile
        if not getattr(served.generator.tokenizer, "chat_template", None):
            conversation = next((i for i, p in enumerate(prompts) if isinstance(p, list)), None)
            if conversation is not None:
                raise BadRequest(f"prompt {conversation} is a list of messages, but {served.name} v{served.version} "
                                 "has no chat template: send it as text")
        tokens = max_new_tokens or self.config.max_new_tokens
        size = self.config.max_batch_size
        results: list[dict[str, Any]] = []
        for first in range(0, len(prompts), size):
            chunk = prompts[first:first + size]
            with served.lock:
                start_ns = time.time_ns()
                try:
                    completions = served.generator.answer(chunk, max_new_tokens=tokens, batch_size=size)
                except Exception as exc:
                    end_ns = time.time_ns()
                    error = " ".join(str(exc).split())
                    self._write([self._record(served, prompt, None, 0, 0, start_ns, end_ns, error=error)
                                 for prompt in chunk])
                    raise
                end_ns = time.time_ns()
            records = [self._record(served, prompt, completion.text, completion.tokens_in, completion.tokens_out,
                                    start_ns, end_ns) for prompt, completion in zip(chunk, completions)]
            self._write(records)
            for record, completion in zip(records, completions):
                results.append({
                    "answer": completion.text, "trace_id": record["trace_id"],
                    "model_name": served.name, "model_version": served.version,
                    "tokens_in": completion.tokens_in, "tokens_out": completion.tokens_out,
                })
        self.answers += len(results)
        return results

    def _record(self, served: Served, prompt: Any, answer: str | None, tokens_in: int, tokens_out: int,
                start_ns: int, end_ns: int, error: str | None = None) -> dict[str, Any]:
        """The trace record of one answer (its trace id chosen here, written by the trace writer)."""
        from llmops_tasks.serving import trace_writer

        return trace_writer.record(
            prompt=prompt, answer=answer, model_name=served.name, model_version=served.version,
            model_uri=self.config.model, tokens_in=tokens_in, tokens_out=tokens_out,
            start_ns=start_ns, end_ns=end_ns, experiment_id=self.experiment_id, error=error,
        )

    def _write(self, records: list[dict[str, Any]]) -> None:
        self.writer.write(records)


# --------------------------------------------------------------------------- requests


def _prompt(value: Any, where: str) -> Any:
    """A prompt as generation takes it (a string or a list of messages), or :class:`BadRequest`."""
    if hasattr(value, "tolist") and not isinstance(value, str):  # a numpy cell of a parsed frame
        value = value.tolist()
    if isinstance(value, dict) and set(value) == {"prompt"}:
        value = value["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise BadRequest(f"{where} is empty")
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise BadRequest(f"{where}, message {i}: expected {{\"role\": <text>, \"content\": <text>}}, "
                                 f"got {json.dumps(message, default=str)[:100]}")
        return value
    raise BadRequest(f"{where}: expected text or a list of {{\"role\", \"content\"}} messages, got "
                     f"{json.dumps(value, default=str)[:100]}")


def _frame_prompts(frame) -> list[Any]:
    if "prompt" not in frame.columns:
        raise BadRequest(f"expected a 'prompt' column, got columns {[str(c) for c in frame.columns]}")
    return [_prompt(None if _is_missing(v) else v, f"prompt {i}") for i, v in enumerate(frame["prompt"].tolist())]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def parse_request(body: bytes, content_type: str, *, max_prompts: int, max_new_tokens: int) -> tuple[list[Any], int]:
    """(prompts, max_new_tokens) of one ``/invocations`` body, as ``mlflow models serve`` reads it;
    :class:`BadRequest` naming what is wrong. (An unsupported content type: :class:`UnsupportedMediaType`.)"""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    mime, _, parameters = (content_type or "").partition(";")
    mime = mime.strip().lower()
    charset = next((v.strip().lower() for k, _, v in (p.partition("=") for p in parameters.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    if charset != "utf-8":
        raise UnsupportedMediaType("the scoring server only supports UTF-8")
    params: dict[str, Any] = {}
    try:
        if mime == scoring_server.CONTENT_TYPE_CSV:
            from io import StringIO

            prompts = _frame_prompts(scoring_server.parse_csv_input(StringIO(body.decode("utf-8"))))
        elif mime == scoring_server.CONTENT_TYPE_JSON:
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            if not isinstance(payload, dict):
                raise BadRequest(f"{scoring_server.REQUIRED_INPUT_FORMAT}; got a {type(payload).__name__}")
            params = payload.pop(scoring_server.SERVING_PARAMS_KEY, None) or {}
            keys = set(payload) & scoring_server.SUPPORTED_FORMATS
            if len(keys) != 1 or set(payload) - keys:
                raise BadRequest(f"{scoring_server.REQUIRED_INPUT_FORMAT} (and optionally 'params'); got fields "
                                 f"{sorted(payload)}")
            key = keys.pop()
            if key in (scoring_server.INPUTS, scoring_server.INSTANCES):
                # read as JSON, not through numpy: a batch may mix texts and message lists
                items = payload[key]
                if isinstance(items, dict) and set(items) == {"prompt"}:
                    items = items["prompt"]
                if isinstance(items, str):
                    items = [items]
                if not isinstance(items, list):
                    raise BadRequest(f"'{key}': expected a list of prompts, got {json.dumps(items, default=str)[:100]}")
                prompts = [_prompt(item, f"prompt {i}") for i, item in enumerate(items)]
            else:
                prompts = _frame_prompts(scoring_server.infer_and_parse_data({key: payload[key]}))
        else:
            raise UnsupportedMediaType(f"this server takes {scoring_server.CONTENT_TYPE_JSON} or "
                                       f"{scoring_server.CONTENT_TYPE_CSV}, got {content_type!r}")
    except MlflowException as exc:  # MLflow's own parsing said no
        raise BadRequest(exc.message.split("\n")[0]) from None
    if not prompts:
        raise BadRequest("no prompt in the request")
    if len(prompts) > max_prompts:
        raise BadRequest(f"{len(prompts)} prompts in one request; this server takes at most {max_prompts}")
    if not isinstance(params, dict) or set(params) - {"max_new_tokens"}:
        raise BadRequest(f"params: the only parameter is max_new_tokens, got {json.dumps(params, default=str)[:100]}")
    tokens = params.get("max_new_tokens", max_new_tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= max_new_tokens:
        raise BadRequest(f"params.max_new_tokens: expected an integer from 1 to {max_new_tokens}, got {tokens!r}")
    return prompts, tokens


class UnsupportedMediaType(BadRequest):
    """A content type or charset the server does not read: 415."""


def build_app(service: Service):
    """The FastAPI app: ``/ping``, ``/health``, ``/version``, ``/invocations``."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from mlflow.version import VERSION

    app = FastAPI(title="llmops serve", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, code: str, message: str) -> Response:
        return JSONResponse({"error_code": code, "message": message}, status_code=status)

    # Starlette routes (the request as the one argument): nothing for FastAPI to validate or document.
    async def ping(request) -> Response:
        served = service.current
        return JSONResponse({"status": "ok", "model_name": served.name, "model_version": served.version})

    async def version(request) -> Response:
        return Response(content=VERSION, media_type="application/json")

    async def invocations(request) -> Response:
        body = await request.body()
        try:
            prompts, tokens = parse_request(body, request.headers.get("content-type", ""),
                                            max_prompts=service.config.max_prompts,
                                            max_new_tokens=service.config.max_new_tokens)
        except UnsupportedMediaType as exc:
            return error(415, "BAD_REQUEST", str(exc))
        except BadRequest as exc:
            return error(400, "BAD_REQUEST", str(exc))
        try:
            predictions = await asyncio.to_thread(service.answer, prompts, tokens)
        except BadRequest as exc:
            return error(400, "BAD_REQUEST", str(exc))
        except Exception as exc:
            log.exception("serve: generation failed for a request of %d prompt(s)", len(prompts))
            return error(500, "INTERNAL_ERROR", f"generation failed: {' '.join(str(exc).split())}")
        return JSONResponse({"predictions": predictions})

    app.add_route("/ping", ping, methods=["GET"])
    app.add_route("/health", ping, methods=["GET"])
    app.add_route("/version", version, methods=["GET"])
    app.add_route("/invocations", invocations, methods=["POST"])
    return app


# --------------------------------------------------------------------------- the server


def _quiet_exit_server(uvicorn):
    """uvicorn's Server, except that after a graceful stop on SIGINT / SIGTERM it does not raise the
    signal again (it would end the process with a KeyboardInterrupt traceback, or before the
    traces are flushed and the result is written)."""
    import contextlib
    import signal

    class QuietExit(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return QuietExit


class Server:
    """The app on uvicorn: :meth:`serve_forever` (the CLI) or :meth:`start` / :meth:`stop` (a thread)."""

    def __init__(self, config: ServeConfig) -> None:
        import uvicorn

        self.config = config
        self.service = Service(config)
        self.app = build_app(self.service)
        self.uvicorn = _quiet_exit_server(uvicorn)(uvicorn.Config(
            self.app, host=config.host, port=config.port, log_config=None, access_log=config.access_log,
            lifespan="off",
        ))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        servers = getattr(self.uvicorn, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until SIGINT / SIGTERM."""
        self.service.start_polling()
        try:
            self.uvicorn.run()
        finally:
            self.service.close()

    def start(self, timeout: float = 30.0) -> Server:
        """Serve in a background thread; returns when the socket listens."""
        self.service.start_polling()
        # uvicorn captures signals only in the main thread: this one leaves them to the caller
        self._thread = threading.Thread(target=self.uvicorn.run, name="llmops-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"serve: the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        log.info("serve: %s answers on %s", self.config.model, self.url)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.service.close()



def _uvicorn_logs_like_ours() -> None:
    """uvicorn's lines (start, stop, one per request) in the step's log format, where the CLI set one up."""
    ours = logging.getLogger("llmops_tasks")
    if not ours.handlers:
        return
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = list(ours.handlers)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run(config: ServeConfig) -> dict:
    _uvicorn_logs_like_ours()
    server = Server(config)
    log.info("serve: %s on http://%s:%s (POST /invocations, GET /ping); Ctrl-C stops", config.model,
             config.host, config.port)
    server.serve_forever()
    service = server.service
    return {
        "model": config.model, "model_name": config.model_name, "served_version": service.current.version,
        "switches": [f"v{a} -> v{b}" for a, b in service.switches], "answers": service.answers,
        "traffic_experiment": service.experiment_name, "traffic_experiment_id": service.experiment_id,
    }


def command():
    from llmops_tasks.core.command import Command

    return Command(ServeConfig, run, "serve a registered model over HTTP (MLflow scoring protocol), tracing every answer")
