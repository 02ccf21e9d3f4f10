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

from llmops_tasks import cli, registry
from llmops_tasks.core import data, tracking
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import bootstrap
from llmops_tasks.registry import PromoteConfig, RegisterConfig, RollbackConfig, StatusConfig
from llmops_tasks.serving import flavor

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
def store(module_store, tiny_model):
    """The module's MLflow store and home, and one tiny model to register."""
    import shutil

    root, env = module_store
    env.setenv("LLMOPS_MODEL_NAME", MODEL)
    env.setenv("LLMOPS_ACTOR", "ci-bot")
    # The train step saves its model to {output_dir}/model; register reads that folder.
    model_dir = shutil.copytree(tiny_model, root / "train" / "model")
    return Store(root, model_dir)


def candidate_files(folder: Path, model_dir: Path, *, passed: bool = True, fingerprint: str = "cfg-a-sft",
                    bleu: float = 0.4123456789, rougeL: float = 0.55, champion_version: str = "",
                    model_name: str = "", input_example: str = "false", lora: bool = False,
                    gate_overrides: dict | None = None) -> RegisterConfig:
    """Write the train / evaluate / gate outputs a registration reads, as the steps would."""
    folder.mkdir(parents=True, exist_ok=True)
    data.write_json(str(folder / "result.json"), {
        "model_dir": str(model_dir), "fingerprint": fingerprint, "method": "sft",
        "config_hash": f"hash-of-{fingerprint}", "train_data_hash": "train-data-sha", "mlflow_run_id": "",
        "base_model": str(model_dir), "global_step": 120, "final_loss": 0.31,
        "adapter_dir": str(model_dir) if lora else "",
    })
    data.write_json(str(folder / "metrics.json"), {
        "candidate": {"bleu": bleu, "rougeL": rougeL},
        "champion": {"bleu": 0.1, "rougeL": 0.2},
        "delta": {"bleu": bleu - 0.1, "rougeL": rougeL - 0.2},
        "ci": {"bleu": [0.05, 0.5], "rougeL": [0.1, 0.6]}, "ci_level": 0.95, "bootstrap_samples": 200, "n": 43,
        "champion_label": f"production v{champion_version}" if champion_version else "base",
        "champion_version": champion_version,
        "eval_hash": "x",
    })
    data.write_json(str(folder / "decision.json"), {
        "passed": passed, "reason": "passed all rules" if passed else "min_bleu: 0.01 < 0.05",
        "policy_file": "team-gate.yaml" if gate_overrides else "", "policy_standard": not gate_overrides,
        "overrides": gate_overrides or {},
    })
    data.write_json(str(folder / "validation.json"), {
        "valid": True, "rows": 216, "dataset_hash": f"dataset-sha-{fingerprint}",
        "rules": [{"rule": "prompt_not_null", "success": True},
                  {"rule": "pii_email", "success": False, "unexpected_count": 2}],
        "skipped_rules": [],
    })
    return RegisterConfig(
        train_result=str(folder / "result.json"), metrics=str(folder / "metrics.json"),
        decision=str(folder / "decision.json"), dataset_hash=f"dataset-sha-{fingerprint}", model_name=model_name,
        validation=str(folder / "validation.json"), input_example=input_example,
    )


def attempt(action, *args) -> Any:
    """Run a registry action; a refusal (StepFailed) is recorded as the outcome instead of raised."""
    try:
        return action(*args)
    except StepFailed as exc:
        return exc


def versions_of(name: str) -> list[str]:
    return sorted((str(v.version) for v in tracking.client().search_model_versions(f"name = '{name}'")), key=int)


def tags_of(version: str, name: str = MODEL) -> dict[str, str]:
    return dict(tracking.client().get_model_version(name, version).tags)


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
        # The first version gets an input example (MLflow runs the model once); the others skip it.
        first = candidate_files(store.root / "run-a", store.model_dir, input_example="auto")
        seen["register_a"] = registry.register(first)
        seen["tags_a"] = tags_of(seen["register_a"]["version"])
        seen["description_a"] = tracking.client().get_model_version(MODEL, "1").description
        seen["audit_after_register_a"] = registry.audit.AuditLog(MODEL, tracking.client()).text()
        seen["register_a_again"] = registry.register(first)
        seen["versions_after_reregister"] = versions_of(MODEL)

        seen["promote_a"] = registry.promote(PromoteConfig(expected_production="none", approved_by="alice",
                                                          comment="first champion"))
        seen["aliases_after_promote_a"] = aliases()
        seen["tags_a_promoted"] = tags_of("1")
        seen["promote_a_again"] = registry.promote(PromoteConfig(expected_production="none"))
        seen["aliases_after_promote_a_again"] = aliases()
        seen["audit_after_promote_a"] = registry.audit.AuditLog(MODEL, tracking.client()).text()

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

        registry.record_approval("2", decision="approved", by="bob", comment="reviewed the samples")
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
    seen["audit_final"] = registry.audit.AuditLog(MODEL, tracking.client()).text()
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
    assert [line.split()[:2] for line in lines[1:4]] == [["staging", "v2"], ["production", "v1"],
                                                         ["previous-production", "v2"]]
    assert lines[4].startswith("  last move: rolled_back v1 by carol")


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


