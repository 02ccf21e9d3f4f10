"""The model card of a registered version: what it is, what it was trained on, how it compares.

Rendered as Markdown from the files the pipeline already wrote (train result and its MLflow run's
parameters, evaluate's metrics.json, the gate decision, validate's validation.json) and attached
to the model version as its description, which the MLflow UI renders, and as artifact
``model_card.md`` of the run that logged the model. A model version description holds at most
``DESCRIPTION_LIMIT`` characters; a longer card is cut there with a pointer to the artifact.

Every value the card embeds comes from outside this module (paths, names, reasons, comments,
rule names): it goes through :func:`code_span` or :func:`md_text`, so no value can end a code span,
split a table row, start a block, or make a link, an image or HTML in a CommonMark / GFM renderer.

The ``## Governance`` section (:func:`governance_section`) says how the version was approved and
under which gate policy, with each governance exception in bold; :func:`with_governance` puts the
current one into an existing description, which the registry calls after recording a decision.
"""

from __future__ import annotations

import json
import re
from typing import Any

DESCRIPTION_LIMIT = 5000  # mlflow's model_versions.description column
GOVERNANCE_HEADING = "## Governance"
# Per value and in number of exceptions shown: the governance section always fits in a description.
GOVERNANCE_VALUE_LIMIT = 500
GOVERNANCE_EXCEPTIONS_SHOWN = 4
CUT_NOTE = "\n\n... (cut; the full card is {hint})\n"

INTENDED_USE = (
    "Drafting answers to help-desk style prompts like those in the training data, reviewed by a "
    "person before they reach a customer."
)
LIMITATIONS = (
    "Evaluated only with BLEU / ROUGE against reference answers on the held-out split of the same "
    "data set; these measure overlap, not correctness or safety. Not evaluated for other languages, "
    "domains, or adversarial prompts. May repeat errors, personal data or biases of its training data."
)

# Training parameters shown in the card; the train run keeps all of them.
HYPERPARAMETERS = (
    "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "beta", "loss_type", "use_peft", "lora_r", "lora_alpha",
    "lora_dropout", "seed",
)

# A line break of any kind (CommonMark's \n and \r, and what other renderers also break on) with
# the spaces around it: a value stays on its line, so it cannot start a block or end a table row.
_LINE_BREAKS = re.compile(r"[ \t]*[\r\n\v\f\x85\u2028\u2029]+[ \t]*")
# Characters that start inline Markdown (emphasis, code, links, images, strikethrough, table
# cells) or a backslash escape; escaped with a backslash wherever they are.
_INLINE_SPECIALS = re.compile(r"([\\`*_\[\]|~!])")
# What makes a block when it starts a line: an ATX heading or list marker (followed by a space or
# the end), a setext underline or thematic break (a line of only - or =; * and _ are escaped anyway).
_BLOCK_START = re.compile(r"^(?:(#{1,6}|[-+])(?=\s|$)|(\d{1,9})([.)])(?=\s|$)|([-=])(?=[-= \t]*$))")
# Bare URLs that GFM-style renderers turn into links (scheme://, www.).
_AUTOLINK = re.compile(r"(?i)(://)|\b(www)\.")


def _one_line(value: Any) -> str:
    return _LINE_BREAKS.sub(" ", str(value))


def _escape_block_start(match: re.Match) -> str:
    marker, digits, delimiter, underline = match.groups()
    return f"{digits}\\{delimiter}" if digits else f"\\{marker or underline}"


def md_text(value: Any) -> str:
    """``value`` as plain text in Markdown, also inside a table cell: line breaks become one space,
    HTML's ``< > &`` become entities (no tag, comment, autolink or character reference survives),
    Markdown's inline specials and a block marker at the start are backslash-escaped, and bare URLs
    are broken so no renderer links them. Renders as the same text in CommonMark, GFM and showdown."""
    text = _one_line(value).strip()
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _INLINE_SPECIALS.sub(r"\\\1", text)
    text = _BLOCK_START.sub(_escape_block_start, text)
    return _AUTOLINK.sub(lambda m: r"\://" if m.group(1) else f"{m.group(2)}\\.", text)


