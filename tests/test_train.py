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

from llmops_tasks import split, train
from llmops_tasks.cli import main
from llmops_tasks.core import data, settings
from llmops_tasks.core.config import ConfigError, load
from llmops_tasks.local import bootstrap, samples

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
    result = _cli(["train", "sft", "--config", settings.packaged_recipe("sft_tiny.yaml"),
                   "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                   "--output-dir", str(out_dir), "--set", "trainer.max_steps=40", "--set", "trainer.save_steps=20"],
                  capsys)
    assert result["global_step"] == 40
    history = json.loads((out_dir / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] * 0.7, losses  # it learns the help-desk answers
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result["model_dir"]).num_parameters() > 0

    from llmops_tasks.core import tracking

    run = tracking.client().get_run(result["mlflow_run_id"])
    # the effective TRL settings are the run's parameters, under their TRL names: recipe, --set and house layer
    assert run.data.params["max_steps"] == "40" and run.data.params["method"] == "sft"
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["disable_tqdm"] == "True"
    assert "loss" in run.data.metrics and "train_loss" in run.data.metrics
    assert run.info.status == "FINISHED"
    # full fine-tuning: the weights themselves are the model logged on the run
    artifacts = [a.path for a in tracking.client().list_artifacts(run.info.run_id, "model/artifacts/model")]
    assert "model/artifacts/model/model.safetensors" in artifacts, artifacts
    assert result["mlflow_model_uri"].startswith("models:/")


def test_rerun_with_same_config_is_reused(workdir, tmp_path, capsys):
    args = ["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
            "--output-dir", str(tmp_path / "sft"), "--trainer", "max_steps=4", "--trainer", "save_steps=2", *QUIET]
    first = _cli(args, capsys)
    second = _cli(args, capsys)
    assert second["reused"] is True and second["model_dir"] == first["model_dir"]


def test_dpo_with_lora_trains_an_adapter(workdir, tmp_path, capsys):
    result = _cli(["train", "dpo", "--config", settings.packaged_recipe("dpo_tiny.yaml"),
                   "--base-model", workdir["base"], "--train-data", workdir["train_preference"],
                   "--output-dir", str(tmp_path / "dpo"), "--model", "use_peft=true", "--set", "trainer.max_steps=6",
                   "--set", "trainer.save_steps=3", *QUIET], capsys)
    assert result["method"] == "dpo" and result["global_step"] == 6
    assert (Path(result["adapter_dir"]) / "adapter_config.json").is_file()
    assert (Path(result["model_dir"]) / "config.json").is_file()  # merged weights for evaluation


def test_retry_resumes_from_last_complete_checkpoint(workdir, tmp_path, capsys):
    """A half-written checkpoint (no trainer_state.json) is never picked; the complete one is."""
    out_dir = tmp_path / "resume"
    args = ["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
            "--output-dir", str(out_dir), "--trainer", "save_steps=4", *QUIET]
    _cli(args + ["--trainer", "max_steps=4"], capsys)
    (out_dir / "result.json").unlink()  # as if the process died right after checkpoint-4
    partial = out_dir / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert train.last_complete_checkpoint(out_dir / "checkpoints").endswith("checkpoint-4")
    result = _cli(args + ["--trainer", "max_steps=8"], capsys)
    assert result["resumed_from"].endswith("checkpoint-4")
    assert result["global_step"] == 8


def test_bad_training_data_is_a_clear_failure(workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "llmops_tasks", "train", "sft", "--base-model", workdir["base"],
         "--train-data", str(bad), "--output-dir", str(tmp_path / "out")],
        check=False, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 1
    assert "line 1 lacks column(s) completion" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.unit
@pytest.mark.parametrize("recipe", sorted([*(settings.PACKAGE_DIR / "recipes").glob("*.yaml"),
                                            *(settings.PACKAGE_DIR / "policies").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe):
    """Recipes go stale when a setting is renamed; each must load into its step's config."""
    from llmops_tasks import evaluate, gate, validate
    from llmops_tasks.monitoring import policy

    if recipe.name.startswith("monitor"):  # a monitoring policy (--policy), not a step's config
        assert policy.load(str(recipe)).signals
        return
    by_prefix = {**{method: train.config_class(method) for method in train.METHODS},
                 "evaluate": evaluate.EvaluateConfig, "gate": gate.GateConfig, "validate": validate.ValidateConfig}
    config_cls = by_prefix[recipe.name.split("_")[0].removesuffix(".yaml")]
    # a train recipe's trainer:/model:/reward_trainer: sections are checked against the method's TRL classes
    required = {"base_model": "x", "train_data": "x"} if issubclass(config_cls, train.TrainConfig) else {}
    required.update({"dataset": "x"} if config_cls is validate.ValidateConfig else {})
    values = {k: v for k, v in required.items() if k not in data_keys(recipe)}
    load(config_cls, recipe, values)


@pytest.mark.unit
def test_every_method_has_a_tiny_recipe():
    """The DAG falls back to ``{method}_tiny.yaml``; a method without one would fail at run time."""
    recipes = settings.PACKAGE_DIR / "recipes"
    assert all((recipes / f"{method}_tiny.yaml").is_file() for method in train.METHODS)


def data_keys(recipe: Path) -> set[str]:
    import yaml

    return set(yaml.safe_load(recipe.read_text()) or {})


@pytest.mark.unit
def test_invalid_settings_are_named():
    with pytest.raises(ConfigError, match="max_steps must be a positive integer"):
        load(train.config_class("sft"), None, {"base_model": "m", "train_data": "d", "trainer": {"max_steps": 0}})
    with pytest.raises(ConfigError, match="unknown setting.*epochs"):
        load(train.config_class("sft"), None, {"base_model": "m", "train_data": "d", "epochs": 3})


# --------------------------------------------------------------------------------------------
# trainer: / model: sections: any TRL field from a recipe or the command line, checked at load


def _config(method: str, **values):
    return load(train.config_class(method), None, {"base_model": "m", "train_data": "d", "output_dir": "/tmp/x",
                                                   **values})


class Captured(Exception):
    """Raised by a trainer in place of training: the test has what it needed."""


@pytest.fixture
def capture_trainer(monkeypatch):
    """Swap a TRL trainer class for a subclass that keeps the built trainer and stops before training.
    train() looks the class up when it builds the trainer, so the real CLI path is exercised."""
    import importlib

    built: dict = {}

    def capture(method: str) -> dict:
        module_name, _, trainer_name = train.TRL_CLASSES[method]
        module = importlib.import_module(module_name)

        class Capturing(getattr(module, trainer_name)):
            def train(self, *args, **kwargs):
                built["trainer"] = self
                raise Captured

        monkeypatch.setattr(module, trainer_name, Capturing)
        return built

    return capture


@pytest.mark.parametrize(("method", "args", "expected"), [
    ("sft", ["--set", "trainer.weight_decay=0.01", "--trainer", "warmup_steps=0.1", "--trainer", "packing=true",
             "--set", "trainer.max_grad_norm=0.5"],
     {"weight_decay": 0.01, "warmup_steps": 0.1, "packing": True, "max_grad_norm": 0.5,
      "learning_rate": 3e-3, "max_steps": 120, "completion_only_loss": True}),  # sft_tiny.yaml's
    ("dpo", ["--set", "trainer.label_smoothing=0.1", "--set", "trainer.loss_type=sigmoid,sft",
             "--set", "trainer.loss_weights=1,0.5", "--set", "trainer.lr_scheduler_type=constant_with_warmup"],
     {"label_smoothing": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5],
      "lr_scheduler_type": "constant_with_warmup", "beta": 0.1, "max_length": 128}),
    ("grpo", ["--set", "trainer.num_iterations=2", "--set", "trainer.epsilon=0.3"],
     {"num_iterations": 2, "epsilon": 0.3, "num_generations": 4, "max_completion_length": 24, "beta": 0.0}),
])
def test_any_trl_field_reaches_the_config_the_trainer_is_built_with(workdir, tmp_path, capsys, capture_trainer,
                                                                      method, args, expected):
    """Recipe, --set trainer.X and --trainer X=... all land on the TRL config object the real trainer gets."""
    built = capture_trainer(method)
    data_key = "train_sft" if method == "sft" else "train_preference"
    extra = ["--reward-model", workdir["base"]] if method in train.RL_METHODS else []  # no reward training first
    with pytest.raises(Captured):
        main(["train", method, "--config", settings.packaged_recipe(f"{method}_tiny.yaml"),
              "--base-model", workdir["base"], "--train-data", workdir[data_key], "--output-dir", str(tmp_path / "o"),
              *extra, *QUIET, *args])
    trainer_args = built["trainer"].args
    assert type(trainer_args) is train.trl_config_class(method)
    for key, value in expected.items():
        actual = getattr(trainer_args, key)
        actual = actual.value if hasattr(actual, "value") else actual  # enums
        assert actual == pytest.approx(value) if isinstance(value, float) else actual == value, key
    assert trainer_args.output_dir == str(tmp_path / "o" / "checkpoints")
    assert trainer_args.activation_checkpointing is False and trainer_args.save_total_limit == 2  # house layer
    assert trainer_args.report_to == []


@pytest.mark.unit
@pytest.mark.parametrize(("method", "section", "key", "expected"), [
    ("dpo", "trainer", "weight_decay", 0.05),
    ("dpo", "trainer", "label_smoothing", 0.2),
    ("sft", "trainer", "packing", True),
    ("grpo", "trainer", "num_iterations", 3),
    ("rloo", "trainer", "num_iterations", 2),
    ("kto", "trainer", "desirable_weight", 1.5),
    ("orpo", "trainer", "max_completion_length", 48),
    ("reward", "trainer", "center_rewards_coefficient", 0.01),
])
def test_a_recipe_sets_an_arbitrary_trl_field(tmp_path, method, section, key, expected):
    """Without training: the recipe's value is on the TRL config object train() builds for the trainer."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"base_model: m\ntrain_data: d\n{section}:\n  {key}: {str(expected).lower()}\n")
    config = load(train.config_class(method), path)
    args = train.trainer_args(config, method, tmp_path / "checkpoints")
    assert type(args).__name__ == train.TRL_CLASSES[method][1]
    assert getattr(args, key) == expected
    assert args.learning_rate == train.HOUSE_TRAINER["learning_rate"]  # the house layer under it


@pytest.mark.unit
def test_text_from_the_command_line_takes_the_trl_field_type():
    config = _config("dpo", trainer={"learning_rate": "3e-3", "loss_type": "sigmoid,sft", "loss_weights": "1,0.5",
                                     "max_length": "null", "report_to": "none", "save_steps": "10",
                                     "gradient_checkpointing_kwargs": "{use_reentrant: false}",
                                     "lr_scheduler_type": "cosine_with_min_lr", "bf16": "false"})
    assert config.trainer == {"learning_rate": 3e-3, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5],
                              "max_length": None, "report_to": "none", "save_steps": 10,
                              "gradient_checkpointing_kwargs": {"use_reentrant": False},
                              "lr_scheduler_type": "cosine_with_min_lr", "bf16": False}
    with pytest.raises(ConfigError, match=r"trainer\.learning_rate: expected a number, got 'fast'"):
        _config("dpo", trainer={"learning_rate": "fast"})
    with pytest.raises(ConfigError, match=r"trainer\.lr_scheduler_type: expected one of linear, cosine.*got 'cosin'"):
        _config("dpo", trainer={"lr_scheduler_type": "cosin"})
    with pytest.raises(ConfigError, match=r"model\.dtype: expected one of auto, bfloat16, float16, float32"):
        _config("dpo", model={"dtype": "fp8"})


@pytest.mark.unit
def test_a_wrong_trainer_key_is_a_named_error_at_load_time(capsys):
    """Exit 2 before any data or model is touched (neither exists here), naming the key and the TRL class."""
    assert main(["train", "dpo", "--set", "trainer.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "nope" in err and "trl.DPOConfig" in err
    assert "known settings are:" in err and "rpo_alpha" not in err and "label_smoothing" in err
    with pytest.raises(ConfigError, match=r"learnin_rate: did you mean learning_rate\?.*help\(trl\.DPOConfig\)"):
        _config("dpo", trainer={"learnin_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"unknown trainer setting\(s\) num_generations for trl\.DPOConfig"):
        _config("dpo", trainer={"num_generations": 4})  # a GRPO field: not DPO's
    with pytest.raises(ConfigError, match=r"unknown model setting\(s\) lora_rank for trl\.ModelConfig.*lora_r"):
        _config("sft", model={"lora_rank": 8})
    with pytest.raises(ConfigError, match=r"trainer\.output_dir is the pipeline's: the top-level output_dir"):
        _config("sft", trainer={"output_dir": "/elsewhere"})
    with pytest.raises(ConfigError, match=r"model\.model_name_or_path is the pipeline's: set the top-level base_model"):
        _config("sft", model={"model_name_or_path": "x"})
    with pytest.raises(ConfigError, match=r"reward_trainer sets the reward model grpo and rloo train first"):
        _config("dpo", reward_trainer={"max_length": 64})


@pytest.mark.unit
def test_a_recipe_with_a_stale_trainer_key_does_not_parse(tmp_path):
    """What test_every_shipped_recipe_parses relies on: a key TRL renamed fails the load of its recipe."""
    path = tmp_path / "dpo_stale.yaml"
    path.write_text("trainer:\n  evaluation_strategy: steps\n")  # transformers' old name of eval_strategy
    with pytest.raises(ConfigError, match=r"evaluation_strategy: did you mean eval_strategy"):
        load(train.config_class("dpo"), path, {"base_model": "x", "train_data": "x"})
    path.write_text("max_steps: 10\n")  # a trainer setting at the top level, as recipes had them before
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) max_steps for DPOTrainConfig.*trainer"):
        load(train.config_class("dpo"), path, {"base_model": "x", "train_data": "x"})


@pytest.mark.unit
def test_the_house_layer_never_overrides_what_a_recipe_sets():
    house = train.trainer_settings(_config("sft"), "sft")
    assert {k: house[k] for k in train.HOUSE_TRAINER} == train.HOUSE_TRAINER
    assert house["completion_only_loss"] is True and house["data_seed"] == 42
    assert "num_generations" not in house  # an RL default, not SFT's
    recipe = {"learning_rate": 1e-5, "seed": 7, "logging_steps": 1}
    given = train.trainer_settings(_config("sft", trainer=recipe), "sft")
    assert (given["learning_rate"], given["seed"], given["data_seed"], given["logging_steps"]) == (1e-5, 7, 7, 1)
    # a house value steps aside for what the recipe set in its place
    epochs = train.trainer_settings(_config("sft", trainer={"num_train_epochs": 2}), "sft")
    assert "max_steps" not in epochs and epochs["num_train_epochs"] == 2
    checkpointing = train.trainer_settings(_config("sft", trainer={"gradient_checkpointing": True}), "sft")
    assert "activation_checkpointing" not in checkpointing
    assert train.trainer_args(_config("sft", trainer={"gradient_checkpointing": True}), "sft",
                              Path("/tmp/x")).activation_checkpointing is True
    rl = train.trainer_settings(_config("grpo"), "grpo")
    assert "max_length" not in rl and (rl["num_generations"], rl["max_completion_length"], rl["beta"]) == (4, 32, 0.1)


@pytest.mark.unit
def test_rl_reward_model_takes_the_shared_trainer_settings_then_its_own():
    config = _config("grpo", trainer={"learning_rate": 1e-4, "num_generations": 2, "save_steps": 5},
                     reward_max_steps=7, reward_trainer={"max_length": 64, "learning_rate": 1e-3},
                     model={"use_peft": True, "lora_r": 4})
    reward = train._reward_config(config, Path("/tmp/out"))
    assert type(reward) is train.config_class("reward") and reward.output_dir == "/tmp/out/reward"
    assert reward.trainer == {"learning_rate": 1e-3, "save_steps": 5, "max_steps": 7, "max_length": 64}
    peft = train.model_config(reward, "reward")
    assert (peft.use_peft, peft.lora_r, peft.lora_task_type) == (True, 4, "SEQ_CLS")
    assert train.model_config(config, "grpo").lora_task_type == "CAUSAL_LM"
    with pytest.raises(ConfigError, match="reward_max_steps and reward_trainer.max_steps both set"):
        _config("grpo", reward_max_steps=7, reward_trainer={"max_steps": 3})


@pytest.mark.unit
def test_model_section_feeds_trls_peft_helper():
    from trl import get_peft_config

    peft = get_peft_config(train.model_config(_config("dpo", model={"use_peft": True, "use_dora": True}), "dpo"))
    assert (peft.r, peft.lora_alpha, peft.target_modules, peft.task_type, peft.use_dora) == (
        8, 16, "all-linear", "CAUSAL_LM", True)  # house r/alpha/targets, the recipe's DoRA
    reward = train.model_config(_config("reward", model={"use_peft": True}), "reward")
    assert get_peft_config(reward).task_type == "SEQ_CLS"
    assert get_peft_config(train.model_config(_config("sft"), "sft")) is None
    with pytest.raises(ConfigError, match="lora_task_type must be SEQ_CLS"):
        _config("reward", model={"use_peft": True, "lora_task_type": "CAUSAL_LM"})
    with pytest.raises(ConfigError, match="8 bit and 4 bit"):
        _config("sft", model={"use_peft": True, "load_in_4bit": True, "load_in_8bit": True})


def test_trls_own_checks_run_before_the_data_is_read(workdir, tmp_path, capsys):
    """TRL refuses contradictory settings when the trainer's config is built, which is before
    train_data is read: preference rows given to sft would otherwise be exit 1 (missing completion)."""
    code = main(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_preference"],
                 "--output-dir", str(tmp_path / "o"), "--set", "trainer.load_best_model_at_end=true", *QUIET])
    assert code == 2
    err = capsys.readouterr().err
    assert "trl.SFTConfig refused the trainer settings" in err and "load_best_model_at_end" in err
    assert "completion" not in err


@pytest.mark.unit
def test_a_recipe_written_before_the_trainer_section_says_where_each_key_went(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("max_steps: 10\nlora: true\nlearning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError) as error:
        load(train.config_class("dpo"), recipe, {"base_model": "m", "train_data": "d"})
    message = str(error.value)
    for old, new in (("max_steps", "trainer.max_steps"), ("lora", "model.use_peft"),
                     ("learning_rate", "trainer.learning_rate")):
        assert f"{old} is now {new}" in message


# --------------------------------------------------------------------------- progress a person can follow

PROGRESS_LINE = (r"train (?P<method>\w+): step (?P<step>\d+)/(?P<total>\d+) \((?P<percent>\d+)%\), loss \d+\.\d{3}, "
                 r"(?P<rate>[\d,]+) tokens/s, [\d.]+ s elapsed, ~(?P<left>[\d.]+) s left")


def test_the_train_log_shows_step_of_total_tokens_per_second_and_time_left(workdir, tmp_path, capsys):
    """A real run: progress lines in the log (the first logging step and the last always), the same
    figures as MLflow metrics at each logging step, and no dict printed by transformers."""
    import re

    from llmops_tasks.core import tracking

    result_file = tmp_path / "result.json"
    code = main(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                 "--output-dir", str(tmp_path / "sft"), "--trainer", "max_steps=8", "--trainer", "logging_steps=2",
                 "--trainer", "save_steps=8", "--result-file", str(result_file), *QUIET])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    lines = [m.groupdict() for m in re.finditer(PROGRESS_LINE, captured.err)]
    assert lines, captured.err[-3000:]
    assert {line["method"] for line in lines} == {"sft"} and {line["total"] for line in lines} == {"8"}
    assert lines[0]["step"] == "2" and lines[-1]["step"] == "8" and lines[-1]["percent"] == "100"
    assert all(int(line["rate"].replace(",", "")) > 0 for line in lines)
    assert "train sft: 8 steps" in captured.err
    # stdout is the result alone: transformers' PrinterCallback printed {'loss': ...} dicts there
    assert json.loads(captured.out) == json.loads(result_file.read_text())
    assert "{'" not in captured.out and "{'" not in captured.err

    client = tracking.client()
    run_id = json.loads(result_file.read_text())["mlflow_run_id"]
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in ("progress", "tokens_per_second", "eta_seconds", "elapsed_seconds", "loss")}
    assert [step for step, _ in history["progress"]] == [2, 4, 6, 8]  # each logging step, as the loss
    assert [step for step, _ in history["loss"]] == [2, 4, 6, 8]
    assert [value for _, value in history["progress"]] == [0.25, 0.5, 0.75, 1.0]
    assert all(value > 0 for _, value in history["tokens_per_second"])
    assert history["eta_seconds"][-1] == (8, 0.0) and history["eta_seconds"][0][1] > 0


@pytest.mark.unit
def test_progress_lines_come_at_a_steady_rate(monkeypatch, caplog):
    """Fast steps logged each step: one line per PROGRESS_MIN_GAP seconds, the first and the last.
    Slow steps with few logging steps: a line at least every PROGRESS_EVERY seconds anyway."""
    import time
    from types import SimpleNamespace

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def run(steps: int, seconds_per_step: float, logging_steps: int, tokens: bool = True) -> list[str]:
        args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1)
        state = SimpleNamespace(global_step=0, max_steps=steps, num_input_tokens_seen=0, is_world_process_zero=True)
        progress = train._progress_callback("dpo")
        caplog.clear()
        with caplog.at_level("INFO", logger="llmops_tasks.train"):
            progress.on_train_begin(args, state, None)
            for step in range(1, steps + 1):
                clock[0] += seconds_per_step
                state.global_step = step
                progress.on_step_end(args, state, None)
                if step % logging_steps == 0:
                    logs = {"loss": 1.0 / step, **({"num_tokens": 100.0 * step} if tokens else {})}
                    progress.on_log(args, state, None, logs=logs)
            progress.on_train_end(args, state, None)
        return [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]

    fast = run(100, 0.5, 1)  # 50 s in all
    assert fast[0].startswith("train dpo: step 1/100 (1%), loss 1.000, 200 tokens/s, 0.5 s elapsed, ~49.5 s left")
    assert fast[-1].startswith("train dpo: step 100/100 (100%)")
    assert len(fast) == 1 + 100 // int(train.PROGRESS_MIN_GAP / 0.5)  # every 10th step, the first and the last
    slow = run(6, 40.0, 5)  # a logging step every 200 s
    assert [line.split(",")[0] for line in slow] == [f"train dpo: step {n}/6 ({int(100 * n / 6)}%)" for n in range(1, 7)]
    assert slow[0].startswith("train dpo: step 1/6 (16%), loss -")  # nothing logged yet
    assert "~3 min 20 s left" in slow[0] and "1 min 20 s elapsed" in slow[1]
    untold = run(10, 1.0, 5, tokens=False)  # no token count (ORPO): samples from the batch sizes
    assert untold[0] == "train dpo: step 5/10 (50%), loss 0.200, 2.0 samples/s, 5.0 s elapsed, ~5.0 s left"