# --------------------------------------------------------------------------- lineage, card, audit log


def test_lineage_names_the_base_model_and_its_hash(store, lifecycle):
    tags = lifecycle["tags_a"]
    assert tags["llmops.base_model"] == str(store.model_dir)
    assert tags["llmops.base_model_hash"] == registry.folder_hash(str(store.model_dir))
    assert len(tags["llmops.base_model_hash"]) == 64
    assert tags["llmops.package_version"] == tracking.__version__
    assert (tags["llmops.dag_id"], tags["llmops.dag_run_id"]) == (DAG_ID, RUN_A)
    assert tags["llmops.adapter"] == "false"


def test_the_logged_model_has_a_signature_and_an_input_example(lifecycle):
    from mlflow.models import get_model_info

    tracking.client()
    info = get_model_info(f"models:/{MODEL}/1")
    assert [c.name for c in info.signature.inputs.inputs] == ["prompt"]
    assert [p.name for p in info.signature.params.params] == ["max_new_tokens"]
    assert info.saved_input_example_info is not None
    assert lifecycle["tags_a"]["llmops.input_example"] == "true"
    assert "mlflow==" in " ".join(flavor.pip_requirements())


def test_the_version_description_is_its_model_card(lifecycle):
    card = lifecycle["description_a"]
    assert card.startswith(f"# {MODEL} v1")
    for section in ("## Lineage", "## Training", "## Evaluation", "## Data quality", "## Intended use",
                    "## Limitations"):
        assert section in card
    assert "dataset-sha-cfg-a-sft" in card and "216 rows" in card
    assert "| bleu | 0.4123 | 0.1000 | +0.3123 | [+0.0500, +0.5000] |" in card
    assert "findings in `pii_email`" in card


def test_the_model_card_is_also_an_artifact_of_the_register_run(lifecycle):
    client = tracking.client()
    run_id = lifecycle["tags_a"]["llmops.model_card_run"]
    assert {"model_card.md", "lineage.json"} <= {a.path for a in client.list_artifacts(run_id)}


def test_every_move_is_in_the_audit_log_in_order(lifecycle):
    events = registry.audit.verify(lifecycle["audit_final"])
    assert [(e["action"], e["version"]) for e in events] == [
        ("staged", "1"), ("approved", "1"), ("promoted", "1"), ("staged", "2"), ("promotion_refused", "2"),
        ("approved", "2"), ("promoted", "2"), ("rolled_back", "1")]
    # promoting by hand a version no one had decided on is the promoter's approval, recorded first
    approved, promoted = events[1], events[2]
    assert (approved["actor"], approved["comment"]) == ("alice", "first champion")
    assert (promoted["actor"], promoted["comment"], promoted["replaced"]) == ("alice", "first champion", "none")
    assert (promoted["dag_id"], promoted["dag_run_id"]) == (DAG_ID, RUN_A)
    assert promoted["gate"] == {"passed": True, "reason": "passed all rules", "approval": "approved", "exceptions": []}
    assert events[-1]["reason"] == "users report wrong answers" and events[-1]["actor"] == "carol"


def test_the_audit_log_is_append_only(lifecycle):
    # Re-registering and re-promoting the same run wrote no second line; later events only appended.
    early, middle, final = (lifecycle["audit_after_register_a"], lifecycle["audit_after_promote_a"],
                            lifecycle["audit_final"])
    assert len(early.splitlines()) == 1 and len(middle.splitlines()) == 3
    assert middle.startswith(early) and final.startswith(middle)


def test_a_rewritten_audit_log_does_not_verify(lifecycle):
    lines = lifecycle["audit_final"].splitlines(keepends=True)
    tampered = lines[0].replace('"alice"', '"mallory"').replace('"ci-bot"', '"mallory"')
    with pytest.raises(ValueError, match="line 2: prev_sha256"):
        registry.audit.verify("".join([tampered, *lines[1:]]))


def test_the_registered_model_points_at_its_audit_run(lifecycle):
    client = tracking.client()
    run_id = client.get_registered_model(MODEL).tags[registry.audit.AUDIT_RUN_TAG]
    assert client.get_run(run_id).data.tags[registry.audit.TAG_AUDIT_MODEL] == MODEL


