"""The gate's rules on hand-written metrics.json files, through decide(), run() and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_tasks import cli
from llmops_tasks.core import config, settings
from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.gate import GateConfig, decide, run

pytestmark = pytest.mark.unit

RECIPE = Path(__file__).resolve().parents[1] / "llmops_tasks" / "policies" / "gate.yaml"


def metrics(candidate: dict, champion: dict, ci: dict | None = None) -> dict:
    scores = ("bleu", "rouge1", "rouge2", "rougeL")
    return {
        "candidate": {k: candidate.get(k, 0.5) for k in scores} | {"gen_len": 20.0},
        "champion": {k: champion.get(k, 0.5) for k in scores} | {"gen_len": 20.0},
        "delta": {k: candidate.get(k, 0.5) - champion.get(k, 0.5) for k in scores},
        "ci": ci if ci is not None else {"bleu": [0.01, 0.09], "rougeL": [0.02, 0.10]},
        "champion_label": "production v3",
        "n": 40,
    }


IMPROVING = metrics({"bleu": 0.40, "rougeL": 0.55}, {"bleu": 0.35, "rougeL": 0.49})
REGRESSING = metrics(
    {"bleu": 0.30, "rougeL": 0.50}, {"bleu": 0.36, "rougeL": 0.49}, ci={"bleu": [-0.1, -0.02], "rougeL": [-0.02, 0.04]}
)


@pytest.fixture
def policy(tmp_path, monkeypatch) -> GateConfig:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    return GateConfig()


def failed(decision: dict) -> list[tuple[str, str]]:
    return [(r["rule"], r["metric"]) for r in decision["rules"] if not r["passed"]]


def test_improving_candidate_passes(policy):
    decision = decide(IMPROVING, policy)
    assert decision["passed"] is True
    assert failed(decision) == []
    assert decision["reason"].startswith("passed all 7 rules against production v3; rougeL change +0.0600")
    assert {r["rule"] for r in decision["rules"]} == {"min_bleu", "min_rougeL", "max_regression", "min_improvement"}
    assert all(set(r) >= {"rule", "metric", "value", "threshold", "passed"} for r in decision["rules"])
    assert decision["candidate"]["bleu"] == 0.40 and decision["champion"]["bleu"] == 0.35


def test_regressing_candidate_is_rejected_with_the_rule_named(policy):
    decision = decide(REGRESSING, policy)
    assert decision["passed"] is False
    assert failed(decision) == [("max_regression", "bleu"), ("min_improvement", "rougeL")]
    assert decision["reason"].startswith("rejected: max_regression (bleu): bleu 0.3000 vs 0.3600 for production v3")
    assert "min_improvement (rougeL)" in decision["reason"]
    assert "\n" not in decision["reason"]
    bleu_rule = next(r for r in decision["rules"] if r["rule"] == "max_regression" and r["metric"] == "bleu")
    assert bleu_rule["value"] == pytest.approx(-0.06) and bleu_rule["threshold"] == -0.02


def test_disabled_min_improvement_leaves_only_floors_and_regressions(policy):
    within_tolerance = metrics({"rougeL": 0.49}, {"rougeL": 0.50}, ci={"rougeL": [-0.05, 0.03]})
    assert failed(decide(within_tolerance, policy)) == [("min_improvement", "rougeL")]
    policy.min_improvement = None
    decision = decide(within_tolerance, policy)
    assert decision["passed"] is True
    assert "min_improvement" not in {r["rule"] for r in decision["rules"]}


def test_floors_and_a_missing_interval(policy):
    policy.min_bleu, policy.min_rougeL = 0.5, 0.6
    decision = decide(metrics({"bleu": 0.45, "rougeL": 0.7}, {"bleu": 0.45, "rougeL": 0.7}, ci={}), policy)
    assert failed(decision) == [("min_bleu", "bleu"), ("min_improvement", "rougeL")]
    assert "no confidence interval for rougeL" in decision["reason"]


def test_thresholds_are_read_from_the_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    loaded = config.load(GateConfig, RECIPE)
    assert loaded.thresholds() == GateConfig().thresholds()

    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "min_bleu: 0.38\nmax_regression: 0.0\nregression_metrics: [bleu, rougeL]\nmin_improvement: null\n"
    )
    loaded = config.load(GateConfig, strict)
    assert (loaded.min_bleu, loaded.max_regression, loaded.regression_metrics, loaded.min_improvement) == (
        0.38, 0.0, ["bleu", "rougeL"], None,
    )
    assert decide(IMPROVING, loaded)["passed"] is True
    loaded.min_bleu = 0.41
    assert failed(decide(IMPROVING, loaded)) == [("min_bleu", "bleu")]


def test_policy_file_fills_thresholds_not_set_inline(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("min_rougeL: 0.3\nmax_regression: 0.05\nprimary_metric: bleu\n")
    gate = config.load(GateConfig, None, [f"policy={policy_file}", "max_regression=0.01"])
    assert (gate.min_rougeL, gate.max_regression, gate.primary_metric) == (0.3, 0.01, "bleu")


def test_the_decision_says_whether_the_gate_ran_the_deployments_standard_policy(tmp_path, monkeypatch):
    """Standard means: every threshold equals the deployment's policy's, whichever file they came from."""
    from llmops_tasks.gate import standard_policy_check

    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    monkeypatch.delenv("LLMOPS_GATE_POLICY", raising=False)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(IMPROVING))
    same = tmp_path / "copy-of-standard.yaml"
    same.write_text(Path(settings.packaged_policy("gate.yaml")).read_text())
    for standard in (GateConfig(metrics=str(metrics)), GateConfig(metrics=str(metrics), policy=str(same))):
        assert standard_policy_check(standard) == {
            "policy_standard": True, "standard_policy_file": settings.packaged_policy("gate.yaml"), "overrides": {}}
    loosened = GateConfig(metrics=str(metrics), max_regression=0.5)
    assert standard_policy_check(loosened)["overrides"] == {"max_regression": {"value": 0.5, "standard": 0.02}}
    decision = run(GateConfig(metrics=str(metrics), out_dir=str(tmp_path / "gate"), max_regression=0.5, report=False))
    assert decision["policy_standard"] is False and "max_regression" in decision["overrides"]
    # a deployment with a stricter standard policy of its own
    strict = tmp_path / "strict.yaml"
    strict.write_text("min_rougeL: 0.3\n")
    monkeypatch.setenv("LLMOPS_GATE_POLICY", str(strict))
    packaged = GateConfig(metrics=str(metrics), policy=settings.packaged_policy("gate.yaml"))
    assert standard_policy_check(packaged)["overrides"] == {"min_rougeL": {"value": 0.0, "standard": 0.3}}
    # with no policy named, the gate runs the deployment's own (as the CLI does without --policy)
    unnamed = GateConfig(metrics=str(metrics))
    assert unnamed.min_rougeL == 0.3 and standard_policy_check(unnamed)["policy_standard"] is True


def test_unknown_or_bad_settings_are_configuration_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    stale = tmp_path / "stale.yaml"
    stale.write_text("min_bleu: 0.1\nmin_blue: 0.2\n")
    with pytest.raises(ConfigError, match="unknown setting.*min_blue"):
        config.load(GateConfig, stale)
    with pytest.raises(ConfigError, match="unknown setting.*min_blue.*gate policy"):
        GateConfig(policy=str(stale))
    with pytest.raises(ConfigError, match="0-1 scale"):
        GateConfig(min_bleu=25.0)  # a sacrebleu-scale number where a 0-1 one belongs
    with pytest.raises(ConfigError, match="primary_metric"):
        GateConfig(primary_metric="accuracy")
    with pytest.raises(ConfigError, match="not found"):
        GateConfig(policy=str(tmp_path / "missing.yaml"))


def test_run_writes_the_decision_and_fails_on_rejection(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(IMPROVING))
    bad.write_text(json.dumps(REGRESSING))

    result = run(GateConfig(metrics=str(good), out_dir=str(tmp_path / "gate-good")))
    assert result["passed"] is True
    assert json.loads(Path(result["decision_path"]).read_text())["passed"] is True

    with pytest.raises(StepFailed, match="max_regression") as excinfo:
        run(GateConfig(metrics=str(bad), out_dir=str(tmp_path / "gate-bad")))
    assert excinfo.value.result["passed"] is False
    written = json.loads((tmp_path / "gate-bad" / "decision.json").read_text())
    assert written["reason"] == str(excinfo.value)

    with pytest.raises(StepFailed, match="metrics file not found"):
        run(GateConfig(metrics=str(tmp_path / "nope.json")))


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(IMPROVING))
    bad.write_text(json.dumps(REGRESSING))
    assert cli.main(["gate", "--config", str(RECIPE), "--metrics", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    result_file = tmp_path / "r.json"
    assert cli.main(["gate", "--config", str(RECIPE), "--metrics", str(bad), "--result-file", str(result_file)]) == 1
    assert "rejected: max_regression (bleu)" in capsys.readouterr().err
    assert json.loads(result_file.read_text())["passed"] is False
    # Loosening the policy from the command line lets the same candidate through.
    assert cli.main(["gate", "--metrics", str(bad), "--max-regression", "0.1", "--set", "min_improvement=null"]) == 0
    assert cli.main(["gate", "--metrics", str(bad), "--set", "min_bleu=high"]) == 2
    with pytest.raises(SystemExit) as help_exit:  # help text must survive argparse's %-formatting
        cli.main(["gate", "--help"])
    assert help_exit.value.code == 0


def test_preference_and_perplexity_rules_with_their_numbers(policy):
    with_pairs = metrics({"bleu": 0.40, "rougeL": 0.55}, {"bleu": 0.35, "rougeL": 0.49})
    with_pairs["candidate"].update(preference_accuracy=0.85, reward_margin=2.0, perplexity=11.0)
    with_pairs["champion"].update(preference_accuracy=0.60, reward_margin=0.5, perplexity=10.0)
    with_pairs["ci"]["perplexity"] = [0.4, 1.6]
    policy.min_preference_accuracy, policy.max_perplexity = 0.8, 12.0
    policy.regression_metrics = ["bleu", "preference_accuracy", "perplexity"]
    decision = decide(with_pairs, policy)
    # Perplexity rose 10% (lower is better): over the 2% allowed, measured relative to the champion.
    assert failed(decision) == [("max_regression", "perplexity")]
    rule = next(r for r in decision["rules"] if r["metric"] == "perplexity" and r["rule"] == "max_regression")
    assert rule["value"] == pytest.approx(-0.1) and rule["candidate"] == 11.0 and rule["champion"] == 10.0
    assert rule["ci"] == [0.4, 1.6] and "relative change +10.00% (lower is better)" in rule["detail"]
    limits = {r["rule"]: r for r in decision["rules"] if r["rule"] in {"min_preference_accuracy", "max_perplexity"}}
    assert limits["min_preference_accuracy"]["passed"] and limits["min_preference_accuracy"]["value"] == 0.85
    assert limits["max_perplexity"]["passed"] and limits["max_perplexity"]["detail"] == "candidate perplexity 11.0000 <= 12.0000"
    assert decision["failed_rules"] == ["max_regression(perplexity)"]

    policy.max_perplexity = 10.5
    assert ("max_perplexity", "perplexity") in failed(decide(with_pairs, policy))
    policy.max_perplexity, policy.regression_metrics = None, ["preference_accuracy"]
    assert decide(with_pairs, policy)["passed"] is True


def test_preference_floor_without_pairs_in_the_eval_set_fails_with_a_hint(policy):
    policy.min_preference_accuracy = 0.5
    decision = decide(IMPROVING, policy)
    assert failed(decision) == [("min_preference_accuracy", "preference_accuracy")]
    assert "an eval set without chosen/rejected?" in decision["reason"]


def test_every_rule_has_numbers_and_the_reason_is_one_line(policy):
    odd_label = dict(REGRESSING, champion_label="production\nv3")
    decision = decide(odd_label, policy)
    assert "\n" not in decision["reason"]
    for rule in decision["rules"]:
        assert isinstance(rule["passed"], bool) and isinstance(rule["threshold"], float) and rule["detail"]
        assert rule["value"] is None or isinstance(rule["value"], float)
    improvement = next(r for r in decision["rules"] if r["rule"] == "min_improvement")
    assert improvement["ci"] == [-0.02, 0.04] and improvement["value"] == -0.02
    with pytest.raises(ConfigError, match="primary_metric must be one of"):
        GateConfig(primary_metric="perplexity")  # lower is better: no "gain" interval to require
    with pytest.raises(ConfigError, match="min_preference_accuracy is a share"):
        GateConfig(min_preference_accuracy=80)


def test_run_writes_the_report_with_the_decision(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**REGRESSING, "predictions": {"candidate": str(tmp_path / "gone.jsonl")}}))
    with pytest.raises(StepFailed) as excinfo:
        run(GateConfig(metrics=str(bad), out_dir=str(tmp_path / "gate")))
    page = Path(excinfo.value.result["report_path"]).read_text()
    assert "REJECTED" in page and "max_regression" in page  # the predictions are gone: no examples, still a page
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == ["decision.json", "report.html"]
    no_report = run(GateConfig(metrics=str(tmp_path / "bad.json"), out_dir=str(tmp_path / "quiet"), report=False,
                               max_regression=0.1, min_improvement=None))
    assert "report_path" not in no_report and no_report["passed"] is True


def test_gate_step_stops_a_regressing_candidate_and_shows_why(tmp_path, monkeypatch, caplog, mlflow_store):
    """The step the DAG's gate task runs (``run_step("gate", ...)``), real MLflow on SQLite: its log
    line, decision, report and MLflow run; a rejection is a verdict (Rejected), a missing file a failure."""
    import logging

    from llmops_tasks.core.errors import Rejected

    monkeypatch.setenv("LLMOPS_DAG_ID", "llm_retraining")
    monkeypatch.setenv("LLMOPS_RUN_ID", "manual__test")
    policy = {"policy": str(RECIPE), "min_bleu": 0.0, "max_regression": 0.02}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(REGRESSING))
    with caplog.at_level(logging.INFO, logger="llmops_tasks"), pytest.raises(Rejected) as rejected:
        run(GateConfig(metrics=str(bad), **policy))
    log = caplog.text
    decision = rejected.value.result
    # one line per rule, the failed ones first: what a person reads in the task log
    assert "gate REJECTED: nothing is registered against production v3\n  FAIL max_regression (bleu): bleu 0.3000" in log
    assert decision["passed"] is False
    assert decision["policy_file"].endswith("policies/gate.yaml")
    assert Path(decision["report_path"]).read_text().count("REJECTED") >= 1 and decision["report_path"] in log
    assert decision["mlflow_run_url"]

    good = tmp_path / "good.json"
    good.write_text(json.dumps(IMPROVING))
    assert run(GateConfig(metrics=str(good), **policy))["passed"] is True
    with pytest.raises(StepFailed, match="metrics file not found") as missing:  # a crash, not a rejection
        run(GateConfig(metrics=str(tmp_path / "missing.json"), **policy))
    assert not isinstance(missing.value, Rejected)


def test_a_metric_evaluate_could_not_measure_fails_every_rule_on_it_by_name(policy):
    """Both models at 0.0 on a metric whose references have no tokens: no measurement, so no pass."""
    blind = metrics({"bleu": 0.40, "rougeL": 0.0}, {"bleu": 0.35, "rougeL": 0.0},
                    ci={"bleu": [0.01, 0.09], "rougeL": [0.0, 0.0]})
    assert decide(blind, policy)["passed"] is True  # what the gate did before evaluate said so
    why = "no reference has a token under ROUGE tokenizer 'default' (rouge_score's own: lower-cased a-z0-9 runs)"
    blind["unmeasurable"] = {"rougeL": why}
    decision = decide(blind, policy)
    assert decision["passed"] is False
    assert failed(decision) == [("min_rougeL", "rougeL"), ("max_regression", "rougeL"), ("min_improvement", "rougeL")]
    assert all(r["detail"] == f"rougeL could not be measured: {why}" for r in decision["rules"] if not r["passed"])
    assert decision["reason"].startswith(f"rejected: min_rougeL (rougeL): rougeL could not be measured: {why}")
    assert all(r["passed"] for r in decision["rules"] if r["metric"] == "bleu")


def test_both_models_at_zero_on_a_measurable_metric_is_a_measurement(policy):
    """References with tokens, answers sharing none: 0.0 is a real score and the rules judge it."""
    zero = metrics({"rouge2": 0.0}, {"rouge2": 0.0}, ci={"bleu": [0.01, 0.09], "rougeL": [0.02, 0.10]})
    zero["unmeasurable"] = {}
    decision = decide(zero, policy)
    assert decision["passed"] is True
    rouge2 = next(r for r in decision["rules"] if r["metric"] == "rouge2")
    assert rouge2["passed"] and rouge2["detail"].startswith("rouge2 0.0000 vs 0.0000")


# --- answer rules: the candidate's eval answers, measured as monitoring measures production ---


def _with_predictions(tmp_path, candidate_answers: list[str], champion_answers: list[str]) -> dict:
    from llmops_tasks.core import data

    prompts = [f"How do I change setting number {i}?" for i in range(len(candidate_answers))]
    paths = {}
    for who, answers in (("candidate", candidate_answers), ("champion", champion_answers)):
        paths[who] = str(tmp_path / f"predictions_{who}.jsonl")
        data.write_jsonl(paths[who], [{"prompt": p, "reference": "Open Settings.", "prediction": a}
                                      for p, a in zip(prompts, answers)])
    return {**IMPROVING, "predictions": paths}


GIBBERISH = ["zq plor ventu", "kal kal mi", "", "rop e sta lun", "vo vo", "mirtal sen oq"] * 5


def test_answer_rules_let_a_gibberish_candidate_through_against_a_gibberish_champion(policy, tmp_path):
    """What the embedded demo's tiny random-weight models answer: the loose defaults pass it."""
    decision = decide(_with_predictions(tmp_path, GIBBERISH[1:] + GIBBERISH[:1], GIBBERISH), policy)
    answer = [r for r in decision["rules"] if r["metric"].endswith("_answers") or r["rule"] == "no_new_leaks"]
    assert {r["rule"] for r in answer} == {"max_empty_rate", "max_refusal_rate", "max_echo_rate", "max_pii_rate",
                                           "max_answer_rate_rise", "no_new_leaks"}
    assert decision["passed"] is True, decision["reason"]


