"""``llmops demo --loop``: one turn of the feedback loop on real services.

After a first production version (made here, through Airflow, when there is none) it:

1. serves ``models:/<name>@production`` on loopback (``llmops serve``'s server, MLflow scoring
   protocol, one trace per answer);
2. sends the production version's evaluation prompts as users would, in batches;
3. gives feedback from a simple oracle standing in for users: an answer whose ROUGE-L against the
   reference answer reaches ``thumbs_up_rouge`` gets a thumbs up, any other a thumbs down and the
   reference as its correction (MLflow assessments, as ``llmops feedback log`` writes them);
4. triggers ``feedback_curation`` through Airflow's REST API; its snapshot's asset event makes the
   scheduler start ``llm_retraining`` on the new snapshot;
5. answers that run's approval through Airflow's HITL REST endpoint, as the logged-in user, with
   a comment that says the demo answered (the explicit way through the human step; a person does
   this in Required actions), and prints both versions side by side.

Everything runs on the services of ``llmops up`` (API server, scheduler, DAG processor,
triggerer, MLflow server). :func:`turn` is the loop on an already running stack; the services test
drives it on its own stack.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmops_tasks.core import data, settings
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import airflow_client as airflow

log = logging.getLogger(__name__)

RETRAINING = "llm_retraining"
CURATION = "feedback_curation"
APPROVAL_TASK = "approve"
ORACLE = "demo-oracle"
SAMPLE_PROMPTS = 96  # prompts asked of a version without a split (registered outside llm_retraining)
APPROVED_BY_DEMO = "approved by llmops demo --loop, standing in for a person (metrics printed by the demo)"


@dataclass
class Stack:
    """A running ``llmops up``: its REST client, home and scheduler log."""

    api: airflow.Api
    home: Path
    scheduler_log: Path

    @classmethod
    def of(cls, api: airflow.Api, home: Path) -> Stack:
        return cls(api, Path(home), Path(home) / "logs" / "services" / "scheduler.log")

    def scheduler_tail(self) -> str:
        text = self.scheduler_log.read_text(errors="replace") if self.scheduler_log.exists() else ""
        return "scheduler log tail:\n" + text[-3000:]


@dataclass
class TurnResult:
    before: dict
    after: dict
    snapshot: dict
    traffic: dict
    feedback: dict
    retraining_run: str
    retraining_state: str
    scored: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    served_after: str | None = None
    timings: dict = field(default_factory=dict)


def _version(name: str, version: str) -> dict:
    from llmops_tasks.core import tracking

    found = tracking.client().get_model_version(name, version)
    tags = dict(found.tags)
    return {"version": str(found.version), "tags": tags,
            "metrics": {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")},
            "aliases": sorted(found.aliases)}


def production_version(name: str) -> str | None:
    from llmops_tasks import registry
    from llmops_tasks.core import tracking

    return registry.alias_versions(name, tracking.client()).get(registry.PRODUCTION)


def traffic_rows(version: dict) -> list[dict]:
    """What the oracle's users ask: the prompts the version was evaluated on and as many of the
    prompts it was trained on (distinct prompts, with their reference answers), from its run's split.

    Feedback on an evaluation prompt stays on the evaluation side of the next split (prompts are
    assigned by :func:`~llmops_tasks.text.records.prompt_key`, so a model is never scored on what it
    was trained on); feedback on the others enters training."""
    from llmops_tasks.text.records import prompt_key

    ctx = settings.RunContext(dag_id=version["tags"].get("llmops.dag_id") or RETRAINING,
                              run_id=version["tags"].get("llmops.dag_run_id", ""))
    split = Path(ctx.step_dir("split"))

    def distinct(records: list[dict], reference: str) -> list[dict]:
        seen: dict[str, dict] = {}
        for record in records:
            seen.setdefault(prompt_key(record["prompt"]), {"prompt": record["prompt"], "reference": record[reference]})
        return list(seen.values())

    if not ctx.run_id or not (split / "eval.jsonl").is_file() or not (split / "train_sft.jsonl").is_file():
        from llmops_tasks.local import samples

        log.warning("loop: v%s has no split of llm_retraining (%s); the oracle asks the sample data set's prompts",
                    version["version"], split)
        return distinct(samples.preference_rows(), "chosen")[:SAMPLE_PROMPTS]
    asked = distinct(data.read_records(str(split / "eval.jsonl")), "reference")
    trained = distinct(data.read_records(str(split / "train_sft.jsonl")), "completion")
    return asked + trained[:len(asked)]


def ask(url: str, prompts: list, batch_size: int) -> list[dict]:
    """POST the prompts to ``/invocations`` in batches, as an application would; the predictions."""
    answers: list[dict] = []
    for first in range(0, len(prompts), batch_size):
        body = json.dumps({"inputs": prompts[first:first + batch_size]}).encode()
        request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answers.extend(json.loads(response.read())["predictions"])
    return answers


def oracle_feedback(answers: list[dict], rows: list[dict], thumbs_up_rouge: float) -> dict:
    """The oracle's feedback on each answer: thumbs by ROUGE-L against the reference; a correction
    (the reference) on every thumbs down. Written as ``llmops feedback log`` writes it."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    counts = {"up": 0, "down": 0, "corrections": 0, "untraced": 0}
    one_line_each = logging.getLogger("llmops_tasks.feedback.log")
    level = one_line_each.level
    one_line_each.setLevel(logging.WARNING)  # the counts below say it; a line per assessment is noise here
    try:
        _give(answers, rows, thumbs_up_rouge, scorer, counts)
    finally:
        one_line_each.setLevel(level)
    return counts


