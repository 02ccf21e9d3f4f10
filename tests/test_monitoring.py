"""``llmops monitor`` on real MLflow traces: synthetic production traffic written through
``serving.traces.record_answer`` (the server's own code path) with chosen timestamps, feedback
through ``mlflow.log_feedback`` / ``log_expectation``, a registered production version whose
lineage (training run, evaluate run) names its reference data, all in one SQLite store.

One module fixture writes every window and monitors them in time order (the cooldown depends on
the order); the tests then check which signals fired in each. Windows are small (30 requests,
the test policy's min_requests 25) because a SQLite trace costs about 40 ms to write here.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import yaml

from llmops_tasks import monitoring
from llmops_tasks.core import settings, tracking
from llmops_tasks.core.config import ConfigError, load
from llmops_tasks.monitoring import drift, signals, synthetic
from llmops_tasks.monitoring import policy as policies

MODEL = "mon-model"
HOUR_MS = synthetic.HOUR_MS
PER_WINDOW = 30
CLEAN_WINDOWS = 20
# What each injected change must fire, and nothing else.
EXPECTED = {
    "longer_prompts": {"prompt_chars", "prompt_words"},
    "another_language": {"script_mix", "vocab_novelty"},
    "pii_leak": {"pii_answers", "secret_answers"},
    "thumbs_down_surge": {"thumbs_down"},
}


def _policy_file(folder: Path) -> str:
    """The shipped policy with a smaller minimum sample (the test's windows hold 30 requests)."""
    values = yaml.safe_load(Path(settings.packaged_policy("monitor.yaml")).read_text())
    values["min_requests"] = 25
    for name in ("thumbs_down", "mean_rating", "corrections"):
        values["signals"][name]["min_count"] = 20
    path = folder / "monitor-test.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _leaky(rng: random.Random, i: int) -> str:
    if i == 0:
        return synthetic.SECRET_ANSWER
    return synthetic.pii_answer(rng) if i % 3 == 1 else synthetic.answer(rng)


@pytest.fixture(scope="module")
def monitored(module_store):
    root, env = module_store
    env.setenv("LLMOPS_MODEL_NAME", MODEL)
    env.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")  # each trace is in the store when record_answer returns
    client = tracking.client()
    synthetic.register_production(root, MODEL, client)
    experiment = tracking.get_or_create_experiment(f"{MODEL}-traffic", client)
    policy = _policy_file(root)
    # Windows after v1's registration + the 24 h cooldown, on whole hours.
    t0 = (int(time.time() * 1000) // HOUR_MS + 48) * HOUR_MS
    rng = random.Random(7)
    plan: list[tuple[str, int, dict]] = [(f"clean_{i}", t0 + i * HOUR_MS, {}) for i in range(CLEAN_WINDOWS)]
    plan += [
        ("below_minimum", t0 + 30 * HOUR_MS, {"n": 10, "question": synthetic.long_prompt}),
        ("longer_prompts", t0 + 48 * HOUR_MS, {"question": synthetic.long_prompt}),
        ("cooldown", t0 + 49 * HOUR_MS, {"question": synthetic.long_prompt}),
        ("another_language", t0 + 96 * HOUR_MS, {"question": synthetic.russian_prompt}),
        ("pii_leak", t0 + 144 * HOUR_MS, {"reply": _leaky}),
        ("thumbs_down_surge", t0 + 192 * HOUR_MS, {"thumbs_down": 18, "thumbs_up": 7, "corrections": 3}),
    ]
    started = time.monotonic()
    for _, end, options in plan:
        synthetic.write_window(experiment, MODEL, end, rng, n=options.pop("n", PER_WINDOW), **options)
    written = time.monotonic() - started
    results, seconds = {}, []
    for name, end, _ in plan:
        config = load(monitoring.MonitorConfig, None, {"window": "1h", "end": str(end), "policy": policy,
                                                       "out_dir": str(root / "monitor" / name)})
        began = time.monotonic()
        results[name] = monitoring.run(config)
        seconds.append(time.monotonic() - began)
    print(f"\nmonitoring test: {len(plan)} windows written in {written:.1f} s, monitored in {sum(seconds):.1f} s")
    return {"results": results, "root": root, "policy": policy, "t0": t0, "client": client}


def _fired(result: dict) -> set[str]:
    return set(result["versions"]["1"]["fired"]) if result["versions"] else set()


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_clean_traffic_over_20_windows_fires_nothing(monitored):
    clean = [monitored["results"][f"clean_{i}"] for i in range(CLEAN_WINDOWS)]
    assert all(r["requests"] == PER_WINDOW for r in clean)
    false_alarms = [(i, sorted(_fired(r))) for i, r in enumerate(clean) if _fired(r)]
    print(f"false-alarm rate: {len(false_alarms)}/{CLEAN_WINDOWS} clean windows fired a signal")
    assert false_alarms == []
    assert not any(r["retrain"] or r["alert"] for r in clean)


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_each_injected_change_fires_exactly_its_signals(monitored, scenario):
    result = monitored["results"][scenario]
    assert _fired(result) == EXPECTED[scenario]
    severities = {r["signal"]: r["severity"] for r in result["alerts"] + result["reasons"]}
    assert set(severities) == EXPECTED[scenario]


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_a_retrain_decision_carries_its_reasons(monitored):
    result = monitored["results"]["longer_prompts"]
    assert result["retrain"] is True and result["alert"] is False
    assert result["model_version"] == "1" and result["production_version"] == "1"
    reasons = {r["signal"]: r for r in result["reasons"]}
    assert set(reasons) == {"prompt_chars", "prompt_words"}
    assert all(r["value"] > r["threshold"] and r["p_value"] < 0.001 for r in reasons.values())
    thumbs = monitored["results"]["thumbs_down_surge"]
    assert thumbs["retrain"] is True  # 48 h after the last request: out of the cooldown again
    assert [r["signal"] for r in thumbs["reasons"]] == ["thumbs_down"]


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_below_the_minimum_sample_nothing_fires(monitored):
    result = monitored["results"]["below_minimum"]
    assert result["requests"] == 10
    assert _fired(result) == set() and not result["retrain"]
    signals_file = json.loads(Path(result["versions"]["1"]["signals"]).read_text())
    chars = signals_file["signals"]["prompt_chars"]
    assert chars["value"] > chars["threshold"]  # the prompts are longer, but 10 requests decide nothing
    assert "too few requests (10 < min_requests 25)" in chars["why"]


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_the_cooldown_holds_a_second_request(monitored):
    result = monitored["results"]["cooldown"]
    assert _fired(result) == {"prompt_chars", "prompt_words"}
    assert result["retrain"] is False
    assert result["versions"]["1"]["retrain_held_by_cooldown"] is True


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_alerts_and_examples_are_masked_in_the_report(monitored):
    result = monitored["results"]["pii_leak"]
    assert result["alert"] is True and result["retrain"] is False
    page = Path(result["report"]).read_text()
    assert "AKIAIOSFODNN7EXAMPLE" not in page and "jane.doe@example.com" not in page
    assert "[aws_access_key: AKIA…]" in page
    run = monitored["client"].get_run(result["versions"]["1"]["mlflow_run_id"])
    assert "secret_answers" in run.data.tags[monitoring.TAG_LAST_ALERT]  # the alert is recorded in MLflow
    assert "<script" not in page and "<svg" in page
    stored = json.loads(Path(result["versions"]["1"]["signals"]).read_text())
    assert stored["signals"]["secret_answers"]["value"] == 1.0
    assert stored["signals"]["secret_answers"]["details"]["kinds"] == {"aws_access_key": 1}
    assert stored["reference"]["training_prompts"].endswith("train_sft.jsonl")  # found through the lineage


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_signals_are_an_mlflow_time_series_per_version(monitored):
    client = monitored["client"]
    run_id = monitored["results"]["clean_0"]["versions"]["1"]["mlflow_run_id"]
    assert all(r["versions"]["1"]["mlflow_run_id"] == run_id for r in monitored["results"].values())
    history = client.get_metric_history(run_id, "requests")
    assert len(history) == len(monitored["results"])
    assert len({m.step for m in history}) == len(history)  # one step (window index) per window
    fired = {m.step: m.value for m in client.get_metric_history(run_id, "prompt_chars.fired")}
    longer = monitored["results"]["longer_prompts"]["window"]["index"]
    assert fired[longer] == 1.0 and sum(fired.values()) == 2.0  # longer_prompts and cooldown
    tags = client.get_model_version(MODEL, "1").tags
    assert tags[monitoring.TAG_REPORT].endswith("report.html") and tags[monitoring.TAG_MONITOR_RUN] == run_id
    artifacts = [a.path for a in client.list_artifacts(run_id, "windows")]
    assert len(artifacts) == len(monitored["results"])


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_a_rerun_of_a_window_logs_no_second_point(monitored, llmops):
    result = monitored["results"]["clean_3"]
    run_id = result["versions"]["1"]["mlflow_run_id"]
    before = len(monitored["client"].get_metric_history(run_id, "requests"))
    code, again = llmops(["monitor", "--window", "1h", "--end", result["window"]["end"], "--policy", monitored["policy"],
                          "--out-dir", str(monitored["root"] / "rerun")])
    assert code == 0 and again["requests"] == PER_WINDOW and again["versions"]["1"]["fired"] == []
    assert len(monitored["client"].get_metric_history(run_id, "requests")) == before


@pytest.mark.slow  # the module's traffic: ~800 traces written at ~25/s
def test_no_traffic_is_not_an_error(monitored, llmops):
    code, result = llmops(["monitor", "--window", "90m", "--end", "2020-01-01T00:00:00Z"])
    assert code == 0 and result["requests"] == 0 and result["versions"] == {} and not result["retrain"]


@pytest.mark.parametrize("flag, value, message", [
    ("--window", "24 hours", "window must be a number and a unit"),
    ("--end", "yesterday", "end must be empty (now)"),
    ("--model-version", "latest", "model_version must be a version number"),
    ("--model-name", "team/model:v1", "model_name 'team/model:v1' cannot be a registered model name"),
    ("--history", "0", "history must be 1 or more"),
    ("--policy", "no-such-policy.yaml", "no-such-policy.yaml"),
])
def test_bad_settings_are_one_line_and_exit_2(llmops, mlflow_store, capsys, flag, value, message):
    from llmops_tasks.cli import main

    code = main(["monitor", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_a_bad_policy_names_the_setting(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("signals:\n  prompt_lenght: {threshold: 0.2}\n")
    with pytest.raises(ConfigError, match="unknown signal"):
        policies.load(str(bad))
    bad.write_text("retrain_when: prompt_chars and __import__('os')\n")
    with pytest.raises(ConfigError, match="unknown signal|only signal names"):
        policies.load(str(bad))
    bad.write_text("signals:\n  error_rate: {threshold: 0.1, severity: page}\n")
    with pytest.raises(ConfigError, match="severity must be one of"):
        policies.load(str(bad))


def test_a_combining_rule():
    assert policies.rule_holds("prompt_chars and vocab_novelty", {"prompt_chars", "vocab_novelty"}, set())
    assert not policies.rule_holds("prompt_chars and vocab_novelty", {"prompt_chars"}, {"prompt_chars"})
    assert policies.rule_holds("any", {"error_rate"}, {"error_rate"})
    assert not policies.rule_holds("any", {"error_rate"}, set())
    assert policies.rule_holds("not script_mix or thumbs_down", set(), set())


def test_only_the_production_version_can_ask_for_a_rollback():
    """Traffic of the version before the current one can still be in the window after a promotion;
    its severe signal must not roll production (its successor) back."""

    def result(rollback: bool) -> dict:
        decision = {"fired": ["secret_answers"] if rollback else [], "retrain": False, "retrain_held_by_cooldown": False,
                    "alert": rollback, "rollback": rollback, "rollback_signals": ["secret_answers"] if rollback else [],
                    "reasons": []}
        return {"requests": 120, "decision": decision, "report": "r.html", "signals_path": "s.json", "mlflow_run_id": "x"}

    config = monitoring.MonitorConfig(model_name="m")
    window = {"start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z", "length": "1h"}
    old_version_leaked = monitoring.summarize(config, window, {"1": result(True), "2": result(False)}, production="2")
    assert old_version_leaked["rollback"] is False and old_version_leaked["rollback_reason"] == ""
    assert old_version_leaked["alert"] is True  # still an alert: a person looks at it
    production_leaked = monitoring.summarize(config, window, {"1": result(False), "2": result(True)}, production="2")
    assert production_leaked["rollback"] is True
    assert production_leaked["rollback_reason"] == "monitoring: v2 secret_answers in window 2026-12-01T11:00:00Z"


def test_the_answer_signals():
    found = signals.measure(
        ["", "I'm sorry, I cannot help with that.", "the cat sat the cat sat the cat sat the cat sat",
         "How do I reset my password? Open Settings.", "mail me at a.b@example.org"],
        ["q", "q", "q", "How do I reset my password?", "q"])
    assert found.counts() == {"answers": 5, "empty": 1, "refusal": 1, "repetitive": 1, "echo": 1, "pii": 1,
                              "secret": 0}
    assert found.kind_counts() == {"email": 1}
    assert signals.masked("key AKIAIOSFODNN7EXAMPLE here") == "key [aws_access_key: AKIA…] here"


def test_the_drift_tests_against_scipy():
    from scipy import stats

    rng = random.Random(3)
    a = [rng.gauss(0, 1) for _ in range(300)]
    b = [rng.gauss(0.5, 1) for _ in range(300)]
    value, p, details = drift.distribution(a, b)
    assert value == pytest.approx(stats.ks_2samp(a, b).statistic) and p < 0.001 and details["psi"] > 0.1
    rise, p, details = drift.rate_rise(7, 100, 0, 100)  # expected counts below 5: Fisher's exact test
    assert rise == pytest.approx(0.07) and details["test"] == "fisher_exact"
    assert p == pytest.approx(stats.fisher_exact([[7, 93], [0, 100]], alternative="greater").pvalue)
    rise, p, details = drift.rate_rise(30, 100, 10, 100)
    assert rise == pytest.approx(0.2) and details["test"] == "chi2_contingency" and p < 0.001
    assert drift.rate_rise(1, 100, 5, 100)[0] < 0 and drift.rate_rise(1, 100, 5, 100)[1] == 1.0
    v, p, _ = drift.mix({"Latin": 50, "Cyrillic": 50}, {"Latin": 100})
    assert v > 0.5 and p < 0.001
    assert drift.psi([1, 2, 3] * 50, [1, 2, 3] * 50) == pytest.approx(0.0)


def test_the_reference_download_removes_only_its_own_folder(tmp_path):
    """The eval predictions are downloaded to a temporary folder and that folder alone is removed
    afterwards, wherever MLflow put the file inside it (an earlier cleanup went two folders up
    from the file and removed the system's temporary folder)."""
    from llmops_tasks.monitoring import reference

    own = tmp_path / f"{reference.TEMP_PREFIX}abc"
    (own / "evaluation").mkdir(parents=True)
    beside = tmp_path / "beside.txt"
    beside.write_text("keep")
    for path in (own / "predictions_candidate.jsonl", own / "evaluation" / "predictions_candidate.jsonl"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
        reference._remove_download(str(path))
        assert not own.exists() and beside.read_text() == "keep"
        (own / "evaluation").mkdir(parents=True)
    stray = tmp_path / "elsewhere" / "predictions_candidate.jsonl"  # not in a download folder: left alone
    stray.parent.mkdir()
    stray.write_text("{}\n")
    reference._remove_download(str(stray))
    assert stray.is_file()