def test_a_rejected_version_is_recorded_and_never_promoted(store):
    name = "rejected-candidate"
    config = candidate_files(store.root / "rejected", store.model_dir, fingerprint="cfg-rejected", model_name=name)
    version = registry.register(config)["version"]
    registry.record_approval(version, decision="rejected", by="dana", comment="answers are too terse", model_name=name)
    with pytest.raises(StepFailed, match="dana rejected it at .* a rejected version never reaches production"):
        registry.promote(PromoteConfig(version=version, expected_production="none", model_name=name))
    assert registry.alias_versions(name) == {"staging": version}
    tags = tracking.client().get_model_version(name, version).tags
    assert (tags["llmops.approval"], tags["llmops.approval_comment"]) == ("rejected", "answers are too terse")
    assert [e["action"] for e in registry.audit_events(name)] == ["staged", "rejected"]


def test_cli_records_a_rejection_the_way_the_dag_does(store, llmops):
    """``llmops registry approval`` is what the DAG's approve / waive_approval tasks run."""
    name = "rejected-from-the-shell"
    config = candidate_files(store.root / "rejected-cli", store.model_dir, fingerprint="cfg-rejected-cli",
                             model_name=name)
    version = registry.register(config)["version"]
    code, result = llmops(["registry", "approval", "--model-name", name, "--version", f"v{version}",
                           "--decision", "rejected", "--by", "erin", "--comment", "off-topic answers"])
    assert code == 0 and result == {"model_name": name, "version": version, "approval": "rejected", "by": "erin",
                                 "exceptions": []}
    code, _ = llmops(["registry", "promote", "--model-name", name, "--version", version,
                      "--expected-production", "none"])
    assert code == 1
    assert registry.alias_versions(name) == {"staging": version}
    assert [e["action"] for e in registry.audit_events(name)] == ["staged", "rejected"]
    code, _ = llmops(["registry", "approval", "--model-name", name, "--version", version, "--decision", "maybe"])
    assert code == 2  # a configuration error, named before anything is written


def test_rollback_to_an_unknown_version_names_it(lifecycle):
    with pytest.raises(StepFailed, match=f"{MODEL} has no version '99'"):
        registry.rollback(RollbackConfig(to_version="99"))
    assert registry.alias_versions(MODEL)["production"] == "1"


def test_cli_rollback_exits_1_without_a_previous_production(store, capsys):
    status = cli.main(["registry", "rollback", "--model-name", "never-promoted", "--reason", "test"])
    assert status == 1
    assert "no 'previous-production' alias" in capsys.readouterr().err


def test_a_registry_lock_left_by_a_dead_holder_expires(store):
    from llmops_tasks.registry import audit

    name = "lock-check"
    client = tracking.client()
    client.create_registered_model(audit.lock_name(name), tags={"llmops.lock_holder": "crashed worker",
                                                                "llmops.lock_expires": "1"})
    with audit.registry_lock(name, client, holder="test", timeout_s=5):
        assert client.get_registered_model(audit.lock_name(name)).tags["llmops.lock_holder"] == "test"
    assert client.search_registered_models(filter_string=f"name = '{audit.lock_name(name)}'") == []


def test_a_held_registry_lock_refuses_after_the_timeout(store):
    from llmops_tasks.registry import audit

    client = tracking.client()
    refused = pytest.raises(StepFailed, match=r"locked by another alias move \(first promotion\)")
    with audit.registry_lock("busy-model", client, holder="first promotion", timeout_s=5), refused, \
            audit.registry_lock("busy-model", client, holder="second", timeout_s=0.2):
        pass


# --------------------------------------------------------------------------- governance rules


def _registered(store, name: str, tag: str, **kwargs) -> str:
    return registry.register(candidate_files(store.root / name / tag, store.model_dir, fingerprint=f"{name}-{tag}",
                                             model_name=name, **kwargs))["version"]