def _give(answers: list[dict], rows: list[dict], thumbs_up_rouge: float, scorer, counts: dict) -> None:
    from llmops_tasks.feedback.log import FeedbackConfig, log_feedback

    for answer, row in zip(answers, rows):
        if not answer.get("trace_id"):
            counts["untraced"] += 1
            continue
        rouge = scorer.score(row["reference"], answer["answer"])["rougeL"].fmeasure
        good = rouge >= thumbs_up_rouge
        rationale = f"ROUGE-L {rouge:.3f} against the reference answer (oracle threshold {thumbs_up_rouge:g})"
        log_feedback(FeedbackConfig(trace_id=answer["trace_id"], thumbs="up" if good else "down", by=ORACLE,
                                    rationale=rationale))
        counts["up" if good else "down"] += 1
        if not good:
            log_feedback(FeedbackConfig(trace_id=answer["trace_id"], correction=row["reference"], by=ORACLE,
                                        rationale="the reference answer"))
            counts["corrections"] += 1


def approve_when_asked(stack: Stack, dag_id: str, run_id: str, comment: str, timeout: float) -> tuple[str, dict]:
    """Wait for the run's approval step, answer Approve over REST, wait for the run's end."""
    run_state, states = airflow.wait_for_approval(stack.api, dag_id, run_id, APPROVAL_TASK, timeout,
                                                  diagnose=stack.scheduler_tail)
    if states.get(APPROVAL_TASK) in airflow.WAITING_FOR_A_PERSON:
        airflow.parked(stack.scheduler_log, dag_id, APPROVAL_TASK, run_id)
        log.info("loop: answering the approval of %s over Airflow's HITL REST API: Approve (%s)", run_id, comment)
        airflow.answer(stack.api, dag_id, run_id, APPROVAL_TASK, "Approve", comment)
        run_state, states = airflow.wait_until_finished(stack.api, dag_id, run_id, 300, diagnose=stack.scheduler_tail)
    return run_state, states


def first_production(stack: Stack, name: str, max_steps: int | None, timeout: float) -> str:
    """A production version to serve: the one there is, else one made by a retraining run now."""
    version = production_version(name)
    if version:
        return version
    log.info("loop: %s has no production version yet; running %s once first", name, RETRAINING)
    conf = {"require_approval": True, **({"max_steps": max_steps} if max_steps else {})}
    run_id = airflow.trigger(stack.api, RETRAINING, conf)
    run_state, states = approve_when_asked(stack, RETRAINING, run_id, APPROVED_BY_DEMO, timeout)
    version = production_version(name)
    if run_state != "success" or not version:
        raise StepFailed(f"loop: the first {RETRAINING} run {run_id} ended {run_state} without a production "
                         f"version; tasks {states}")
    return version


