"""Real TRL training of the tiny local model on CPU, through the ``llmops train`` CLI.

The base model is the one ``llmops init`` builds (random weights, tokenizer trained on the sample
data); MLflow logs to a SQLite store in a temp folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_tasks import bootstrap, data, samples, split, train
from llmops_tasks.cli import main
from llmops_tasks.config import ConfigError, load

pytestmark = [pytest.mark.integration]
QUIET = ["--log-model", "false", "--system-metrics-interval", "0"]  # MLflow extras checked in test_training_methods


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = bootstrap.build_tiny_model(root / "base", samples.corpus_text())
    dataset = root / "preference.jsonl"
    data.write_jsonl(str(dataset), samples.preference_rows())
    paths = split.run(split.SplitConfig(dataset=str(dataset), out_dir=str(root / "split")))
    return {"root": root, "base": str(model), **paths}


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    for key in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID"):
        monkeypatch.delenv(key, raising=False)


def _cli(args: list[str], capsys, tmp_path_factory=None) -> dict:
    import tempfile

    result_file = Path(tempfile.mkdtemp()) / "result.json"
    code = main([*args, "--result-file", str(result_file)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    return json.loads(result_file.read_text())


def test_sft_learns_and_logs_to_mlflow(workdir, tmp_path, capsys):
    out_dir = tmp_path / "sft"
    result = _cli(["train", "sft", "--config", bootstrap.packaged_recipe("sft_tiny.yaml"),
                   "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                   "--output-dir", str(out_dir), "--set", "max_steps=40", "--set", "save_steps=20"], capsys)
    assert result["global_step"] == 40
    history = json.loads((out_dir / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] * 0.7, losses  # it learns the help-desk answers
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result["model_dir"]).num_parameters() > 0

    from llmops_tasks import tracking

    run = tracking.client().get_run(result["mlflow_run_id"])
    assert run.data.params["max_steps"] == "40" and run.data.params["method"] == "sft"
    assert "loss" in run.data.metrics and "train_loss" in run.data.metrics
    assert run.info.status == "FINISHED"
    # full fine-tuning: the weights themselves are the model logged on the run
    artifacts = [a.path for a in tracking.client().list_artifacts(run.info.run_id, "model/artifacts/model")]
    assert "model/artifacts/model/model.safetensors" in artifacts, artifacts
    assert result["mlflow_model_uri"].startswith("models:/")


def test_rerun_with_same_config_is_reused(workdir, tmp_path, capsys):
    args = ["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
            "--output-dir", str(tmp_path / "sft"), "--max-steps", "4", "--save-steps", "2", *QUIET]
    first = _cli(args, capsys)
    second = _cli(args, capsys)
    assert second["reused"] is True and second["model_dir"] == first["model_dir"]


def test_dpo_with_lora_trains_an_adapter(workdir, tmp_path, capsys):
    result = _cli(["train", "dpo", "--config", bootstrap.packaged_recipe("dpo_tiny.yaml"),
                   "--base-model", workdir["base"], "--train-data", workdir["train_preference"],
                   "--output-dir", str(tmp_path / "dpo"), "--lora", "--set", "max_steps=6",
                   "--set", "save_steps=3", *QUIET], capsys)
    assert result["method"] == "dpo" and result["global_step"] == 6
    assert (Path(result["adapter_dir"]) / "adapter_config.json").is_file()
    assert (Path(result["model_dir"]) / "config.json").is_file()  # merged weights for evaluation


def test_retry_resumes_from_last_complete_checkpoint(workdir, tmp_path, capsys):
    """A half-written checkpoint (no trainer_state.json) is never picked; the complete one is."""
    out_dir = tmp_path / "resume"
    args = ["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
            "--output-dir", str(out_dir), "--save-steps", "4", *QUIET]
    _cli(args + ["--max-steps", "4"], capsys)
    (out_dir / "result.json").unlink()  # as if the process died right after checkpoint-4
    partial = out_dir / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert train.last_complete_checkpoint(out_dir / "checkpoints").endswith("checkpoint-4")
    result = _cli(args + ["--max-steps", "8"], capsys)
    assert result["resumed_from"].endswith("checkpoint-4")
    assert result["global_step"] == 8


def test_bad_training_data_is_a_clear_failure(workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "llmops_tasks", "train", "sft", "--base-model", workdir["base"],
         "--train-data", str(bad), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 1
    assert "line 1 lacks column(s) completion" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.unit
@pytest.mark.parametrize("recipe", sorted(Path(bootstrap.__file__).with_name("recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe):
    """Recipes go stale when a setting is renamed; each must load into its step's config."""
    from llmops_tasks import evaluate, gate, validate

    by_prefix = {**{method: train.TrainConfig for method in train.METHODS}, "evaluate": evaluate.EvaluateConfig,
                 "gate": gate.GateConfig, "validate": validate.ValidateConfig}
    config_cls = by_prefix[recipe.name.split("_")[0].removesuffix(".yaml")]
    required = {"base_model": "x", "train_data": "x"} if config_cls is train.TrainConfig else {}
    required.update({"dataset": "x"} if config_cls is validate.ValidateConfig else {})
    values = {k: v for k, v in required.items() if k not in data_keys(recipe)}
    load(config_cls, recipe, values)


@pytest.mark.unit
def test_every_method_has_a_tiny_recipe():
    """The DAG falls back to ``{method}_tiny.yaml``; a method without one would fail at run time."""
    recipes = Path(bootstrap.__file__).with_name("recipes")
    assert all((recipes / f"{method}_tiny.yaml").is_file() for method in train.METHODS)


def data_keys(recipe: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load(recipe.read_text()) or {})


@pytest.mark.unit
def test_invalid_settings_are_named():
    with pytest.raises(ConfigError, match="max_steps must be a positive integer"):
        load(train.TrainConfig, None, {"base_model": "m", "train_data": "d", "max_steps": 0})
    with pytest.raises(ConfigError, match="unknown setting.*epochs"):
        load(train.TrainConfig, None, {"base_model": "m", "train_data": "d", "epochs": 3})