def test_rollback_refuses_a_rejected_and_a_never_approved_version(store):
    """The rollback target is checked like a promotion: a human's Reject is final."""
    name = "governed-rollback"
    first = _registered(store, name, "a")
    registry.promote(PromoteConfig(version=first, expected_production="none", model_name=name, approved_by="alice"))
    rejected = _registered(store, name, "b")
    registry.record_approval(rejected, decision="rejected", by="dana", comment="unsafe answers", model_name=name)
    undecided = _registered(store, name, "c")
    with pytest.raises(StepFailed, match=r"v2 cannot reach production: dana rejected it at .* \(unsafe answers\)"):
        registry.rollback(RollbackConfig(to_version=rejected, reason="try the other one", model_name=name))
    with pytest.raises(StepFailed, match="v3 cannot reach production: it was never approved"):
        registry.rollback(RollbackConfig(to_version=undecided, reason="try the other one", model_name=name))
    # nor can a later approval undo the rejection
    with pytest.raises(StepFailed, match="a rejection is final"):
        registry.record_approval(rejected, decision="approved", by="erin", model_name=name)
    assert registry.alias_versions(name)["production"] == first
    assert tags_of(rejected, name)["llmops.approval"] == "rejected"
    assert "rolled_back" not in [e["action"] for e in registry.audit_events(name)]



def test_a_waiver_needs_the_deployment_and_is_then_shown_everywhere(store, monkeypatch):
    name = "governed-waiver"
    version = _registered(store, name, "a")
    monkeypatch.delenv("LLMOPS_ALLOW_APPROVAL_WAIVER", raising=False)
    with pytest.raises(StepFailed, match="requires a human approval before production; set LLMOPS_ALLOW_APPROVAL_WAIVER"):
        registry.record_approval(version, decision="waived", by="auto (require_approval=false)", model_name=name)
    assert "llmops.approval" not in tags_of(version, name)

    monkeypatch.setenv("LLMOPS_ALLOW_APPROVAL_WAIVER", "true")
    result = registry.record_approval(version, decision="waived", by="auto (require_approval=false)", model_name=name)
    assert result["exceptions"] == [("approval waived by auto (require_approval=false) (deployment allows waivers: "
                                    "LLMOPS_ALLOW_APPROVAL_WAIVER)")]
    mv = tracking.client().get_model_version(name, version)
    assert mv.tags["llmops.approval"] == "waived" and mv.tags["llmops.exceptions"] == result["exceptions"][0]
    assert "## Governance" in mv.description and "approval waived" in mv.description
    assert registry.promote(PromoteConfig(version=version, expected_production="none", model_name=name))["changed"]
    events = registry.audit_events(name)
    assert [e["action"] for e in events] == ["staged", "waived", "promoted"]
    assert events[1]["exceptions"] == result["exceptions"] and events[2]["gate"]["exceptions"] == result["exceptions"]
    assert registry.status(StatusConfig(model_name=name))["versions"][version]["exceptions"] == result["exceptions"][0]

    # a deployment that stops allowing waivers gets no waived version back into production
    second = _registered(store, name, "b")
    registry.promote(PromoteConfig(version=second, expected_production=version, model_name=name, approved_by="bob"))
    monkeypatch.setenv("LLMOPS_ALLOW_APPROVAL_WAIVER", "false")
    with pytest.raises(StepFailed, match="its approval was waived, and this deployment requires a human approval"):
        registry.rollback(RollbackConfig(reason="back to the waived one", model_name=name))
    assert registry.alias_versions(name)["production"] == second


def test_a_non_standard_gate_needs_the_deployment_and_is_then_shown(store, monkeypatch):
    name = "governed-gate"
    loosened = {"max_regression": {"value": 0.5, "standard": 0.02}}
    monkeypatch.delenv("LLMOPS_ALLOW_GATE_OVERRIDE", raising=False)
    with pytest.raises(StepFailed, match=r"non-standard policy \(max_regression=0.5 \(standard 0.02\)\).*"
                                         "LLMOPS_ALLOW_GATE_OVERRIDE=true"):
        _registered(store, name, "a", gate_overrides=loosened)
    assert registry.alias_versions(name) == {}

    monkeypatch.setenv("LLMOPS_ALLOW_GATE_OVERRIDE", "true")
    version = _registered(store, name, "a", gate_overrides=loosened)
    tags = tags_of(version, name)
    assert tags["llmops.gate_policy_standard"] == "false" and tags["llmops.gate_policy"] == "team-gate.yaml"
    assert json.loads(tags["llmops.gate_overrides"]) == loosened
    assert tags["llmops.exceptions"].startswith("non-standard gate policy: max_regression=0.5 (standard 0.02)")
    assert "non-standard" in tracking.client().get_model_version(name, version).description

    registry.record_approval(version, decision="approved", by="alice", model_name=name)
    monkeypatch.setenv("LLMOPS_ALLOW_GATE_OVERRIDE", "no")
    with pytest.raises(StepFailed, match="its gate ran a non-standard policy"):
        registry.promote(PromoteConfig(version=version, expected_production="none", model_name=name))
    monkeypatch.setenv("LLMOPS_ALLOW_GATE_OVERRIDE", "true")
    assert registry.promote(PromoteConfig(version=version, expected_production="none", model_name=name))["changed"]