def turn(stack: Stack, name: str, *, batch_size: int = 8, thumbs_up_rouge: float = 0.5,
         max_new_tokens: int = 24, timeout: float = 600) -> TurnResult:
    """Serve production, send traffic, log the oracle's feedback, curate, and wait for the retraining
    that the snapshot's asset event starts (approving it over REST). Needs ``MLFLOW_TRACKING_URI``
    and ``LLMOPS_HOME`` of the stack in this process's environment."""
    from llmops_tasks.serving.server import ServeConfig, Server

    seconds: dict[str, float] = {}
    started = time.monotonic()
    before = _version(name, production_version(name) or "")
    rows = traffic_rows(before)
    server = Server(ServeConfig(model=f"models:/{name}@production", port=0, max_batch_size=batch_size,
                                max_new_tokens=max_new_tokens, poll_interval=2.0, access_log=False)).start()
    try:
        answers = ask(server.url, [r["prompt"] for r in rows], batch_size)
        if not server.service.flush():
            raise StepFailed(f"loop: the traces of the {len(answers)} answers were not all in the store "
                             "after 120 s (see the trace writer's lines above)")
        seconds["traffic"] = round(time.monotonic() - started, 1)
        log.info("loop: %d answers from v%s on %s", len(answers), before["version"], server.url)
        feedback = oracle_feedback(answers, rows, thumbs_up_rouge)
        seconds["feedback"] = round(time.monotonic() - started - seconds["traffic"], 1)
        log.info("loop: oracle feedback %s", feedback)

        known = {r["dag_run_id"] for r in airflow.runs(stack.api, RETRAINING)}
        mark = time.monotonic()
        curation = airflow.trigger(stack.api, CURATION, {})
        run_state, states = airflow.wait_until_finished(stack.api, CURATION, curation, 300,
                                                        diagnose=stack.scheduler_tail)
        if run_state == "success" and states.get("publish_snapshot") == "skipped":
            outcome = airflow.api_value(stack.api, CURATION, curation, "curate").get("outcome", "")
            raise StepFailed(f"loop: curation wrote no new snapshot ({outcome or 'nothing new'}), so no retraining "
                             f"starts: v{before['version']} gave the same answers to the same prompts as in an earlier "
                             "turn, and their feedback is already in a snapshot. Promote another version first, or "
                             "send other prompts.")
        if run_state != "success" or states.get("publish_snapshot") != "success":
            raise StepFailed(f"loop: {CURATION} run {curation} ended {run_state} without a new snapshot; "
                             f"tasks {states}")
        events = airflow.asset_events(stack.api, "llmops_preference_data", CURATION, curation)
        if len(events) != 1:
            raise StepFailed(f"loop: {CURATION} run {curation} emitted {len(events)} snapshot events, not one")
        snapshot = dict(events[0].get("extra") or {})
        seconds["curation"] = round(time.monotonic() - mark, 1)
        log.info("loop: snapshot %s (%s rows, %s from feedback); waiting for the run its asset event starts",
                 snapshot.get("uri"), snapshot.get("rows"), snapshot.get("feedback_rows"))

        mark = time.monotonic()
        retraining = airflow.wait_for_new_run(stack.api, RETRAINING, known, "asset_triggered", 180)["dag_run_id"]
        run_state, states = approve_when_asked(stack, RETRAINING, retraining, APPROVED_BY_DEMO, timeout)
        seconds["retraining"] = round(time.monotonic() - mark, 1)
        after_version = production_version(name)
        after = _version(name, after_version) if after_version != before["version"] else _newest(name, retraining)
        ctx = settings.RunContext(dag_id=RETRAINING, run_id=retraining)
        metrics, decision = Path(ctx.step_dir("evaluate")) / "metrics.json", Path(ctx.step_dir("gate")) / "decision.json"
        scored = data.read_json(str(metrics)) if metrics.is_file() else {}
        gate = data.read_json(str(decision)) if decision.is_file() else {}
        served_after = None
        if after_version != before["version"]:
            deadline = time.monotonic() + 30
            while server.service.current.version != after_version and time.monotonic() < deadline:
                time.sleep(0.5)
            served_after = server.service.current.version
    finally:
        server.stop()
    seconds["total"] = round(time.monotonic() - started, 1)
    return TurnResult(before=before, after=after, snapshot=snapshot, traffic={"prompts": len(rows),
                      "answers": len(answers), "batch_size": batch_size}, feedback=feedback,
                      retraining_run=retraining, retraining_state=run_state, served_after=served_after,
                      scored={k: scored.get(k) for k in ("candidate", "champion", "champion_label")},
                      gate={"passed": gate.get("passed"), "reason": gate.get("reason", "")},
                      timings=seconds)


def _newest(name: str, run_id: str) -> dict:
    """The version the run registered (when it was not promoted), else an empty record."""
    from llmops_tasks import registry
    from llmops_tasks.core import tracking

    found = registry.find_version(name, "llmops.dag_run_id", run_id, tracking.client())
    return _version(name, found) if found else {"version": None, "tags": {}, "metrics": {}, "aliases": []}


# --------------------------------------------------------------------------- the demo command