def md_paragraphs(value: Any) -> str:
    """Configured prose (intended use, limitations): each blank-line separated paragraph as :func:`md_text`."""
    paragraphs = re.split(r"\n[ \t]*\n", str(value).replace("\r\n", "\n").strip())
    return "\n\n".join(md_text(p) for p in paragraphs if p.strip())


def code_span(value: Any, *, in_table: bool = False) -> str:
    r"""``value`` verbatim as inline code: the fence is one backtick longer than the longest run of
    backticks inside (CommonMark: a code span ends at a run of exactly its fence's length), with a
    space inside each fence when the value starts or ends with a backtick or a space (one such
    space is stripped again). Line breaks become spaces. In a table cell ``|`` is written ``\|``
    (GFM splits cells before it parses code, and drops that backslash inside the cell)."""
    text = _one_line(value)
    if in_table:
        text = text.replace("|", r"\|")
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    if text[0] in "` " or text[-1] in "` ":
        text = f" {text} "
    return f"{fence}{text}{fence}"


def _cell(value: Any) -> str:
    return md_text(value) or "-"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else md_text(value)


def cost_text(usage: dict) -> str:
    """``16 GPUs, 2.0 h: 32.00 GPU-hours, cost 80.00 USD (2.50 per GPU-hour)``, from a train result's
    (or a version's) ``gpus``, ``train_wall_seconds``, ``gpu_hours`` and, when priced, ``cost``."""
    if usage.get("gpu_hours") in (None, ""):
        return ""
    parts = []
    if usage.get("gpus") not in (None, ""):
        hours = float(usage.get("train_wall_seconds") or 0) / 3600
        parts.append(f"{usage['gpus']} GPUs, {hours:.2f} h: ")
    parts.append(f"{float(usage['gpu_hours']):.2f} GPU-hours")
    if usage.get("cost") not in (None, ""):
        price = usage.get("gpu_hour_price")
        parts.append(f", cost {float(usage['cost']):.2f} {usage.get('cost_currency') or 'USD'}"
                     + (f" ({float(price):.2f} per GPU-hour)" if price not in (None, "") else ""))
    return "".join(parts)


def _cost_lines(train: dict) -> list[str]:
    text = cost_text(train)
    return [f"Compute: {md_text(text)}.", ""] if text else []


def _tokenization_line(metrics: dict) -> str:
    """How BLEU/ROUGE split the text (chosen from the references' script or by the recipe), and
    each metric evaluate could not measure, by name."""
    summary = (metrics.get("tokenization") or {}).get("summary") or "not recorded (sacrebleu 13a, rouge_score default)"
    unmeasurable = metrics.get("unmeasurable")
    missing = "".join(f" **{md_text(name)} not measured**: {md_text(why)}." for name, why in unmeasurable.items()) \
        if isinstance(unmeasurable, dict) else ""
    return f"Tokenization: {md_text(summary)}.{missing}"


def _metrics_table(metrics: dict) -> list[str]:
    candidate, champion = metrics.get("candidate", {}), metrics.get("champion", {})
    delta, ci = metrics.get("delta", {}), metrics.get("ci", {})
    level = metrics.get("ci_level", 0.95)
    level = level if isinstance(level, (int, float)) else 0.95
    header = f"| metric | candidate | champion | change | {int(level * 100)}% interval of the change |"
    lines = [header, "| --- | --- | --- | --- | --- |"]
    for key in sorted(candidate):
        interval = ci.get(key)
        try:
            shown = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "not computed"
        except (TypeError, ValueError, IndexError, KeyError):
            shown = md_text(interval)
        change = delta.get(key)
        lines.append(f"| {_cell(key)} | {_number(candidate[key])} | {_number(champion.get(key, '-'))} | "
                     f"{f'{change:+.4f}' if isinstance(change, (int, float)) else '-'} | {shown} |")
    return lines


