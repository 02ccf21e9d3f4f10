"""The monitoring policy: which signal fires when, how bad it is, and what the window then asks for.

A YAML file (the packaged ``monitor.yaml``, or a deployment's own through the step's ``policy``
setting or ``$LLMOPS_MONITOR_POLICY``). Per signal: ``threshold`` (``null``: measured and charted,
never fires), ``severity`` (``alert`` or ``retrain``), ``min_count`` (the signal's own minimum
sample, e.g. feedback answers) and, for feedback, ``baseline``. Globally: ``min_requests`` (a
version with fewer requests in the window fires nothing), ``alpha`` (a signal with a test fires
only when its p-value is below it as well as its value past the threshold), ``cooldown_hours``
(no retrain request within this time of the last retraining or retrain request), the rules
``retrain_when`` / ``alert_when`` that combine fired signals, and the optional ``rollback``.

A rule is ``any`` (any fired signal of that severity), ``none``, or an expression over signal
names with ``and``, ``or``, ``not`` and parentheses (``prompt_chars and vocab_novelty``): a name
is true when that signal fired, whatever its severity.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

from llmops_tasks.core import settings
from llmops_tasks.core.config import ConfigError, build, field, load_yaml, require

POLICY_ENV = "LLMOPS_MONITOR_POLICY"
SEVERITIES = ("alert", "retrain")

# name -> (group, "above" | "below" (the direction that fires), what the value is)
CATALOG: dict[str, tuple[str, str, str]] = {
    "requests": ("traffic", "above", "requests in the window"),
    "error_rate": ("traffic", "above", "share of requests that failed"),
    "latency_p50_ms": ("traffic", "above", "median latency (ms)"),
    "latency_p95_ms": ("traffic", "above", "95th percentile latency (ms)"),
    "latency_p99_ms": ("traffic", "above", "99th percentile latency (ms)"),
    "tokens_in_mean": ("traffic", "above", "mean prompt tokens (served tokenizer)"),
    "tokens_out_mean": ("traffic", "above", "mean answer tokens (served tokenizer)"),
    "prompt_chars": ("input", "above", "KS statistic of prompt characters vs the training prompts"),
    "prompt_words": ("input", "above", "KS statistic of prompt words vs the training prompts"),
    "script_mix": ("input", "above", "Cramer's V of the prompts' script mix vs the training prompts"),
    "vocab_novelty": ("input", "above",
                      "rise of the share of words never seen in training, vs the held-out eval prompts' share"),
    "answer_chars": ("output", "above", "KS statistic of answer characters vs the version's eval answers"),
    "empty_answers": ("output", "above", "rise of the share of empty answers vs the eval answers"),
    "repetition": ("output", "above", "rise of the share of repetitive answers vs the eval answers"),
    "refusals": ("output", "above", "rise of the share of refusals vs the eval answers"),
    "prompt_echo": ("output", "above", "rise of the share of answers echoing the prompt vs the eval answers"),
    "pii_answers": ("output", "above", "rise of the share of answers with personal data vs the eval answers"),
    "secret_answers": ("output", "above", "answers holding a secret (key, token, private key)"),
    "thumbs_down": ("feedback", "above", "share of thumbs-down among thumbed answers"),
    "mean_rating": ("feedback", "below", "mean user rating"),
    "corrections": ("feedback", "above", "share of answers a user corrected"),
}
_RULE_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Name, ast.Load)


@dataclass
class SignalRule:
    threshold: float | None = field(None, help="value past which the signal fires (null: never fires)")
    severity: str = field("alert", help="alert (the task fails / notifies) or retrain (a retrain request)")
    min_count: int = field(0, help="smallest sample the signal itself needs (e.g. rated answers)")
    baseline: float | None = field(None, help="feedback signals: the expected share / rating the test compares with")

    def __post_init__(self) -> None:
        require(self.severity in SEVERITIES, f"severity must be one of {list(SEVERITIES)}, got {self.severity!r}")
        require(self.min_count >= 0, f"min_count must be 0 or more, got {self.min_count}")


@dataclass
class Rollback:
    enabled: bool = field(False, help="trigger model_rollback when one of `signals` fires")
    signals: list[str] = field(default_factory=lambda: ["secret_answers"], help="signals that ask for a rollback")
    to: str = field("previous-production", help="what to roll back to (the model_rollback default)")


@dataclass
class MonitorPolicy:
    min_requests: int = field(100, help="a version with fewer requests in the window fires no signal")
    alpha: float = field(0.001, help="significance level: a tested signal fires only when its p-value is below it")
    cooldown_hours: float = field(24.0, help="no retrain request within this many hours of the last retraining "
                                             "(a version registered by llm_retraining) or the last retrain request")
    retrain_when: str = field("any", help="rule over fired signals that asks for retraining")
    alert_when: str = field("any", help="rule over fired signals that raises an alert")
    refusal_patterns: list[str] | None = field(None, help="RE2 patterns of a refusal (null: the packaged ones)")
    signals: dict[str, Any] = field(default_factory=dict, help="per signal: threshold, severity, min_count, baseline")
    rollback: Rollback = field(default_factory=Rollback, help="optional rollback on a severe signal")
    source: str = field("", help="the file the policy was read from")

    def __post_init__(self) -> None:
        require(self.min_requests >= 0, f"min_requests must be 0 or more, got {self.min_requests}")
        require(0 < self.alpha <= 1, f"alpha must be in (0, 1], got {self.alpha}")
        require(self.cooldown_hours >= 0, f"cooldown_hours must be 0 or more, got {self.cooldown_hours}")
        unknown = sorted(set(self.signals) - set(CATALOG))
        require(not unknown, f"unknown signal(s) {unknown}; known signals are: {', '.join(CATALOG)}")
        self.signals = {name: rule if isinstance(rule, SignalRule) else build(SignalRule, rule or {},
                                                                              where=f"signals.{name}")
                        for name, rule in self.signals.items()}
        for setting in ("retrain_when", "alert_when"):
            check_rule(getattr(self, setting), setting)
        unknown = sorted(set(self.rollback.signals) - set(CATALOG))
        require(not unknown, f"rollback.signals: unknown signal(s) {unknown}")

    def rule(self, name: str) -> SignalRule:
        return self.signals.get(name) or SignalRule()


def check_rule(text: str, setting: str) -> None:
    words = text.strip().lower()
    if words in ("any", "none"):
        return
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{setting}: not a rule ({exc.msg}): {text!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _RULE_NODES):
            raise ConfigError(f"{setting}: only signal names, and, or, not and parentheses may appear, got {text!r}")
        if isinstance(node, ast.Name) and node.id not in CATALOG:
            raise ConfigError(f"{setting}: unknown signal {node.id!r} in {text!r}")


def rule_holds(text: str, fired: set[str], fired_of_severity: set[str]) -> bool:
    """Whether a rule holds for the signals that fired (see the module docstring)."""
    words = text.strip().lower()
    if words == "any":
        return bool(fired_of_severity)
    if words == "none":
        return False

    def value(node: ast.AST) -> bool:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.BoolOp):
            parts = [value(v) for v in node.values]
            return all(parts) if isinstance(node.op, ast.And) else any(parts)
        if isinstance(node, ast.UnaryOp):
            return not value(node.operand)
        if isinstance(node, ast.Name):
            return node.id in fired
        raise ConfigError(f"not a rule: {text!r}")

    return value(ast.parse(text, mode="eval"))


def policy_file(value: str = "") -> str:
    """The policy to read: ``value``, else ``$LLMOPS_MONITOR_POLICY``, else the packaged monitor.yaml."""
    return settings.config_file(value.strip() or os.environ.get(POLICY_ENV, "").strip() or "monitor.yaml")


def load(path: str) -> MonitorPolicy:
    values = load_yaml(path)
    known = {f.name for f in dataclasses.fields(MonitorPolicy)} - {"source"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)} for a monitoring policy; "
                          f"known settings are: {', '.join(sorted(known))}")
    try:
        return build(MonitorPolicy, {**values, "source": str(path)}, where=str(path))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None


Severity = Literal["alert", "retrain"]
