"""Curation: pair mining and its conflict rules on votes (pandas, no store), then the step end to end on
real MLflow traces (SQLite in a temp folder) with the real validate check: watermark, deduplication
across snapshots, PII, and nothing written when validation fails."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from llmops_tasks import feedback
from llmops_tasks.core import data
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.curation import CurateConfig, mining, rows, run, store
from llmops_tasks.feedback import FeedbackConfig, log_feedback


def _frames(answers: list[tuple], votes: list[tuple]):
    a = pd.DataFrame(answers, columns=["trace_id", "prompt_key", "prompt", "answer"])
    v = pd.DataFrame(votes, columns=["trace_id", "name", "value", "by", "created_ms"])
    return a, v


def _mine(answers, votes, gap=2):
    a, v = _frames(answers, votes)
    return mining.mine(a, v, rating_gap=gap, max_pairs_per_prompt=8)


def _pairs(result) -> set[tuple]:
    return {(p.source, p.chosen, p.rejected) for p in result["pairs"].itertuples()}


T, R, P, C = feedback.THUMBS, feedback.RATING, feedback.PREFERRED_OVER, feedback.CORRECTION


def test_each_kind_of_feedback_makes_its_pairs():
    answers = [("t1", "k1", "q1", "bad"), ("t2", "k1", "q1", "good"), ("t3", "k2", "q2", "fine"),
               ("t4", "k2", "q2", "poor"), ("t5", "k3", "q3", "meh"), ("t6", "k4", "q4", "alone"),
               ("t7", "k5", "q5", "great"), ("t8", "k5", "q5", "awful")]
    votes = [("t1", C, "the right answer", "ann", 1), ("t2", P, "t1", "bob", 2),
             ("t3", T, True, "ann", 3), ("t4", T, False, "ann", 4), ("t6", T, False, "cy", 5),
             ("t7", R, 5, "ann", 6), ("t8", R, 2, "ann", 7), ("t5", R, 4, "ann", 8)]
    result = _mine(answers, votes)
    assert _pairs(result) == {("correction", "the right answer", "bad"), ("pairwise", "good", "bad"),
                              ("thumbs", "fine", "poor"), ("rating", "great", "awful")}
    # the unpaired thumbs is a KTO row; the correction an SFT row; the lone rating is unused
    assert result["kto"][["prompt_of", "completion", "label"]].values.tolist() == [["t6", "alone", False]]
    assert result["sft"][["prompt_of", "completion"]].values.tolist() == [["t1", "the right answer"]]
    assert result["dropped"] == {"rating: no answer to the same prompt rated rating_gap apart": 1}
    by_trace = {p.source: p.trace_ids for p in result["pairs"].itertuples()}
    assert by_trace["pairwise"] == ["t2", "t1"] and by_trace["thumbs"] == ["t3", "t4"]


def test_conflicting_votes_are_dropped_by_rule():
    answers = [("t1", "k1", "q", "a1"), ("t2", "k1", "q", "a2"), ("t3", "k2", "r", "b1"), ("t4", "k2", "r", "b2"),
               ("t5", "k3", "s", "c1"), ("t6", "k3", "s", "c2")]
    votes = [
        ("t1", T, True, "ann", 1), ("t1", T, False, "bob", 2),  # two people disagree: t1 is dropped
        ("t2", T, False, "ann", 3),
        ("t3", R, 5, "ann", 4), ("t3", R, 1, "bob", 5),  # raters 4 apart: t3 is dropped
        ("t4", R, 1, "ann", 6),
        ("t5", P, "t6", "ann", 7), ("t6", P, "t5", "bob", 8),  # chosen both ways: both dropped
    ]
    result = _mine(answers, votes)
    assert result["pairs"].empty
    assert result["dropped"]["thumbs: raters disagree (trace dropped)"] == 1
    assert result["dropped"]["rating: raters differ by rating_gap or more (trace dropped)"] == 1
    assert result["dropped"]["pairwise: chosen both ways (both dropped)"] == 2
    assert result["kto"]["prompt_of"].tolist() == ["t2"]


def test_one_vote_per_person_the_latest_and_no_equal_answers():
    answers = [("t1", "k1", "q", "same"), ("t2", "k1", "q", "same "), ("t3", "k1", "q", "other")]
    votes = [("t1", T, False, "ann", 1), ("t1", T, True, "ann", 9),  # ann changed her mind: up counts
             ("t2", T, False, "ann", 2), ("t3", T, False, "bob", 3),
             ("t3", C, "other", "cy", 4)]  # a correction equal to the answer is no pair
    result = _mine(answers, votes)
    # "same" vs "same " is one answer up and down: no pair; t1 up vs t3 down is
    assert _pairs(result) == {("thumbs", "same", "other")}
    assert result["dropped"]["correction: equals the model's answer"] == 1


def test_pii_rows_are_redacted_or_blocked():
    frame = rows.with_ids(pd.DataFrame({
        "id": ["", ""], "prompt": ["mail jane.doe@example.org", "hello"], "chosen": ["ok", "hi there"],
        "rejected": ["no", "card 4111 1111 1111 1111"], "source": ["thumbs", "thumbs"],
        "created_at": ["2026-12-01T00:00:00Z"] * 2, "trace_ids": [["t1"], ["t2"]]}), "preference")
    redacted, hits = rows.apply_pii(frame, "preference", "redact", ["email", "credit_card"])
    assert dict(hits) == {"email": 1, "credit_card": 1}
    assert redacted["prompt"].tolist() == ["mail [REDACTED email]", "hello"]
    assert redacted["rejected"].tolist()[1] == "card [REDACTED credit_card]"
    assert redacted["id"].tolist() != frame["id"].tolist()  # the id is the content's key
    blocked, _ = rows.apply_pii(frame, "preference", "block", ["email"])
    assert blocked["prompt"].tolist() == ["hello"]


def test_content_keys_are_stable_and_message_lists_have_them_too():
    frame = pd.DataFrame({"prompt": ["q", [{"role": "user", "content": "q"}]], "chosen": ["a", "a"],
                          "rejected": ["b", "b"]})
    assert rows.keys(frame, "preference") == rows.keys(frame.copy(), "preference")
    assert len(set(rows.keys(frame, "preference"))) == 2


# --------------------------------------------------------------------------- the step on real traces


@pytest.fixture(scope="module")
def traffic(module_store):
    """A traffic experiment in the module's store and a way to answer prompts into it."""
    from llmops_tasks.core import tracking
    from llmops_tasks.local import samples
    from llmops_tasks.serving import traces

    root, env = module_store
    env.setenv("LLMOPS_TRAFFIC_EXPERIMENT", "curation-test-traffic")
    env.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    base = root / "base.jsonl"
    data.write_jsonl(str(base), samples.preference_rows())
    experiment = tracking.get_or_create_experiment("curation-test-traffic")

    def answer(prompt, text) -> str:
        now = time.time_ns()
        return traces.record_answer(prompt=prompt, answer=text, model_name="m", model_version="1",
                                    model_uri="models:/m@production", tokens_in=1, tokens_out=1, start_ns=now,
                                    end_ns=now + 1000, experiment_id=experiment)

    return {"root": root, "base": str(base), "answer": answer}