def _data_quality(validation: dict | None) -> list[str]:
    if not validation:
        return ["No validation report was given for this version."]
    rules = validation.get("rules") or []
    failed = [r for r in rules if not r.get("success", True)]
    lines = [(f"Great Expectations: {len(rules)} rules, {len(failed)} failed "
              f"(valid: {md_text(str(validation.get('valid')).lower())}).")]
    for rule in failed:
        lines.append(f"- failed {code_span(rule.get('rule'))}: {md_text(rule.get('unexpected_count', ''))} rows")
    pii = [r for r in rules if "pii" in str(r.get("rule", "")).lower()]
    if pii:
        found = [r for r in pii if not r.get("success", True)]
        lines.append(f"PII checks: {len(pii)} rules, " + (
            "findings in " + ", ".join(code_span(r.get("rule")) for r in found) if found else "no findings") + ".")
    else:
        lines.append("PII checks: none ran on this data set.")
    for skipped in validation.get("skipped_rules") or []:
        lines.append(f"- skipped {code_span(skipped.get('rule'))}: {md_text(skipped.get('reason'))}")
    return lines


def _clip(value: Any, limit: int) -> str:
    text = _one_line(value if value is not None else "").strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _short_text(value: Any, limit: int) -> str:
    """:func:`md_text` of ``value`` in at most ``limit`` characters (escaping makes text longer):
    the raw text is cut, never an escape, and ends with "…" when it was."""
    raw = _one_line(value if value is not None else "").strip()
    if len(escaped := md_text(raw)) <= limit:
        return escaped
    low, high = 0, len(raw)  # the longest raw prefix whose escaped form, with "…", fits
    while low < high:
        middle = (low + high + 1) // 2
        if len(md_text(raw[:middle].rstrip() + "…")) <= limit:
            low = middle
        else:
            high = middle - 1
    return md_text(raw[:low].rstrip() + "…")


def overrides_text(overrides: Any) -> str:
    """Gate settings overridden at trigger time as ``name=value`` (with the standard value where
    the gate recorded it: ``{"name": {"value": v, "standard": s}}``); "" when none."""
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides or "{}")
        except ValueError:
            return overrides
    if not isinstance(overrides, dict):
        return "" if not overrides else str(overrides)
    parts = []
    for name, change in overrides.items():
        if isinstance(change, dict) and "value" in change:
            standard = f" (standard {change['standard']})" if "standard" in change else ""
            parts.append(f"{name}={change['value']}{standard}")
        else:
            parts.append(f"{name}={change}")
    return ", ".join(parts)


def exception_items(text: Any) -> list[str]:
    """``llmops.exceptions`` (sentences joined by "; ") as its sentences; a "; " inside brackets stays."""
    items, depth, current = [], 0, []
    for char in str(text or ""):
        depth += (char in "([") - (char in ")]")
        if char == ";" and depth <= 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def governance_section(tags: dict) -> list[str]:
    """The card's ``## Governance`` section from a version's tags: the approval decision (who,
    when, comment), the gate policy and whether it is the deployment's standard one, the settings
    overridden at trigger time, and each governance exception (``llmops.exceptions``) in bold.
    Every value is escaped and clipped, so the section always fits in a description."""
    tags = tags or {}
    decision = str(tags.get("llmops.approval") or "").strip()
    lines = [GOVERNANCE_HEADING, ""]
    if decision:
        who = tags.get("llmops.approval_by")
        when = tags.get("llmops.approval_at")
        lines.append(f"- approval: **{_short_text(decision, 40)}**"
                     + (f" by {_short_text(who, 200)}" if who else "")
                     + (f" at {_short_text(when, 60)}" if when else ""))
        comment = tags.get("llmops.approval_comment")
        lines.append(f"- comment: {_short_text(comment, GOVERNANCE_VALUE_LIMIT) if comment else 'none'}")
    else:
        lines.append("- approval: pending (no decision recorded yet)")
    policy = tags.get("llmops.gate_policy")
    standard = str(tags.get("llmops.gate_policy_standard", "")).strip().lower()
    standing = {"true": "the deployment's standard policy",
                "false": "**not the deployment's standard policy**"}.get(standard, "not recorded whether standard")
    lines.append(f"- gate policy: {code_span(_clip(policy, 200)) if policy else 'not recorded'} ({standing})")
    overrides = overrides_text(tags.get("llmops.gate_overrides", ""))
    lines.append("- gate settings overridden at trigger time: "
                 + (_short_text(overrides, GOVERNANCE_VALUE_LIMIT) if overrides else "none"))
    found = exception_items(tags.get("llmops.exceptions"))
    shown = found[:GOVERNANCE_EXCEPTIONS_SHOWN]
    lines += [f"- **exception: {_short_text(item, GOVERNANCE_VALUE_LIMIT)}**" for item in shown]
    if len(found) > len(shown):
        lines.append(f"- **exception: {len(found) - len(shown)} more (tag llmops.exceptions)**")
    if not found:
        lines.append("- exceptions: none")
    return lines


