"""``llmops feedback log`` on real MLflow traces (SQLite in a temp folder): what it writes, that the
same feedback twice is one record, that a changed mind overrides, and the refusals (exit 2, one line)."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow.entities import AssessmentSource

from llmops_tasks import feedback


@pytest.fixture(scope="module")
def answers(module_store):
    from llmops_tasks.core import tracking
    from llmops_tasks.serving import traces

    _, env = module_store
    env.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    experiment = tracking.get_or_create_experiment("feedback-test-traffic")
    ids = []
    for prompt, text in [("Where is the printer?", "Dunno."), ("where is the  PRINTER?", "Floor 3."),
                         ("How do I book a room?", "Ask someone.")]:
        now = time.time_ns()
        ids.append(traces.record_answer(prompt=prompt, answer=text, model_name="m", model_version="1",
                                        model_uri="models:/m@production", tokens_in=1, tokens_out=1,
                                        start_ns=now, end_ns=now + 1000, experiment_id=experiment))
    return ids


def _assessments(trace_id: str, name: str):
    found = mlflow.MlflowClient().get_trace(trace_id).info.assessments or []
    return [a for a in found if a.name == name]


def test_thumbs_are_a_human_feedback_and_the_same_twice_is_one_record(answers, llmops):
    args = ["feedback", "log", "--trace-id", answers[0], "--thumbs", "down", "--by", "ann", "--rationale", "vague"]
    code, first = llmops(args)
    assert code == 0 and first["recorded"] is True
    code, second = llmops(args)
    assert code == 0 and second["recorded"] is False and second["assessment_id"] == first["assessment_id"]
    (only,) = _assessments(answers[0], feedback.THUMBS)
    assert (only.value, only.source.source_type, only.source.source_id, only.rationale) == (
        False, "HUMAN", "ann", "vague")


def test_a_changed_mind_overrides_the_earlier_vote(answers, llmops):
    code, result = llmops(["feedback", "log", "--trace-id", answers[0], "--thumbs", "up", "--by", "ann"])
    assert code == 0 and result["overrides"]
    valid = [a for a in _assessments(answers[0], feedback.THUMBS) if a.valid is not False]
    assert [(a.value, a.source.source_id) for a in valid] == [(True, "ann")]


def test_rating_correction_and_preference(answers, llmops):
    assert llmops(["feedback", "log", "--trace-id", answers[2], "--rating", "2", "--by", "bob"])[0] == 0
    assert [a.value for a in _assessments(answers[2], feedback.RATING)] == [2]
    assert llmops(["feedback", "log", "--trace-id", answers[2], "--correction", "Open Rooms in the calendar."])[0] == 0
    (correction,) = _assessments(answers[2], feedback.CORRECTION)
    assert correction.expectation is not None and correction.value == "Open Rooms in the calendar."
    # same prompt up to case and spacing: a pairwise preference of answer 1 over answer 0
    assert llmops(["feedback", "log", "--trace-id", answers[1], "--preferred", answers[0]])[0] == 0
    assert [a.value for a in _assessments(answers[1], feedback.PREFERRED_OVER)] == [answers[0]]


def test_feedback_an_mlflow_client_wrote_counts_as_the_same_record(answers, llmops):
    mlflow.log_feedback(trace_id=answers[1], name=feedback.THUMBS, value=True,
                        source=AssessmentSource(source_type="HUMAN", source_id="api-user"))
    code, result = llmops(["feedback", "log", "--trace-id", answers[1], "--thumbs", "up", "--by", "api-user"])
    assert code == 0 and result["recorded"] is False


@pytest.mark.parametrize(("args", "says"), [
    (["--trace-id", "tr-0123456789abcdef", "--thumbs", "up"], "no trace tr-0123456789abcdef"),
    (["--rating", "9"], "rating: expected 1 to 5"),
    (["--rating", "0", "--thumbs", "up", "--correction", "x"], "exactly one of"),
    (["--correction", "   "], "correction: empty"),
    (["--thumbs", "sideways"], "thumbs"),
    ([], "exactly one of"),
    (["--preferred", "OTHER-PROMPT"], "answers another prompt"),
    (["--trace-id", "not a trace", "--thumbs", "up"], "is not a trace id"),
])
def test_bad_feedback_is_one_line_and_exit_2(answers, capsys, args, says):
    from llmops_tasks.cli import main

    args = [a.replace("OTHER-PROMPT", answers[2]) for a in args]
    if "--trace-id" not in args:
        args = ["--trace-id", answers[0], *args]
    code = main(["feedback", "log", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and says in errors[0], err