def _config(traffic, **settings) -> CurateConfig:
    defaults = {"snapshot_root": str(traffic["root"] / "snapshots"), "base_dataset": traffic["base"],
                "report_dir": str(traffic["root"] / "report")}
    return CurateConfig(**{**defaults, **settings})


@pytest.fixture(scope="module")
def snapshots(traffic):
    """Run 1: feedback (one via MLflow's own client) -> v1; run 2: nothing new -> no snapshot; run 3:
    a repeat of a v1 pair, a new pair, PII (blocked) -> v2 with only the new pair."""
    import mlflow
    from mlflow.entities import AssessmentSource

    answer = traffic["answer"]
    first = answer("How do I book a room?", "Ask someone.")
    log_feedback(FeedbackConfig(trace_id=first, correction="Open the calendar and choose Rooms.", by="ann"))
    other = answer("Where is the printer?", "Dunno.")
    mlflow.log_feedback(trace_id=other, name=feedback.THUMBS, value=False,  # any MLflow client writes feedback
                        source=AssessmentSource(source_type="HUMAN", source_id="api-user"))
    v1 = run(_config(traffic))
    again = run(_config(traffic))
    repeat = answer("How do I book a room?", "Ask someone.")
    log_feedback(FeedbackConfig(trace_id=repeat, correction="Open the calendar and choose Rooms.", by="bob"))
    fresh = answer("How do I print?", "No.")
    log_feedback(FeedbackConfig(trace_id=fresh, correction="Pick the printer in the print dialog.", by="bob"))
    secret = answer("My mail is jane.doe@example.org, why can't I log in?", "No idea.")
    log_feedback(FeedbackConfig(trace_id=secret, correction="Reset your password on the sign-in page.", by="bob"))
    v2 = run(_config(traffic, pii_mode="block"))
    return {"v1": v1, "again": again, "v2": v2, "traces": [first, other, repeat, fresh, secret]}