def _snapshot_lines(lineage: dict[str, str]) -> list[str]:
    """Where the data came from: the curated snapshot (and how much of it is users' feedback), and
    what started the run."""
    lines = []
    if lineage.get("llmops.data_snapshot"):
        lines.append(
            f"- curated preference snapshot {code_span(lineage.get('llmops.data_snapshot_version') or lineage['llmops.data_snapshot'])}"
            f" (content hash {code_span(lineage.get('llmops.data_snapshot_hash', '') or 'unknown')}): "
            f"{md_text(lineage.get('llmops.data_snapshot_rows', '?'))} rows, "
            f"{md_text(lineage.get('llmops.data_snapshot_feedback_rows', '?'))} of them from production feedback")
    if lineage.get("llmops.trigger"):
        lines.append(f"- started by: {md_text(lineage['llmops.trigger'])}")
    return lines


def render(*, model_name: str, version: str, train: dict, metrics: dict, decision: dict,
           validation: dict | None, lineage: dict[str, str], hyperparameters: dict[str, Any],
           intended_use: str = INTENDED_USE, limitations: str = LIMITATIONS) -> str:
    """The card as Markdown; its governance section from the lineage tags (gate policy and
    overrides are known at register time, the approval follows through :func:`with_governance`)."""
    adapter = bool(train.get("adapter_dir"))
    rows = (validation or {}).get("rows", "unknown")
    lines = [
        f"# {md_text(model_name)} v{md_text(version)}",
        "",
        (f"Fine-tuned with **{md_text(train.get('method', '?'))}**"
         f"{' (LoRA adapter, merged for serving)' if adapter else ''} "
         f"from base model {code_span(lineage.get('llmops.base_model', '?'))}."),
        "",
        *governance_section(lineage),
        "",
        "## Lineage",
        "",
        (f"- base model: {code_span(lineage.get('llmops.base_model', ''))}, "
         f"sha256 {code_span(lineage.get('llmops.base_model_hash', '') or 'unknown')}"),
        (f"- data snapshot: sha256 {code_span(lineage.get('llmops.dataset_hash', '') or 'unknown')}, "
         f"{md_text(rows)} rows"),
        (f"- train / eval split: {code_span(lineage.get('llmops.train_data_hash', '')[:16] or 'unknown')} / "
         f"{code_span(lineage.get('llmops.eval_data_hash', '')[:16] or 'unknown')}"),
        (f"- resolved config: {code_span(lineage.get('llmops.config_hash', ''))}; package "
         f"{md_text(lineage.get('llmops.package_version', ''))}, "
         f"code revision {md_text(lineage.get('llmops.code_revision') or 'unknown')}"),
        *_snapshot_lines(lineage),
        f"- DAG run: {code_span(lineage.get('llmops.source_run', ''))}",
        "",
        "## Training",
        "",
        (f"Method {code_span(train.get('method', '?'))}, {md_text(train.get('global_step', '?'))} steps, "
         f"final loss {_number(train.get('final_loss', '?'))}."),
        "",
        *_cost_lines(train),
    ]
    shown = {k: hyperparameters[k] for k in HYPERPARAMETERS if k in hyperparameters}
    if shown:
        lines += ["| parameter | value |", "| --- | --- |", *(f"| {k} | {_cell(v)} |" for k, v in shown.items()), ""]
    if train.get("mlflow_run_id"):
        lines += [f"All parameters: MLflow run {code_span(train['mlflow_run_id'])}.", ""]
    lines += [
        "## Evaluation",
        "",
        (f"Against the champion **{md_text(metrics.get('champion_label', '?'))}** on "
         f"{md_text(metrics.get('n', '?'))} held-out prompts (greedy decoding; intervals by paired bootstrap, "
         f"{md_text(metrics.get('bootstrap_samples', 0))} resamples)."),
        "",
        _tokenization_line(metrics),
        "",
        *_metrics_table(metrics),
        "",
        f"Gate: **{'passed' if decision.get('passed') else 'failed'}**: {md_text(decision.get('reason', ''))}",
        "",
        "## Data quality",
        "",
        *_data_quality(validation),
        "",
        "## Intended use",
        "",
        md_paragraphs(intended_use),
        "",
        "## Limitations",
        "",
        md_paragraphs(limitations),
        "",
    ]
    return "\n".join(lines)


