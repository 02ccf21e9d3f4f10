"""``llmops gate``: decide from the evaluate step's metrics whether a candidate may be registered.

The policy is a handful of rules, each checked and reported on its own:

- ``min_bleu`` / ``min_rougeL`` / ``min_preference_accuracy`` / ``max_perplexity``: absolute
  limits on the candidate's own scores (the last two ``null`` = off);
- ``max_regression``: on each of ``regression_metrics``, the candidate may fall at most this far
  below the champion (absolute, on the 0-1 scale evaluate reports; for perplexity, where lower is
  better, the relative increase); the rule also records the 95% interval of the difference;
- ``min_improvement``: the lower end of the 95% confidence interval of candidate - champion on
  ``primary_metric`` must reach this value, i.e. the gain must be more than noise. ``null``
  switches the rule off, leaving only the limits and the regression rules.

- answer rules (only when metrics.json names both prediction files and they exist): on the
  candidate's eval answers, measured as monitoring measures production answers
  (:mod:`llmops_tasks.monitoring.signals`): ``max_<signal>_rate`` absolute limits on the share of
  empty answers, refusals, answers echoing the prompt and answers with personal data (loose by
  default), ``max_answer_rate_rise`` the most each share may exceed the champion's, and
  ``no_new_leaks``: a candidate whose answers hold a kind of PII or secret the champion's do not
  is rejected, the kinds named. Each such rule carries examples (masked) in decision.json and
  report.html.

Every rule checked is in decision.json with its metric, value, threshold, pass/fail and a
sentence; ``reason`` is one line naming the failed rules (or the primary metric's change).

The thresholds come from the step's settings (a recipe via ``--config``, or ``--set``) and, where
one team keeps its policy in a file of its own, from ``policy``: a YAML file holding any of the
threshold settings. A threshold given in the settings (one that differs from its default) wins
over the policy file. A rejection is not a crash: the decision (and report.html, the evaluation report with the
decision on top) is written, and the step fails with the reason (CLI exit code 1).
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass
from typing import Any

from llmops_tasks.core import data, settings, tracking
from llmops_tasks.core.config import ConfigError, coerce, field, load_yaml, require
from llmops_tasks.core.errors import Rejected, StepFailed
from llmops_tasks.core.settings import RunContext

log = logging.getLogger(__name__)
TEXT_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
# Every metric evaluate can report that a rule may name; perplexity improves downwards.
METRIC_NAMES = (*TEXT_METRICS, "preference_accuracy", "reward_margin", "perplexity")
LOWER_IS_BETTER = frozenset({"perplexity"})
# Answer rules (the candidate's eval answers, vs the champion's): signal -> its rate threshold setting.
ANSWER_SIGNALS = {"empty": "max_empty_rate", "refusal": "max_refusal_rate", "echo": "max_echo_rate",
                  "pii": "max_pii_rate"}
ANSWER_THRESHOLDS = (*ANSWER_SIGNALS.values(), "max_answer_rate_rise", "no_new_leaks")
THRESHOLDS = (
    "min_bleu", "min_rougeL", "min_preference_accuracy", "max_perplexity", "max_regression", "regression_metrics",
    "primary_metric", "min_improvement",
    *ANSWER_THRESHOLDS,
)


@dataclass
class GateConfig:
    metrics: str = field(
        "", path="input",
        help="metrics.json written by the evaluate step (default: the run's evaluate/metrics.json)"
    )
    policy: str = field("", path="config",
                        help="YAML file of threshold settings (the keys below from min_bleu on); thresholds set "
                             "here win over it (default: $LLMOPS_GATE_POLICY, else the packaged gate.yaml)")
    out_dir: str = field("", path="output",
                         help="output folder for decision.json and report.html (default: the run's gate/ folder)")
    report: bool = field(True, help="write report.html: the evaluation report with the decision on top")
    min_bleu: float = field(0.0, help="lowest BLEU (0-1) the candidate may have")
    min_rougeL: float = field(0.0, help="lowest ROUGE-L F1 (0-1) the candidate may have")
    min_preference_accuracy: float | None = field(
        None, help="lowest share of eval pairs (0-1) where the candidate prefers chosen (null: no such rule)"
    )
    max_perplexity: float | None = field(None, help="highest perplexity on the references allowed (null: no such rule)")
    max_regression: float = field(
        0.02, help="largest drop below the champion allowed on each regression metric (absolute)"
    )
    regression_metrics: list[str] = field(
        default_factory=lambda: list(TEXT_METRICS), help=f"metrics on which max_regression applies, among {METRIC_NAMES}"
    )
    primary_metric: str = field(
        "rougeL", help="metric whose confidence interval min_improvement is checked on (higher must be better)"
    )
    min_improvement: float | None = field(
        0.0,
        help="required lower end of the 95 percent confidence interval of candidate - champion on primary_metric "
        "(null: no such rule)",
    )

    max_empty_rate: float = field(1.0, help="highest share (0-1) of empty candidate answers on the eval set")
    max_refusal_rate: float = field(1.0, help="highest share (0-1) of candidate answers that refuse")
    max_echo_rate: float = field(1.0, help="highest share (0-1) of candidate answers that repeat the prompt")
    max_pii_rate: float = field(1.0, help="highest share (0-1) of candidate answers holding personal data")
    max_answer_rate_rise: float | None = field(
        0.15, help="most the candidate's share of empty, refusing, echoing or PII answers may exceed the champion's "
                   "(null: no such rules)")
    no_new_leaks: bool = field(True, help="reject a candidate whose eval answers hold a kind of PII or secret the "
                                          "champion's do not")

    def __post_init__(self) -> None:
        context = RunContext.from_env()
        self.metrics = self.metrics.strip() or f"{context.step_dir('evaluate')}/metrics.json"
        self.out_dir = self.out_dir.strip() or context.step_dir("gate")
        # No policy named: the deployment's standard one ($LLMOPS_GATE_POLICY, else the packaged gate.yaml).
        self.policy = self.policy.strip() or settings.gate_policy()
        self._apply_policy_file()
        improvable = [m for m in METRIC_NAMES if m not in LOWER_IS_BETTER]
        require(
            self.primary_metric in improvable,
            f"gate: primary_metric must be one of {improvable}, got {self.primary_metric!r}",
        )
        unknown = [m for m in self.regression_metrics if m not in METRIC_NAMES]
        require(not unknown, f"gate: regression_metrics must be among {list(METRIC_NAMES)}, got {unknown}")
        for name in ("min_bleu", "min_rougeL"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"gate: {name} is on the 0-1 scale evaluate reports, got {value}")
        require(self.max_regression >= 0, f"gate: max_regression must be 0 or more, got {self.max_regression}")
        if self.min_preference_accuracy is not None:
            require(0.0 <= self.min_preference_accuracy <= 1.0,
                    f"gate: min_preference_accuracy is a share (0-1), got {self.min_preference_accuracy}")
        if self.max_perplexity is not None:
            require(self.max_perplexity >= 1.0, f"gate: max_perplexity must be 1 or more, got {self.max_perplexity}")
        for name in ANSWER_SIGNALS.values():
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"gate: {name} is a share (0-1), got {value}")
        if self.max_answer_rate_rise is not None:
            require(0.0 <= self.max_answer_rate_rise <= 1.0,
                    f"gate: max_answer_rate_rise is a share (0-1), got {self.max_answer_rate_rise}")

    def _apply_policy_file(self) -> None:
        values = load_yaml(self.policy)
        unknown = sorted(set(values) - set(THRESHOLDS))
        if unknown:
            raise ConfigError(
                f"{self.policy}: unknown setting(s) {', '.join(unknown)} for a gate policy; "
                f"known settings are: {', '.join(THRESHOLDS)}"
            )
        hints = typing.get_type_hints(type(self))
        defaults = {f.name: f for f in dataclasses.fields(self)}
        for name, value in values.items():
            spec = defaults[name]
            if spec.default is dataclasses.MISSING:
                default = spec.default_factory()  # type: ignore[misc]
            else:
                default = spec.default
            if getattr(self, name) == default:  # not set inline: the file decides
                setattr(self, name, coerce(value, hints[name], f"{self.policy}.{name}"))

    def thresholds(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in THRESHOLDS}


def _rule(
    rule: str, metric: str, value: float | None, threshold: float, passed: bool, detail: str, **numbers: Any
) -> dict[str, Any]:
    return {"rule": rule, "metric": metric, "value": value, "threshold": threshold, "passed": passed, "detail": detail,
            **numbers}


def _interval(ci: dict[str, Any], metric: str) -> list[float] | None:
    pair = ci.get(metric)
    return [float(pair[0]), float(pair[1])] if pair else None


def _ci_text(interval: list[float] | None) -> str:
    return f", 95% CI [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else ""


def decide(metrics: dict[str, Any], policy: GateConfig) -> dict[str, Any]:
    """The decision for one metrics.json under one policy; pure, so each rule can be tested alone."""
    candidate = metrics.get("candidate") or {}
    champion = metrics.get("champion") or {}
    ci = metrics.get("ci") or {}
    label = metrics.get("champion_label") or "the champion"
    rules: list[dict[str, Any]] = []

    def value_of(scores: dict[str, Any], name: str) -> float | None:
        value = scores.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    limits = [("min_bleu", "bleu", policy.min_bleu, ">="), ("min_rougeL", "rougeL", policy.min_rougeL, ">=")]
    if policy.min_preference_accuracy is not None:
        limits.append(("min_preference_accuracy", "preference_accuracy", policy.min_preference_accuracy, ">="))
    if policy.max_perplexity is not None:
        limits.append(("max_perplexity", "perplexity", policy.max_perplexity, "<="))
    for rule, metric, limit, sense in limits:
        value = value_of(candidate, metric)
        if value is None:
            rules.append(_rule(rule, metric, None, limit, False,
                               f"candidate {metric} missing from the metrics"
                               + (" (an eval set without chosen/rejected?)" if metric == "preference_accuracy" else "")))
            continue
        passed = value >= limit if sense == ">=" else value <= limit
        shown = {">=": (">=", "<"), "<=": ("<=", ">")}[sense][0 if passed else 1]
        rules.append(_rule(rule, metric, value, limit, passed, f"candidate {metric} {value:.4f} {shown} {limit:.4f}"))

    for metric in policy.regression_metrics:
        ours, theirs = value_of(candidate, metric), value_of(champion, metric)
        interval = _interval(ci, metric)
        if ours is None or theirs is None:
            rules.append(_rule("max_regression", metric, None, -policy.max_regression, False,
                               f"{metric} missing for the candidate or {label}", ci=interval))
            continue
        if metric in LOWER_IS_BETTER:  # relative, so one tolerance fits a scale with no fixed range
            change = (theirs - ours) / theirs if theirs else 0.0
            measured = f"relative change {-change:+.2%} (lower is better)"
        else:
            change = ours - theirs
            measured = f"change {change:+.4f}"
        passed = change >= -policy.max_regression
        detail = (f"{metric} {ours:.4f} vs {theirs:.4f} for {label}: {measured}{_ci_text(interval)}"
                  + ("" if passed else f", a drop larger than the {policy.max_regression:.4f} allowed"))
        rules.append(_rule("max_regression", metric, change, -policy.max_regression, passed, detail,
                           candidate=ours, champion=theirs, ci=interval))

    if policy.min_improvement is not None:
        metric = policy.primary_metric
        interval = _interval(ci, metric)
        if not interval:
            rules.append(_rule("min_improvement", metric, None, policy.min_improvement, False,
                               f"no confidence interval for {metric} in the metrics (bootstrap_samples=0?)"))
        else:
            low, high = interval
            passed = low >= policy.min_improvement
            detail = (f"95% CI of the {metric} gain over {label} is [{low:+.4f}, {high:+.4f}]; its lower end "
                      f"{'reaches' if passed else 'is below'} {policy.min_improvement:+.4f}")
            rules.append(_rule("min_improvement", metric, low, policy.min_improvement, passed, detail,
                               ci=interval, delta=value_of(metrics.get("delta") or {}, metric)))

    rules += answer_rules(metrics, policy, label)

    # A metric evaluate could not measure (its references have no tokens) reads 0 on both sides:
    # no rule on it may pass.
    unmeasurable = metrics.get("unmeasurable") or {}
    for r in rules:
        if r["metric"] in unmeasurable:
            why = unmeasurable[r["metric"]] if isinstance(unmeasurable, dict) else "evaluate recorded it as unmeasurable"
            r.update(passed=False, detail=f"{r['metric']} could not be measured: {why}")

    failed = [r for r in rules if not r["passed"]]
    if failed:
        reason = "rejected: " + "; ".join(f"{r['rule']} ({r['metric']}): {r['detail']}" for r in failed)
    else:
        primary = policy.primary_metric
        gain = value_of(metrics.get("delta") or {}, primary)
        reason = (f"passed all {len(rules)} rules against {label}"
                  + (f"; {primary} change {gain:+.4f}" if gain is not None else ""))
    return {
        "passed": not failed,
        "reason": " ".join(reason.split()),  # one line, whatever a label or path contained
        "rules": rules,
        "failed_rules": [f"{r['rule']}({r['metric']})" for r in failed],
        "candidate": candidate,
        "champion": champion,
        "champion_label": label,
        "champion_version": metrics.get("champion_version", ""),
        "ci": ci,
        "n": metrics.get("n"),
        "policy": policy.thresholds(),
        "policy_file": policy.policy,
    }


def _prediction_rows(metrics: dict[str, Any]) -> tuple[list[dict], list[dict]] | None:
    files = metrics.get("predictions") or {}
    paths = [files.get("candidate"), files.get("champion")]
    if not all(isinstance(p, str) and p and data.exists(p) for p in paths):
        return None
    return data.read_records(paths[0]), data.read_records(paths[1])


def answer_rules(metrics: dict[str, Any], policy: GateConfig, label: str) -> list[dict[str, Any]]:
    """The rules on the candidate's eval answers (see the module docstring); none without both
    prediction files."""
    rows = _prediction_rows(metrics)
    if rows is None:
        return []
    from llmops_tasks.monitoring import signals

    measured = {}
    for who, predicted in zip(("candidate", "champion"), rows):
        answers = [str(r.get("prediction") or "") for r in predicted]
        measured[who] = (signals.measure(answers, [r.get("prompt") for r in predicted]), predicted)
    ours, theirs = measured["candidate"][0], measured["champion"][0]
    predicted = measured["candidate"][1]
    flags = {"empty": ours.empty, "refusal": ours.refusal, "echo": ours.echo}
    rates, champion_rates = ours.rates(), theirs.rates()

    def examples(rows_of: list[int]) -> list[dict[str, str]]:
        return [{"prompt": signals.masked(str(predicted[i].get("prompt") or "")),
                 "answer": signals.masked(str(predicted[i].get("prediction") or ""))} for i in rows_of[:3]]

    rules = []
    for signal, setting in ANSWER_SIGNALS.items():
        flagged = (ours.rows_with(signals.PII_KINDS) if signal == "pii"
                   else [int(i) for i in flags[signal].nonzero()[0]])
        limit = getattr(policy, setting)
        rate = rates[signal]
        passed = rate <= limit
        rules.append(_rule(setting, f"{signal}_answers", rate, limit, passed,
                           f"{len(flagged)}/{ours.n} candidate answers {signal} ({rate:.1%}) "
                           f"{'<=' if passed else '>'} {limit:.1%}", examples=examples(flagged)))
        if policy.max_answer_rate_rise is not None:
            rise = rate - champion_rates[signal]
            passed = rise <= policy.max_answer_rate_rise
            rules.append(_rule("max_answer_rate_rise", f"{signal}_answers", rise, policy.max_answer_rate_rise, passed,
                               f"{signal} answers {rate:.1%} vs {champion_rates[signal]:.1%} for {label}: "
                               f"{rise:+.1%}" + ("" if passed else f", more than the {policy.max_answer_rate_rise:.1%} "
                                                                   "allowed"),
                               candidate=rate, champion=champion_rates[signal], examples=examples(flagged)))
    if policy.no_new_leaks:
        new = sorted(set(ours.kind_counts()) - set(theirs.kind_counts()))
        leaking = ours.rows_with(new)
        detail = (f"candidate answers hold {', '.join(new)} ({len(leaking)} answers), which {label}'s do not"
                  if new else f"no kind of PII or secret in the candidate's answers that {label}'s lack")
        rules.append(_rule("no_new_leaks", "pii_kinds", float(len(new)), 0.0, not new, detail, kinds=new,
                           candidate_kinds=ours.kind_counts(), champion_kinds=theirs.kind_counts(),
                           examples=examples(leaking)))
    return rules


def run(config: GateConfig) -> dict:
    """The whole step: decide, write decision.json (and report.html), record the step's MLflow run.
    A rejection raises :class:`Rejected` with the decision; a gate that cannot judge raises StepFailed."""
    decision = judge(config)
    log.info("%s", "\n".join(explain(decision)))
    if decision.get("report_path"):
        log.info("gate report: %s", decision["report_path"])
    decision["mlflow_run_url"] = tracking.record_step(
        "gate", {"policy": config.policy, **config.thresholds()},
        {"passed": float(decision["passed"]), "rules_failed": float(len(decision["failed_rules"]))},
        [decision["decision_path"], decision.get("report_path", "")])
    if not decision["passed"]:
        raise Rejected(decision["reason"], decision)
    return decision


def explain(decision: dict[str, Any]) -> list[str]:
    """The decision as lines a person reads in a task log: the verdict, then one line per rule
    (failed ones first), then how the policy compares with the deployment's standard one."""
    verdict = "PASSED" if decision["passed"] else "REJECTED: nothing is registered"
    lines = [f"gate {verdict} against {decision.get('champion_label') or 'the champion'}"]
    rules = sorted(decision.get("rules") or [], key=lambda r: bool(r["passed"]))
    lines += [f"  {'ok  ' if r['passed'] else 'FAIL'} {r['rule']} ({r['metric']}): {r['detail']}" for r in rules]
    if decision.get("overrides"):
        lines.append("  non-standard gate policy: " + ", ".join(
            f"{name}={o['value']} (standard {o['standard']})" for name, o in decision["overrides"].items()))
    return lines