def test_the_first_snapshot_merges_feedback_with_the_base_set(snapshots):
    v1 = snapshots["v1"]
    assert v1["written"] and v1["version"].startswith("v0001-")
    assert (v1["rows"], v1["feedback_rows"], v1["base_rows"], v1["kto_rows"], v1["sft_rows"]) == (217, 1, 216, 1, 1)
    frame = pd.read_parquet(v1["uri"])
    row = frame[frame["source"] == "correction"].iloc[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("How do I book a room?",
                                                               "Open the calendar and choose Rooms.", "Ask someone.")
    kto = pd.read_parquet(v1["snapshot_dir"] + "/kto.parquet")
    assert kto[["completion", "label"]].values.tolist() == [["Dunno.", False]]  # logged by mlflow.log_feedback
    manifest = data.read_json(v1["manifest"])
    assert manifest["content_hash"] == data.content_hash(v1["uri"]) == v1["content_hash"]
    assert v1["version"].endswith(v1["content_hash"][:12])
    assert manifest["counts"]["rows_by_source"] == {"base": 216, "correction": 1}
    assert sorted(manifest["traces"]) == sorted(snapshots["traces"][:2])
    assert manifest["watermark"]["trace_ids"] == [snapshots["traces"][1]]


def test_a_run_without_new_feedback_writes_no_snapshot(snapshots, traffic):
    again = snapshots["again"]
    assert again["written"] is False and again["read"]["traces read"] == 0
    assert "no new feedback" in again["outcome"]


def test_the_next_snapshot_adds_only_new_rows_and_blocks_pii(snapshots, traffic):
    v2 = snapshots["v2"]
    assert v2["written"] and v2["version"].startswith("v0002-") and v2["previous"] == snapshots["v1"]["version"]
    assert v2["dropped"]["preference: already in the snapshot"] == 1
    assert v2["dropped"]["preference: personal data (pii_mode: block)"] == 1
    assert v2["pii_hits"] == {"email": 2}  # the pair and its SFT row
    assert v2["new_rows"] == {"pairs from correction": 1, "sft rows": 1}
    frame = pd.read_parquet(v2["uri"])
    assert len(frame) == 218 and frame["id"].is_unique
    assert not frame["prompt"].str.contains("@").any()
    assert [p.name for p in store.snapshots(str(traffic["root"] / "snapshots"))] == [
        snapshots["v1"]["version"], v2["version"]]
    assert "Dropped, and why" in (traffic["root"] / "snapshots" / v2["version"] / "report.html").read_text()


def test_a_run_no_snapshot_started_trains_on_the_newest_and_its_lineage_reads_the_manifest(snapshots, traffic):
    """What llm_retraining's resolve_inputs uses: the triggering snapshot, else the newest one (as
    its asset event would describe it), else nothing; the registry's lineage from the real manifest."""
    from llmops_tasks.registry import _snapshot_lineage

    root = str(traffic["root"] / "snapshots")
    v2 = snapshots["v2"]
    event = {key: v2[key] for key in ("uri", "content_hash", "rows", "feedback_rows", "manifest")}
    newest, why = store.training_snapshot(None, root)
    assert newest == event and why.startswith(f"the newest snapshot {v2['version']}")
    triggering = {key: snapshots["v1"][key] for key in event}
    assert store.training_snapshot(triggering, root) == (triggering, "the snapshot whose event started this run")
    assert store.training_snapshot(None, str(traffic["root"] / "no-snapshots-here")) == ({}, "")

    lineage = _snapshot_lineage(v2["manifest"])
    assert lineage == {"llmops.data_snapshot": v2["uri"], "llmops.data_snapshot_version": v2["version"],
                       "llmops.data_snapshot_hash": v2["content_hash"], "llmops.data_snapshot_rows": str(v2["rows"]),
                       "llmops.data_snapshot_feedback_rows": str(v2["feedback_rows"])}


def test_nothing_is_written_when_validation_fails(snapshots, traffic):
    root = traffic["root"] / "no-base"
    answer = traffic["answer"]
    log_feedback(FeedbackConfig(trace_id=answer("How do I scan?", "No."), correction="Use the scanner app.",
                                by="cy"))
    with pytest.raises(StepFailed, match="row_count"):  # 1 pair without a base: fewer than the policy's 100
        run(_config(traffic, snapshot_root=str(root), base_dataset="none"))
    assert not [p for p in root.iterdir() if p.name != "cursor.json"] if root.exists() else True
    assert "invalid" in (traffic["root"] / "report" / "report.html").read_text()


def test_the_retention_window_drops_old_feedback_rows_and_keeps_base_rows():
    frame = pd.DataFrame({"source": ["base", "thumbs", "correction", "base"],
                          "created_at": ["2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2026-12-01T00:00:00Z", None]})
    cutoff = int(pd.Timestamp("2026-11-01", tz="UTC").timestamp() * 1000)
    assert rows.within_retention(frame, cutoff).tolist() == [True, False, True, True]
    assert rows.within_retention(frame, None).tolist() == [True] * 4


def test_a_conversational_prompt_turns_the_snapshot_into_message_lists_that_validate(tmp_path, mlflow_store):
    from llmops_tasks.core.config import load
    from llmops_tasks.local import samples
    from llmops_tasks.validate.config import ValidateConfig
    from llmops_tasks.validate.step import check

    base = rows.conform(pd.DataFrame(samples.preference_rows()).assign(source="base"), "preference")
    talk = rows.with_ids(pd.DataFrame({
        "id": [""], "prompt": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Printer?"}]],
        "chosen": ["Floor 3."], "rejected": ["No."], "source": ["thumbs"], "created_at": ["2026-12-01T00:00:00Z"],
        "trace_ids": [["t1", "t2"]]}), "preference")
    assert rows.is_conversational([base, talk])
    merged = pd.concat([rows.as_messages(base, "preference"), rows.as_messages(talk, "preference")], ignore_index=True)
    assert merged["chosen"].iloc[-1] == [{"role": "assistant", "content": "Floor 3."}]
    assert merged["prompt"].iloc[0] == [{"role": "user", "content": base["prompt"].iloc[0]}]
    store.write_parquet(merged, tmp_path / "data.parquet")
    config = load(ValidateConfig, "validate_preference.yaml", {"dataset": str(tmp_path / "data.parquet"),
                                                               "report_dir": str(tmp_path / "v"), "data_docs": False})
    result = check(config)
    assert result["valid"] and result["rows"] == 217
