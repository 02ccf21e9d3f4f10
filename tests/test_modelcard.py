"""The model card renders from the pipeline's own files; the registry attaches it (test_registry.py)."""

from __future__ import annotations

import pytest

from llmops_tasks.registry import modelcard

pytestmark = pytest.mark.unit

TRAIN = {"method": "dpo", "global_step": 200, "final_loss": 0.4213, "adapter_dir": "/runs/x/train/adapter",
         "mlflow_run_id": "abc123"}
METRICS = {
    "candidate": {"bleu": 0.52, "rougeL": 0.61}, "champion": {"bleu": 0.50, "rougeL": 0.60},
    "delta": {"bleu": 0.02, "rougeL": 0.01}, "ci": {"bleu": [-0.01, 0.05]}, "ci_level": 0.95,
    "bootstrap_samples": 1000, "champion_label": "production v3", "n": 43,
}
LINEAGE = {"llmops.base_model": "meta-llama/Llama-3.2-1B", "llmops.base_model_hash": "",
           "llmops.dataset_hash": "d" * 64, "llmops.source_run": "llm_retraining/manual__1",
           "llmops.config_hash": "cfg", "llmops.package_version": "0.1.0"}


def card(validation=None, **overrides) -> str:
    arguments = {"model_name": "helpdesk", "version": "4", "train": TRAIN, "metrics": METRICS,
                 "decision": {"passed": True, "reason": "passed all 7 rules"}, "validation": validation,
                 "lineage": LINEAGE, "hyperparameters": {"learning_rate": "5e-05", "beta": "0.1", "output_dir": "/x"}}
    return modelcard.render(**{**arguments, **overrides})


def test_the_card_names_the_adapter_and_its_base():
    text = card()
    assert text.startswith("# helpdesk v4\n")
    assert "**dpo** (LoRA adapter, merged for serving) from base model `meta-llama/Llama-3.2-1B`" in text
    assert "sha256 `unknown`" in text  # a hub id has no local folder to hash


def test_metrics_show_the_change_and_its_interval_or_say_there_is_none():
    text = card()
    assert "| bleu | 0.5200 | 0.5000 | +0.0200 | [-0.0100, +0.0500] |" in text
    assert "| rougeL | 0.6100 | 0.6000 | +0.0100 | not computed |" in text
    assert "Against the champion **production v3** on 43 held-out prompts" in text


def test_only_the_listed_hyperparameters_are_shown():
    text = card()
    assert "| learning_rate | 5e-05 |" in text and "| beta | 0.1 |" in text
    assert "output_dir" not in text
    assert "All parameters: MLflow run `abc123`." in text


def test_data_quality_reports_failed_rules_and_pii_findings():
    validation = {"valid": True, "rows": 1200, "rules": [
        {"rule": "prompt_not_blank", "success": False, "unexpected_count": 3},
        {"rule": "pii_email", "success": True}, {"rule": "pii_phone", "success": False, "unexpected_count": 1}],
        "skipped_rules": [{"rule": "id_unique", "reason": "column 'id' is missing"}]}
    text = card(validation)
    assert "1200 rows" in text
    assert "Great Expectations: 3 rules, 2 failed (valid: true)." in text
    assert "- failed `prompt_not_blank`: 3 rows" in text
    assert "PII checks: 2 rules, findings in `pii_phone`." in text
    assert "- skipped `id_unique`: column 'id' is missing" in text


def test_without_a_validation_report_the_card_says_so():
    text = card()
    assert "No validation report was given for this version." in text
    assert "unknown rows" in text


def test_intended_use_and_limitations_can_be_replaced():
    text = card(intended_use="Internal FAQ drafts only.", limitations="English only.")
    assert "## Intended use\n\nInternal FAQ drafts only." in text
    assert "## Limitations\n\nEnglish only." in text


def test_a_long_card_is_cut_to_fit_the_version_description():
    long_card = "x" * 9000
    cut = modelcard.as_description(long_card, "artifact model_card.md of run r1")
    assert len(cut) == modelcard.DESCRIPTION_LIMIT
    assert cut.endswith("(cut; the full card is artifact model_card.md of run r1)\n")
    assert modelcard.as_description("short", "x") == "short"