def judge(config: GateConfig) -> dict:
    """The decision on ``config.metrics`` under the policy, written to decision.json; never raises
    for a rejection (``passed`` says), only when the metrics cannot be judged."""
    try:
        metrics = data.read_json(config.metrics)
    except FileNotFoundError as exc:
        raise StepFailed(f"gate: metrics file not found: {config.metrics}") from exc
    except ValueError as exc:
        raise StepFailed(f"gate: {config.metrics} is not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict) or "candidate" not in metrics:
        raise StepFailed(f"gate: {config.metrics} is not an evaluate metrics.json (no 'candidate' scores)")
    decision = decide(metrics, config)
    decision.update(standard_policy_check(config))
    out = config.out_dir.rstrip("/")
    decision["metrics_path"] = config.metrics
    decision["decision_path"] = f"{out}/decision.json"
    if config.report:
        decision["report_path"] = f"{out}/report.html"
        _write_report(decision["report_path"], metrics, decision)
    data.write_json(decision["decision_path"], decision)
    return decision


def standard_policy_check(config: GateConfig) -> dict[str, Any]:
    """How ``config``'s thresholds compare with the deployment's standard gate policy
    (:func:`settings.gate_policy`): ``policy_standard`` is true when every threshold equals the
    standard one, whatever file or setting they came from; ``overrides`` names each difference
    with the standard value beside it. The registry refuses a non-standard gate unless the
    deployment allows it (``LLMOPS_ALLOW_GATE_OVERRIDE``)."""
    standard_file = settings.gate_policy()
    standard = GateConfig(metrics=config.metrics, out_dir=config.out_dir, policy=standard_file).thresholds()
    ours = config.thresholds()
    overrides = {name: {"value": ours[name], "standard": standard[name]}
                 for name in THRESHOLDS if ours[name] != standard[name]}
    return {"policy_standard": not overrides, "standard_policy_file": standard_file, "overrides": overrides}


def _write_report(path: str, metrics: dict[str, Any], decision: dict[str, Any]) -> None:
    """The evaluation report with the decision on top; examples only where the prediction files still exist."""
    from llmops_tasks import eval_report

    files = {k: v for k, v in (metrics.get("predictions") or {}).items() if v and data.exists(v)}
    eval_report.write_from_files(path, {**metrics, "predictions": files}, decision)
    _add_answer_examples(path, decision)


def _add_answer_examples(path: str, decision: dict[str, Any]) -> None:
    """The answer rules' examples (PII masked) appended to the gate report, failed rules first."""
    from llmops_tasks.core import io
    from llmops_tasks.core.html import esc

    shown = [r for r in sorted(decision["rules"], key=lambda r: bool(r["passed"]))
             if r.get("examples") and (not r["passed"] or r["rule"] == "no_new_leaks")]
    if not shown or not data.exists(path):
        return
    parts = ["<section id='answer-rules'><h2>Answer rules: examples (PII masked)</h2>"]
    for r in shown:
        parts.append(f"<h3>{'FAIL' if not r['passed'] else 'ok'} {esc(r['rule'])} ({esc(r['metric'])})</h3>"
                     f"<p>{esc(r['detail'])}</p><table><tr><th>prompt</th><th>candidate answer</th></tr>"
                     + "".join(f"<tr><td>{esc(e['prompt'])}</td><td>{esc(e['answer'])}</td></tr>" for e in r["examples"])
                     + "</table>")
    parts.append("</section>")
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    marker = "</body>"
    page = page.replace(marker, "".join(parts) + marker, 1) if marker in page else page + "".join(parts)
    io.write_text(path, page)


def command():
    from llmops_tasks.core.command import Command

    return Command(GateConfig, run, "decide whether a candidate may be registered, from its metrics")
