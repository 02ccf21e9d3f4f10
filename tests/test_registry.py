"""The model registry on a real MLflow store (SQLite in a temp folder) with a real tiny causal LM.

One module fixture walks a registry through a model's life (register, re-register, promote,
a stale promotion, a second promotion, rollback) and records what each step returned and what the
registry looked like afterwards; each test checks one of those records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmops_tasks import bootstrap, cli, data, registry, samples, tracking
from llmops_tasks.errors import StepFailed
from llmops_tasks.registry import PromoteConfig, RegisterConfig, RollbackConfig, StatusConfig

pytestmark = pytest.mark.integration

MODEL = "helpdesk-assistant"
DAG_ID = "llm_retraining"
RUN_A = "scheduled__2026-11-01T00:00:00+00:00"
RUN_B = "scheduled__2026-11-08T00:00:00+00:00"
PROMPT = "How do I reset my password for the VPN?"


@dataclass
class Store:
    root: Path
    model_dir: Path

    def client(self):
        return tracking.client()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh MLflow store and home for this module, and one tiny model to register."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        env.setenv("LLMOPS_HOME", str(root))
        env.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(root / "mlartifacts"))
        env.setenv("LLMOPS_MODEL_NAME", MODEL)
        env.setenv("LLMOPS_ACTOR", "ci-bot")
        env.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("MLFLOW_REGISTRY_URI", "LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
            env.delenv(name, raising=False)
        # The train step saves its model to {output_dir}/model; register reads that folder.
        model_dir = bootstrap.build_tiny_model(root / "train" / "model", samples.corpus_text())
        yield Store(root, model_dir)


def candidate_files(folder: Path, model_dir: Path, *, passed: bool = True, fingerprint: str = "cfg-a-sft",
                    bleu: float = 0.4123456789, rougeL: float = 0.55, champion_version: str = "",
                    model_name: str = "") -> RegisterConfig:
    """Write the train / evaluate / gate outputs a registration reads, as the steps would."""
    folder.mkdir(parents=True, exist_ok=True)
    data.write_json(str(folder / "result.json"), {
        "model_dir": str(model_dir), "fingerprint": fingerprint, "method": "sft", "base_model": "tiny-base",
        "config_hash": f"hash-of-{fingerprint}", "train_data_hash": "train-data-sha", "mlflow_run_id": "",
    })
    data.write_json(str(folder / "metrics.json"), {
        "candidate": {"bleu": bleu, "rougeL": rougeL},
        "champion": {"bleu": 0.1, "rougeL": 0.2},
        "champion_label": f"production v{champion_version}" if champion_version else "base",
        "champion_version": champion_version,
        "eval_hash": "x",
    })
    data.write_json(str(folder / "decision.json"), {
        "passed": passed, "reason": "passed all rules" if passed else "min_bleu: 0.01 < 0.05",
    })
    return RegisterConfig(
        train_result=str(folder / "result.json"), metrics=str(folder / "metrics.json"),
        decision=str(folder / "decision.json"), dataset_hash=f"dataset-sha-{fingerprint}", model_name=model_name,
    )


def attempt(action, *args) -> Any:
    """Run a registry action; a refusal (StepFailed) is recorded as the outcome instead of raised."""
    try:
        return action(*args)
    except StepFailed as exc:
        return exc


def versions_of(name: str) -> list[str]:
    return sorted((str(v.version) for v in tracking.client().search_model_versions(f"name = '{name}'")), key=int)


def tags_of(version: str) -> dict[str, str]:
    return dict(tracking.client().get_model_version(MODEL, version).tags)


@pytest.fixture(scope="module")
def lifecycle(store) -> dict[str, Any]:
    """Walk the registry through a model's life; record each step's outcome and the state after it."""
    seen: dict[str, Any] = {}

    def aliases() -> dict[str, str]:
        return registry.alias_versions(MODEL)

    fallback = str(store.root / "base-model")

    seen["champion_before"] = registry.resolve_champion(fallback)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_DAG_ID", DAG_ID)
        env.setenv("LLMOPS_RUN_ID", RUN_A)
        first = candidate_files(store.root / "run-a", store.model_dir)
        seen["register_a"] = registry.register(first)
        seen["tags_a"] = tags_of(seen["register_a"]["version"])
        seen["register_a_again"] = registry.register(first)
        seen["versions_after_reregister"] = versions_of(MODEL)

        seen["promote_a"] = registry.promote(PromoteConfig(expected_production="none", approved_by="alice",
                                                          comment="first champion"))
        seen["aliases_after_promote_a"] = aliases()
        seen["tags_a_promoted"] = tags_of("1")
        seen["promote_a_again"] = registry.promote(PromoteConfig(expected_production="none"))
        seen["aliases_after_promote_a_again"] = aliases()

    seen["champion_after_promotion"] = registry.resolve_champion(fallback)

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_DAG_ID", DAG_ID)
        env.setenv("LLMOPS_RUN_ID", RUN_B)
        second = candidate_files(store.root / "run-b", store.model_dir, fingerprint="cfg-b-sft", bleu=0.45)
        seen["register_b"] = registry.register(second)
        seen["aliases_after_register_b"] = aliases()
        # Run B's gate compared against the base model, but v1 became production meanwhile.
        seen["promote_b_stale"] = attempt(registry.promote, PromoteConfig(expected_production="none"))
        seen["aliases_after_stale"] = aliases()

        registry.record_approval("2", approved=True, by="bob", comment="reviewed the samples")
        seen["tags_b_approved"] = tags_of("2")
        seen["promote_b"] = registry.promote(PromoteConfig(version="2", expected_production="1", approved_by="bob",
                                                          comment="better rougeL on the frozen eval set"))
        seen["aliases_after_promote_b"] = aliases()
        seen["tags_a_replaced"] = tags_of("1")
        seen["tags_b_promoted"] = tags_of("2")

    seen["rollback"] = registry.rollback(RollbackConfig(reason="users report wrong answers", actor="carol"))
    seen["aliases_after_rollback"] = aliases()
    seen["tags_a_restored"] = tags_of("1")
    seen["tags_b_rolled_back"] = tags_of("2")
    seen["rollback_again"] = registry.rollback(RollbackConfig(to_version="1"))
    seen["status"] = registry.status(StatusConfig())
    return seen


# --------------------------------------------------------------------------- register


def test_a_candidate_that_failed_its_gate_is_never_registered(store):
    name = "refused-candidate"
    config = candidate_files(store.root / "refused", store.model_dir, passed=False, model_name=name)
    with pytest.raises(StepFailed, match=r"refusing to register.*min_bleu: 0.01 < 0.05"):
        registry.register(config)
    assert tracking.client().search_registered_models(filter_string=f"name = '{name}'") == []
    assert versions_of(name) == []
    assert registry.alias_versions(name) == {}


def test_a_refused_registration_through_the_cli_exits_1(store, capsys):
    name = "refused-by-cli"
    config = candidate_files(store.root / "refused-cli", store.model_dir, passed=False, model_name=name)
    status = cli.main(["registry", "register", "--train-result", config.train_result, "--metrics", config.metrics,
                       "--decision", config.decision, "--model-name", name])
    assert status == 1
    assert json.loads(capsys.readouterr().out) == {"registered": False, "reason": "min_bleu: 0.01 < 0.05"}
    assert versions_of(name) == []


def test_register_creates_version_1_aliased_staging(lifecycle):
    assert lifecycle["register_a"] == {"model_name": MODEL, "version": "1", "aliases": ["staging"]}


def test_register_records_lineage_tags(lifecycle):
    tags = lifecycle["tags_a"]
    assert tags["llmops.dataset_hash"] == "dataset-sha-cfg-a-sft"
    assert tags["llmops.config_hash"] == "hash-of-cfg-a-sft"
    assert tags["llmops.train_data_hash"] == "train-data-sha"
    assert tags["llmops.eval_data_hash"] == "x"
    assert tags["llmops.gate_passed"] == "true"
    assert tags["llmops.gate_reason"] == "passed all rules"
    assert tags["llmops.source_run"] == f"{DAG_ID}/{RUN_A}"
    assert tags["llmops.champion"] == "base"
    assert float(tags["metric.bleu"]) == pytest.approx(0.4123456789, abs=1e-6)
    assert float(tags["metric.rougeL"]) == pytest.approx(0.55)


def test_registering_the_same_dag_run_again_returns_the_same_version(lifecycle):
    assert lifecycle["register_a_again"]["version"] == "1"
    assert lifecycle["versions_after_reregister"] == ["1"]


def test_registering_an_adhoc_candidate_twice_is_idempotent(store):
    name = "adhoc-candidate"
    config = candidate_files(store.root / "adhoc", store.model_dir, fingerprint="cfg-adhoc", model_name=name)
    first = registry.register(config)
    second = registry.register(config)
    assert first["version"] == second["version"] == "1"
    assert versions_of(name) == ["1"]
    assert tracking.client().get_model_version(name, "1").tags["llmops.source_run"] == "adhoc/cfg-adhoc"


def test_a_new_dag_run_registers_a_new_version_and_moves_staging(lifecycle):
    assert lifecycle["register_b"]["version"] == "2"
    assert lifecycle["aliases_after_register_b"] == {"staging": "2", "production": "1"}


# --------------------------------------------------------------------------- promote


def test_first_promotion_with_no_production_moves_production(lifecycle):
    assert lifecycle["promote_a"]["changed"] is True
    assert lifecycle["promote_a"]["replaced"] == ""
    assert lifecycle["aliases_after_promote_a"] == {"staging": "1", "production": "1"}


def test_promotion_records_audit_tags(lifecycle):
    tags = lifecycle["tags_a_promoted"]
    assert tags["llmops.promoted_by"] == "alice"
    assert tags["llmops.promotion_comment"] == "first champion"
    assert tags["llmops.promoted_at"].startswith("20") and tags["llmops.promoted_at"].endswith("+00:00")
    assert tags["llmops.promoted_in_run"] == f"{DAG_ID}/{RUN_A}"
    assert tags["llmops.replaced_version"] == "none"


def test_promoting_the_production_version_again_changes_nothing(lifecycle):
    assert lifecycle["promote_a_again"]["changed"] is False
    assert lifecycle["aliases_after_promote_a_again"] == lifecycle["aliases_after_promote_a"]


def test_a_stale_promotion_is_refused_and_production_is_unchanged(lifecycle):
    refusal = lifecycle["promote_b_stale"]
    assert isinstance(refusal, StepFailed)
    assert "production is v1" in str(refusal) and "stale candidate" in str(refusal)
    assert refusal.result == {"model_name": MODEL, "version": "2", "changed": False, "production": "1"}
    assert lifecycle["aliases_after_stale"] == lifecycle["aliases_after_register_b"]


def test_record_approval_tags_the_version(lifecycle):
    tags = lifecycle["tags_b_approved"]
    assert tags["llmops.approval"] == "approved"
    assert tags["llmops.approval_by"] == "bob"
    assert tags["llmops.approval_comment"] == "reviewed the samples"
    assert tags["llmops.approval_run"] == f"{DAG_ID}/{RUN_B}"
    assert tags["llmops.approval_at"]


def test_promotion_against_the_current_production_keeps_it_as_previous(lifecycle):
    assert lifecycle["promote_b"]["changed"] is True and lifecycle["promote_b"]["replaced"] == "1"
    assert lifecycle["aliases_after_promote_b"] == {"staging": "2", "production": "2", "previous-production": "1"}


def test_second_promotion_audits_both_versions(lifecycle):
    promoted, replaced = lifecycle["tags_b_promoted"], lifecycle["tags_a_replaced"]
    assert (promoted["llmops.promoted_by"], promoted["llmops.promotion_comment"]) == (
        "bob", "better rougeL on the frozen eval set")
    assert promoted["llmops.promoted_at"]
    assert promoted["llmops.replaced_version"] == "1"
    assert replaced["llmops.replaced_by_version"] == "2" and replaced["llmops.replaced_at"]


def test_promote_refuses_a_version_without_a_passed_gate(store, lifecycle):
    # A version registered outside this package carries no gate decision.
    name = "ungated-model"
    client = tracking.client()
    source = client.get_model_version(MODEL, "1").source
    client.create_registered_model(name)
    version = client.create_model_version(name, source).version
    with pytest.raises(StepFailed, match="no passed gate decision"):
        registry.promote(PromoteConfig(version=str(version), model_name=name))
    assert registry.alias_versions(name) == {}


# --------------------------------------------------------------------------- rollback and status


def test_rollback_moves_production_back(lifecycle):
    assert lifecycle["rollback"] == {"model_name": MODEL, "version": "1", "changed": True, "replaced": "2"}
    assert lifecycle["aliases_after_rollback"] == {"staging": "2", "production": "1", "previous-production": "2"}


def test_rollback_tags_both_versions(lifecycle):
    restored, rolled_back = lifecycle["tags_a_restored"], lifecycle["tags_b_rolled_back"]
    assert restored["llmops.restored_by"] == "carol"
    assert restored["llmops.restore_reason"] == "users report wrong answers"
    assert restored["llmops.replaced_version"] == "2"
    assert restored["llmops.restored_at"]
    assert rolled_back["llmops.rolled_back_by"] == "carol"
    assert rolled_back["llmops.rollback_reason"] == "users report wrong answers"
    assert rolled_back["llmops.rolled_back_at"]


def test_rolling_back_to_the_production_version_changes_nothing(lifecycle):
    assert lifecycle["rollback_again"] == {"model_name": MODEL, "version": "1", "changed": False}


def test_status_reports_each_alias_and_version(lifecycle):
    status = lifecycle["status"]
    assert status["model_name"] == MODEL
    assert status["aliases"] == {"staging": "2", "production": "1", "previous-production": "2"}
    assert status["versions"]["1"]["aliases"] == ["production"]
    assert status["versions"]["2"]["aliases"] == ["previous-production", "staging"]
    assert status["versions"]["2"]["dag_run"] == f"{DAG_ID}/{RUN_B}"
    assert status["versions"]["2"]["metrics"] == {"bleu": "0.45", "rougeL": "0.55"}


def test_status_of_an_unknown_model_is_empty(store):
    status = registry.status(StatusConfig(model_name="never-registered"))
    assert (status["aliases"], status["versions"]) == ({}, {})


def test_cli_status_json_prints_the_aliases(lifecycle, capsys):
    assert cli.main(["registry", "status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_name"] == MODEL
    assert printed["aliases"] == {"staging": "2", "production": "1", "previous-production": "2"}


def test_cli_status_without_json_renders_one_line_per_alias(lifecycle, capsys):
    assert cli.main(["registry", "status", "--json", "false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(MODEL)
    assert [line.split()[:2] for line in lines[1:]] == [["staging", "v2"], ["production", "v1"],
                                                        ["previous-production", "v2"]]


# --------------------------------------------------------------------------- the champion and serving


def test_resolve_champion_falls_back_to_the_base_without_production(store, lifecycle):
    fallback = str(store.root / "base-model")
    assert lifecycle["champion_before"] == {"model_dir": fallback, "label": "base", "version": ""}


def test_resolve_champion_downloads_the_production_model(lifecycle):
    from transformers import AutoModelForCausalLM

    champion = lifecycle["champion_after_promotion"]
    assert (champion["label"], champion["version"]) == ("production v1", "1")
    model_dir = Path(champion["model_dir"])
    assert (model_dir / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.hidden_size == bootstrap.TINY_ARCHITECTURE["hidden_size"]


def test_resolve_champion_finds_a_model_registered_from_any_folder_name(store):
    name = "champion-from-elsewhere"
    model_dir = store.root / "exported-checkpoint"
    if not model_dir.exists():
        import shutil

        shutil.copytree(store.model_dir, model_dir)
    config = candidate_files(store.root / "elsewhere", model_dir, fingerprint="cfg-elsewhere", model_name=name)
    version = registry.register(config)["version"]
    registry.promote(PromoteConfig(version=version, expected_production="none", model_name=name))
    champion = registry.resolve_champion("base", model_name=name)
    assert (Path(champion["model_dir"]) / "config.json").is_file()


def test_the_production_alias_serves_completions_through_pyfunc(lifecycle):
    import mlflow
    import pandas

    tracking.client()  # points mlflow's global tracking and registry URIs at this module's store
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@production")
    answers = model.predict(pandas.DataFrame({"prompt": [PROMPT]}))
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
