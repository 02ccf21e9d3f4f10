"""The loop demo's pieces that need no services: what the oracle's users ask, and the summary it
prints for a promoted and for a rejected candidate. The loop itself runs on real services in
tests/test_services_e2e.py (and README's command in tests/test_readme_commands.py)."""

from __future__ import annotations

from llmops_tasks.core import data, settings
from llmops_tasks.local import loop


def _version(version: str | None, aliases=(), metrics=None, tags=None) -> dict:
    return {"version": version, "aliases": list(aliases), "metrics": metrics or {}, "tags": tags or {}}


def _result(after: dict, gate: dict, served_after=None) -> dict:
    return {"before": _version("3", ["production"], {"rougeL": 0.75}), "after": after, "gate": gate,
            "snapshot": {"uri": "/s/v0003-0cb2229f045b/data.parquet", "rows": 236, "feedback_rows": 20,
                         "content_hash": "0cb2229f045b" + "0" * 52},
            "scored": {"champion": {"rougeL": 0.752, "bleu": 0.647}, "candidate": {"rougeL": 0.675, "bleu": 0.558}},
            "traffic": {"answers": 92, "prompts": 92, "batch_size": 8},
            "feedback": {"up": 87, "down": 5, "corrections": 5, "untraced": 0},
            "retraining_run": "asset_triggered__x", "retraining_state": "failed" if not gate["passed"] else "success",
            "served_after": served_after, "seconds": 137.4, "services_ready_s": 29.4,
            "timings": {"traffic": 20.8, "feedback": 3.2, "curation": 15.7, "retraining": 51.8, "total": 92.8},
            "airflow_url": "http://127.0.0.1:1", "services_log": "/h/logs/up.log"}


def test_a_rejected_candidate_is_shown_as_rejected_with_both_scores():
    text = loop.render(_result(_version(None), {"passed": False, "reason": "rougeL fell by 0.077"}))
    assert "gate         REJECTED: rougeL fell by 0.077" in text
    assert "production   v3\n" in text and "the candidate was not registered" in text
    assert "vNone" not in text
    row = next(line for line in text.splitlines() if line.strip().startswith("rougeL"))
    assert row.split()[1:] == ["0.752", "0.675"]  # champion and candidate on the same eval prompts
    assert "then traffic 20.8 s, feedback 3.2 s, curation 15.7 s, retraining 51.8 s" in text


def test_a_promoted_candidate_names_its_snapshot_and_the_switch():
    after = _version("4", ["production"], tags={"llmops.data_snapshot": "/s/v0003-0cb2229f045b/data.parquet",
                                                "llmops.data_snapshot_hash": "0cb2229f045b" + "0" * 52,
                                                "llmops.trigger": "new preference snapshot ..."})
    text = loop.render(_result(after, {"passed": True, "reason": "passed all 16 rules"}, served_after="4"))
    assert "gate         PASSED: passed all 16 rules" in text
    assert "production   v4; the server switched to v4 without a restart" in text
    assert "v4 trained on /s/v0003-0cb2229f045b/data.parquet (hash 0cb2229f045b)" in text


def test_the_oracle_asks_the_eval_prompts_and_as_many_training_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", str(tmp_path))
    split = settings.RunContext(dag_id="llm_retraining", run_id="manual__1").step_dir("split")
    data.write_jsonl(f"{split}/eval.jsonl", [{"prompt": "Reset my password?", "reference": "Settings."},
                                             {"prompt": "reset my  PASSWORD", "reference": "Same prompt."}])
    data.write_jsonl(f"{split}/train_sft.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."}
                                                  for i in range(5)])
    version = _version("1", tags={"llmops.dag_id": "llm_retraining", "llmops.dag_run_id": "manual__1"})
    rows = loop.traffic_rows(version)
    assert rows == [{"prompt": "Reset my password?", "reference": "Settings."},
                    {"prompt": "Question 0?", "reference": "Answer 0."}]  # one eval prompt (by key), one trained

    registered_by_hand = _version("2", tags={})
    sample = loop.traffic_rows(registered_by_hand)  # no split: the sample data set's prompts
    assert 0 < len(sample) <= loop.SAMPLE_PROMPTS and all(r["prompt"] and r["reference"] for r in sample)


def test_the_version_a_rejected_run_registered_is_found_by_its_run_tag(mlflow_store):
    """A real registry (SQLite): the version tagged with the retraining run, newest of them, none for
    another run."""
    from llmops_tasks.core import tracking

    client = tracking.client()
    client.create_registered_model("loop-test")
    for run_id in ("asset_triggered__a", "asset_triggered__b", "asset_triggered__b"):
        client.create_model_version("loop-test", source="file:///nowhere", tags={"llmops.dag_run_id": run_id})
    assert loop._newest("loop-test", "asset_triggered__b")["version"] == "3"
    assert loop._newest("loop-test", "asset_triggered__a")["version"] == "1"
    assert loop._newest("loop-test", "manual__other") == {"version": None, "tags": {}, "metrics": {}, "aliases": []}
