"""The model card of a registered version: what it is, what it was trained on, how it compares.

Rendered as Markdown from the files the pipeline already wrote (train result and its MLflow run's
parameters, evaluate's metrics.json, the gate decision, validate's validation.json) and attached
to the model version as its description, which the MLflow UI renders, and as artifact
``model_card.md`` of the run that logged the model. A model version description holds at most
``DESCRIPTION_LIMIT`` characters; a longer card is cut there with a pointer to the artifact.
"""

from __future__ import annotations

from typing import Any

DESCRIPTION_LIMIT = 5000  # mlflow's model_versions.description column

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


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict) -> list[str]:
    candidate, champion = metrics.get("candidate", {}), metrics.get("champion", {})
    delta, ci = metrics.get("delta", {}), metrics.get("ci", {})
    level = metrics.get("ci_level", 0.95)
    header = f"| metric | candidate | champion | change | {int(level * 100)}% interval of the change |"
    lines = [header, "| --- | --- | --- | --- | --- |"]
    for key in sorted(candidate):
        interval = ci.get(key)
        shown = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "not computed"
        change = delta.get(key)
        lines.append(f"| {key} | {_number(candidate[key])} | {_number(champion.get(key, '-'))} | "
                     f"{f'{change:+.4f}' if isinstance(change, (int, float)) else '-'} | {shown} |")
    return lines


def _data_quality(validation: dict | None) -> list[str]:
    if not validation:
        return ["No validation report was given for this version."]
    rules = validation.get("rules") or []
    failed = [r for r in rules if not r.get("success", True)]
    lines = [(f"Great Expectations: {len(rules)} rules, {len(failed)} failed "
              f"(valid: {str(validation.get('valid')).lower()}).")]
    for rule in failed:
        lines.append(f"- failed `{rule.get('rule')}`: {rule.get('unexpected_count', '')} rows")
    pii = [r for r in rules if "pii" in str(r.get("rule", "")).lower()]
    if pii:
        found = [r for r in pii if not r.get("success", True)]
        lines.append(f"PII checks: {len(pii)} rules, " + (
            "findings in " + ", ".join(f"`{r.get('rule')}`" for r in found) if found else "no findings") + ".")
    else:
        lines.append("PII checks: none ran on this data set.")
    for skipped in validation.get("skipped_rules") or []:
        lines.append(f"- skipped `{skipped.get('rule')}`: {skipped.get('reason')}")
    return lines


def render(*, model_name: str, version: str, train: dict, metrics: dict, decision: dict,
           validation: dict | None, lineage: dict[str, str], hyperparameters: dict[str, Any],
           intended_use: str = INTENDED_USE, limitations: str = LIMITATIONS) -> str:
    """The card as Markdown."""
    adapter = bool(train.get("adapter_dir"))
    rows = (validation or {}).get("rows", "unknown")
    lines = [
        f"# {model_name} v{version}",
        "",
        (f"Fine-tuned with **{train.get('method', '?')}**{' (LoRA adapter, merged for serving)' if adapter else ''} "
         f"from base model `{lineage.get('llmops.base_model', '?')}`."),
        "",
        "## Lineage",
        "",
        f"- base model: `{lineage.get('llmops.base_model', '')}`, sha256 `{lineage.get('llmops.base_model_hash', '') or 'unknown'}`",
        f"- data snapshot: sha256 `{lineage.get('llmops.dataset_hash', '') or 'unknown'}`, {rows} rows",
        f"- train / eval split: `{lineage.get('llmops.train_data_hash', '')[:16]}` / `{lineage.get('llmops.eval_data_hash', '')[:16]}`",
        (f"- resolved config: `{lineage.get('llmops.config_hash', '')}`; package "
         f"{lineage.get('llmops.package_version', '')}, code revision {lineage.get('llmops.code_revision') or 'unknown'}"),
        f"- DAG run: `{lineage.get('llmops.source_run', '')}`",
        "",
        "## Training",
        "",
        (f"Method `{train.get('method', '?')}`, {train.get('global_step', '?')} steps, "
         f"final loss {_number(train.get('final_loss', '?'))}."),
        "",
    ]
    shown = {k: hyperparameters[k] for k in HYPERPARAMETERS if k in hyperparameters}
    if shown:
        lines += ["| parameter | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in shown.items()), ""]
    if train.get("mlflow_run_id"):
        lines += [f"All parameters: MLflow run `{train['mlflow_run_id']}`.", ""]
    lines += [
        "## Evaluation",
        "",
        (f"Against the champion **{metrics.get('champion_label', '?')}** on {metrics.get('n', '?')} held-out prompts "
         f"(greedy decoding; intervals by paired bootstrap, {metrics.get('bootstrap_samples', 0)} resamples)."),
        "",
        *_metrics_table(metrics),
        "",
        f"Gate: **{'passed' if decision.get('passed') else 'failed'}**: {decision.get('reason', '')}",
        "",
        "## Data quality",
        "",
        *_data_quality(validation),
        "",
        "## Intended use",
        "",
        intended_use,
        "",
        "## Limitations",
        "",
        limitations,
        "",
    ]
    return "\n".join(lines)


def as_description(card: str, artifact_hint: str) -> str:
    """The card, cut to fit a model version description when it is too long."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n... (cut; the full card is {artifact_hint})\n"
    return card[: DESCRIPTION_LIMIT - len(note)] + note