def test_a_candidate_leaking_a_secret_the_champion_did_not_is_rejected_by_name(policy, tmp_path):
    candidate = ["Open Settings."] * 29 + ["Use the key AKIAIOSFODNN7EXAMPLE to get in."]
    decision = decide(_with_predictions(tmp_path, candidate, ["Open Settings."] * 30), policy)
    assert decision["passed"] is False
    assert decision["failed_rules"] == ["no_new_leaks(pii_kinds)"]
    leak = next(r for r in decision["rules"] if r["rule"] == "no_new_leaks")
    assert leak["kinds"] == ["aws_access_key"] and "aws_access_key" in decision["reason"]
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(leak["examples"])  # masked
    # the same secret in the champion's answers: not new, not this rule's business
    same = decide(_with_predictions(tmp_path, candidate, candidate), policy)
    assert same["passed"] is True


def test_a_refusal_surge_against_the_champion_fails_with_examples_in_the_report(policy, tmp_path):
    candidate = ["I'm sorry, I cannot help with that."] * 10 + ["Open Settings."] * 20
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(_with_predictions(tmp_path, candidate, ["Open Settings."] * 30)))
    with pytest.raises(StepFailed):
        run(GateConfig(metrics=str(path), out_dir=str(tmp_path / "gate")))
    decision = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert decision["failed_rules"] == ["max_answer_rate_rise(refusal_answers)"]
    page = (tmp_path / "gate" / "report.html").read_text()
    assert "Answer rules: examples" in page and "I&#x27;m sorry, I cannot help with that." in page


def test_answer_limits_come_from_the_policy_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    strict = tmp_path / "strict.yaml"
    strict.write_text("max_empty_rate: 0.05\nmax_answer_rate_rise: null\n")
    policy = GateConfig(policy=str(strict))
    decision = decide(_with_predictions(tmp_path, GIBBERISH, GIBBERISH), policy)
    assert decision["failed_rules"] == ["max_empty_rate(empty_answers)"]
    assert not any(r["rule"] == "max_answer_rate_rise" for r in decision["rules"])
    with pytest.raises(ConfigError, match="max_echo_rate is a share"):
        GateConfig(max_echo_rate=2.0)