class Services:
    """``llmops up`` as a child process in its own session, on free loopback ports."""

    def __init__(self, env: dict[str, str], home: Path, args: tuple[str, ...] = ()) -> None:
        from llmops_tasks.local import services

        self.env, self.home, self.args = env, Path(home), tuple(args)
        self.airflow_port, self.mlflow_port = services.free_port(), services.free_port()
        self.out = self.home / "logs" / f"up-{time.strftime('%Y%m%dT%H%M%S')}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> airflow.Api:
        """Start ``llmops up`` (plus ``args``), wait for its "ready" line, log in as admin."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "llmops_tasks.cli", "up", "--airflow-port", str(self.airflow_port),
                 "--mlflow-port", str(self.mlflow_port), "--ready-timeout", str(int(timeout)), "--stop-timeout", "15",
                 *self.args],
                env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "llmops up: ready" not in self.out.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StepFailed(f"loop: llmops up did not get ready (see {self.out}):\n"
                                 + self.out.read_text(errors="replace")[-3000:])
            time.sleep(1)
        airflow_home = Path(self.env.get("AIRFLOW_HOME") or self.home / "airflow")
        return airflow.Api.login(self.airflow_url, "admin", airflow.password(airflow_home))

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def stop(self) -> None:
        from llmops_tasks.local import services

        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        services.stop_recorded(self.home, timeout=10)


def run(max_steps: int | None = None) -> dict:
    """Start the services, make sure there is a production version, run one :func:`turn`, stop."""
    from llmops_tasks.local import bootstrap, embedded, samples

    env = embedded.airflow_env()
    os.environ.update({k: env[k] for k in ("LLMOPS_HOME", "MLFLOW_TRACKING_URI")})
    home = Path(env["LLMOPS_HOME"])
    samples.ensure_sample_data()
    bootstrap.ensure_tiny_model()
    name = settings.model_name()
    started = time.monotonic()
    services = Services(env, home)
    log.info("llmops demo --loop: starting Airflow and MLflow (llmops up; log %s)", services.out)
    try:
        api = services.start()
        stack = Stack.of(api, home)
        for dag_id in (RETRAINING, CURATION):
            airflow.wait_for_dag(api, dag_id)
            airflow.unpause(api, dag_id)
        ready = round(time.monotonic() - started, 1)
        first = first_production(stack, name, max_steps, timeout=600)
        log.info("llmops demo --loop: v%s is in production; serving it", first)
        result = turn(stack, name)
    finally:
        services.stop()
    return {"model_name": name, "home": str(home), "services_ready_s": ready,
            "seconds": round(time.monotonic() - started, 1), "services_log": str(services.out),
            "airflow_url": services.airflow_url, **result.__dict__}


def render(result: dict) -> str:
    before, after, snapshot = result["before"], result["after"], result["snapshot"]
    scored = result.get("scored") or {}
    # Both on the retraining's evaluation prompts (its evaluate step scored the champion too); the
    # versions' own registered metrics were measured on different evaluation sets.
    champion, candidate = scored.get("champion") or before["metrics"], scored.get("candidate") or after["metrics"]
    names = sorted(set(champion) | set(candidate))

    def cell(metrics: dict, metric: str) -> str:
        value = metrics.get(metric)
        return "-" if not isinstance(value, (int, float)) else f"{value:.3f}"

    width = max([len(n) for n in names] + [12])
    old_label = f"v{before['version']} (production)"
    new_label = f"v{after['version']} (candidate)" if after.get("version") else "candidate"
    steps = ", ".join(f"{step} {seconds} s" for step, seconds in result["timings"].items() if step != "total")
    lines = ["", (f"llmops demo --loop finished in {result['seconds']} s (services ready after "
                  f"{result['services_ready_s']} s; then {steps})"),
             (f"  traffic      {result['traffic']['answers']} answers from v{before['version']} "
              f"(batches of {result['traffic']['batch_size']}), one MLflow trace each"),
             (f"  feedback     {result['feedback']['up']} thumbs up, {result['feedback']['down']} thumbs down, "
              f"{result['feedback']['corrections']} corrections (oracle: ROUGE-L against the reference)"),
             f"  snapshot     {snapshot.get('uri')}",
             (f"               {snapshot.get('rows')} rows, {snapshot.get('feedback_rows')} from feedback, "
              f"content hash {str(snapshot.get('content_hash', ''))[:12]}"),
             (f"  retraining   {result['retraining_run']} (started by the snapshot's asset event): "
              f"{result['retraining_state']}"),
             (f"  gate         {'PASSED' if result['gate'].get('passed') else 'REJECTED'}: "
              f"{result['gate'].get('reason') or 'no decision was written'}"),
             "",
             f"  {'metric':<{width}}  {old_label:>18}  {new_label:>18}   (both on the retraining's eval prompts)"]
    lines += [f"  {n:<{width}}  {cell(champion, n):>18}  {cell(candidate, n):>18}" for n in names]
    production = after["version"] if "production" in after["aliases"] else before["version"]
    switched = (f"; the server switched to v{result['served_after']} without a restart"
                if result.get("served_after") else "")
    tags = after["tags"]
    lines += ["", f"  production   v{production}{switched}"]
    if after.get("version"):
        lines.append(f"  lineage      v{after['version']} trained on {tags.get('llmops.data_snapshot', '?')} (hash "
                     f"{tags.get('llmops.data_snapshot_hash', '?')[:12]}); started by: {tags.get('llmops.trigger', '?')}")
    else:
        lines.append("  lineage      the candidate was not registered (a gate rejection registers nothing)")
    lines += [f"  Airflow      {result['airflow_url']} (stopped; llmops up starts it again)",
              f"  services log {result['services_log']}"]
    return "\n".join(lines)