def _split_governance(text: str) -> tuple[str, str, str]:
    """(before, governance section, after) of a description; the section runs from its heading to
    the next level-1/2 heading. Without one, it goes before the first ``## `` heading (after the
    title and summary), else at the end. No card line starts with ``#`` except a heading: values
    are escaped."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.rstrip() == GOVERNANCE_HEADING), None)
    if start is None:
        at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        return "\n".join(lines[:at]).strip(), "", "\n".join(lines[at:]).strip()
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"#{1,2} ", lines[i])), len(lines))
    return ("\n".join(lines[:start]).strip(), "\n".join(lines[start:end]).strip(),
            "\n".join(lines[end:]).strip())


_CUT_NOTE = re.compile(r"\n*\.\.\. \(cut; the full card is (?P<hint>[^\n]*)\)\n*\Z")


def _joined(*pieces: str) -> str:
    return "\n\n".join(p for p in pieces if p)


def _fit(before: str, section: str, after: str, hint: str, *, was_cut: bool = False) -> str:
    """``before`` + ``section`` + ``after`` within DESCRIPTION_LIMIT: the section is kept whole, the
    rest of the card is cut (after it first, then before it) and the pointer to the full card added
    (also when the text was cut before: what is missing stays missing)."""
    if not was_cut and len(_joined(before, section, after)) + 1 <= DESCRIPTION_LIMIT:
        return _joined(before, section, after) + "\n"
    note = CUT_NOTE.format(hint=hint)
    budget = DESCRIPTION_LIMIT - len(note)
    head, tail = before, after
    while (over := len(_joined(head, section, tail)) - budget) > 0 and (head or tail):
        if tail:
            tail = tail[: max(len(tail) - over, 0)].rstrip()
        else:
            head = head[: max(len(head) - over, 0)].rstrip()
    return _joined(head, section, tail) + note


def with_governance(description: str, tags: dict) -> str:
    """``description`` (a model card) with its ``## Governance`` section replaced by the one these
    tags give, or that section inserted; idempotent, and within DESCRIPTION_LIMIT: the rest of the
    card is cut, never the section, with the pointer to the full card (the one the description
    had, else artifact ``model_card.md`` of run ``llmops.model_card_run``)."""
    text = (description or "").replace("\r\n", "\n")
    cut = _CUT_NOTE.search(text)
    if cut:
        hint, text = cut.group("hint"), text[: cut.start()]
    else:
        run = (tags or {}).get("llmops.model_card_run")
        hint = f"artifact model_card.md of run {run}" if run else "artifact model_card.md of the register run"
    before, _, after = _split_governance(text)
    section = "\n".join(governance_section(tags)).strip()
    return _fit(before, section, after, hint, was_cut=bool(cut))


def as_description(card: str, artifact_hint: str) -> str:
    """The card, cut to fit a model version description when it is too long; its governance
    section is never cut."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    before, section, after = _split_governance(card)
    if not section:
        note = CUT_NOTE.format(hint=artifact_hint)
        return card[: DESCRIPTION_LIMIT - len(note)] + note
    return _fit(before, section, after, artifact_hint, was_cut=True)
