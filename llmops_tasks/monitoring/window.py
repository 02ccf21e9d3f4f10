"""One window of one model version: every signal measured, judged against the policy, and the
decision (alert, retrain, rollback) the window asks for."""

from __future__ import annotations

import dataclasses
from typing import Any

from llmops_tasks.monitoring import drift, profile, signals
from llmops_tasks.monitoring import policy as policies
from llmops_tasks.monitoring.reference import Reference
from llmops_tasks.monitoring.traffic import Traffic

EXAMPLES = 5  # answers shown behind each fired signal


@dataclasses.dataclass
class Signal:
    name: str
    group: str
    value: float | None
    p_value: float | None = None
    n: int = 0  # the sample the value rests on
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    threshold: float | None = None
    severity: str = ""
    fired: bool = False
    why: str = ""
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _percentile(values, q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def _examples(traffic: Traffic, rows, limit: int = EXAMPLES) -> list[dict[str, Any]]:
    shown = []
    texts = profile.prompt_texts([traffic.prompts[i] for i in list(rows)[:limit]])
    for i, prompt in zip(list(rows)[:limit], texts):
        shown.append({"trace_id": traffic.trace_ids[i], "prompt": signals.masked(prompt),
                      "answer": signals.masked(traffic.answers[i] or "")})
    return shown


def measure(traffic: Traffic, ref: Reference, policy: policies.MonitorPolicy) -> dict[str, Signal]:
    """Every signal of the catalog for this window's traffic of one version."""
    import numpy as np

    found: dict[str, Signal] = {}

    def put(name: str, value, p=None, n=0, details=None, examples=None) -> None:
        group = policies.CATALOG[name][0]
        found[name] = Signal(name, group, None if value is None else float(value), p, int(n), details or {},
                             examples=examples or [])

    n = traffic.n
    ok = ~traffic.error
    put("requests", n, n=n)
    put("error_rate", traffic.error.mean() if n else None, n=n,
        examples=_examples(traffic, np.flatnonzero(traffic.error)))
    for q in (50, 95, 99):
        put(f"latency_p{q}_ms", _percentile(traffic.latency_ms[ok], q), n=int(ok.sum()))
    put("tokens_in_mean", traffic.tokens_in.mean() if n else None, n=n)
    put("tokens_out_mean", traffic.tokens_out[ok].mean() if ok.any() else None, n=int(ok.sum()))

    # input drift against the training prompts
    prompts = profile.profile(profile.prompt_texts(traffic.prompts))
    if ref.prompts is not None and prompts.n:
        for name, ours, theirs in (("prompt_chars", prompts.chars, ref.prompts.chars),
                                   ("prompt_words", prompts.words, ref.prompts.words)):
            value, p, details = drift.distribution(ours, theirs)
            put(name, value, p, prompts.n, details)
        value, p, details = drift.mix(prompts.scripts, ref.prompts.scripts)
        put("script_mix", value, p, prompts.n, details)
        novel = profile.unseen(prompts.flat_words, ref.vocabulary)
        base = ref.heldout_novel or (0, 0)
        value, p, details = drift.rate_rise(int(novel.sum()), len(novel), *base)
        details["top_new_words"] = profile.top_new(prompts.flat_words, ref.vocabulary)
        details["top_new_bigrams"] = profile.top_new(prompts.bigrams, ref.bigrams)
        put("vocab_novelty", value, p, len(novel), details)
    else:
        for name in ("prompt_chars", "prompt_words", "script_mix", "vocab_novelty"):
            put(name, None, details={"missing": "no training prompts in the version's lineage"})

    # output drift against the version's own evaluation answers
    answered = np.flatnonzero(ok)
    answers = signals.measure([traffic.answers[i] for i in answered], [traffic.prompts[i] for i in answered],
                              policy.refusal_patterns or signals.DEFAULT_REFUSAL_PATTERNS)
    secret_rows = [int(answered[r]) for r in answers.rows_with(signals.SECRET_KINDS)]
    put("secret_answers", len(secret_rows), n=answers.n,
        details={"kinds": {k: c for k, c in answers.kind_counts().items() if k in signals.SECRET_KINDS}},
        examples=_examples(traffic, secret_rows))
    if ref.answers is not None and answers.n:
        value, p, details = drift.distribution(answers.chars, ref.answers.chars)
        put("answer_chars", value, p, answers.n, details)
        ours, theirs = answers.counts(), ref.answers.counts()
        flags = {"empty_answers": ("empty", answers.empty), "repetition": ("repetitive", answers.repetitive),
                 "refusals": ("refusal", answers.refusal), "prompt_echo": ("echo", answers.echo)}
        for name, (key, flag) in flags.items():
            value, p, details = drift.rate_rise(ours[key], answers.n, theirs[key], ref.answers.n)
            put(name, value, p, answers.n, details, _examples(traffic, answered[np.flatnonzero(flag)]))
        pii_rows = [int(answered[r]) for r in answers.rows_with(signals.PII_KINDS)]
        value, p, details = drift.rate_rise(ours["pii"], answers.n, theirs["pii"], ref.answers.n)
        details["kinds"] = {k: c for k, c in answers.kind_counts().items() if k in signals.PII_KINDS}
        put("pii_answers", value, p, answers.n, details, _examples(traffic, pii_rows))
    else:
        for name in ("answer_chars", "empty_answers", "repetition", "refusals", "prompt_echo", "pii_answers"):
            put(name, None, details={"missing": "no evaluation predictions in the version's lineage"})

    # feedback
    thumbed = ~np.isnan(traffic.thumbs)
    down = int((traffic.thumbs[thumbed] == 0).sum())
    baseline = policy.rule("thumbs_down").baseline
    value, p, details = drift.share_above(down, int(thumbed.sum()), 0.5 if baseline is None else baseline)
    put("thumbs_down", value, p, int(thumbed.sum()), details,
        _examples(traffic, np.flatnonzero(thumbed & (np.nan_to_num(traffic.thumbs, nan=1.0) == 0))))
    rated = traffic.rating[~np.isnan(traffic.rating)]
    baseline = policy.rule("mean_rating").baseline
    value, p, details = drift.mean_below(rated, 3.0 if baseline is None else baseline)
    put("mean_rating", value, p, len(rated), details)
    put("corrections", traffic.corrected.mean() if n else None, n=n, details={"count": int(traffic.corrected.sum())},
        examples=_examples(traffic, np.flatnonzero(traffic.corrected)))
    return found


def judge(found: dict[str, Signal], requests: int, policy: policies.MonitorPolicy) -> None:
    """Set each signal's threshold, severity, fired and why, in place."""
    for name, s in found.items():
        rule = policy.rule(name)
        s.threshold, s.severity = rule.threshold, rule.severity if rule.threshold is not None else ""
        direction = policies.CATALOG[name][1]
        if rule.threshold is None or s.value is None:
            s.why = "not judged (no threshold)" if rule.threshold is None else "not measured: " + str(
                s.details.get("missing", "nothing to compare"))
            continue
        past = s.value > rule.threshold if direction == "above" else s.value < rule.threshold
        significant = s.p_value is None or s.p_value < policy.alpha
        enough = requests >= policy.min_requests and s.n >= rule.min_count
        s.fired = past and significant and enough
        sense = ">" if direction == "above" else "<"
        measured = f"{s.value:.4g} {sense if past else 'not ' + sense} {rule.threshold:.4g}"
        if s.p_value is not None:
            measured += f", p={s.p_value:.2g} ({'<' if significant else '>='} alpha {policy.alpha:g})"
        if not enough:
            measured += (f"; too few requests ({requests} < min_requests {policy.min_requests})"
                         if requests < policy.min_requests else f"; too small a sample ({s.n} < min_count {rule.min_count})")
        s.why = measured


def decide(found: dict[str, Signal], policy: policies.MonitorPolicy, *, cooldown_until_ms: int | None,
           window_end_ms: int) -> dict[str, Any]:
    """What the window asks for: retrain (unless in cooldown), alert, rollback, with the reasons."""
    fired = {n for n, s in found.items() if s.fired}
    of = {sev: {n for n in fired if found[n].severity == sev} for sev in policies.SEVERITIES}
    reasons = [{"signal": n, "value": found[n].value, "threshold": found[n].threshold, "p_value": found[n].p_value,
                "severity": found[n].severity, "why": found[n].why} for n in sorted(fired)]
    wants_retrain = policies.rule_holds(policy.retrain_when, fired, of["retrain"])
    cooling = wants_retrain and cooldown_until_ms is not None and window_end_ms < cooldown_until_ms
    rollback = policy.rollback.enabled and bool(fired & set(policy.rollback.signals))
    return {
        "fired": sorted(fired),
        "reasons": reasons,
        "retrain": wants_retrain and not cooling,
        "retrain_held_by_cooldown": cooling,
        "cooldown_until_ms": cooldown_until_ms,
        "alert": policies.rule_holds(policy.alert_when, fired, of["alert"]),
        "rollback": rollback,
        "rollback_signals": sorted(fired & set(policy.rollback.signals)) if rollback else [],
    }
