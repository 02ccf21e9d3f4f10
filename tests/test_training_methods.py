"""Every training method trains the tiny local model on CPU for a few steps, through the CLI.

Real TRL, real PEFT, real MLflow (SQLite in a temp folder). Nothing here needs a GPU except the
``gpu``-marked tests at the end, which CI skips; the multi-process launch is otherwise checked by
the command it builds, and QLoRA by the error it gives without CUDA.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from llmops_tasks import split, train
from llmops_tasks.cli import main
from llmops_tasks.core import data
from llmops_tasks.core.config import ConfigError, load
from llmops_tasks.local import bootstrap, samples

pytestmark = [pytest.mark.integration]

# the smallest settings that still exercise each trainer end to end
FAST = ["--trainer", "max_steps=2", "--trainer", "save_steps=2", "--trainer", "logging_steps=1",
        "--trainer", "per_device_train_batch_size=4", "--system-metrics-interval", "0", "--log-model", "false"]
SHORT = ["--trainer", "max_length=64"]  # the methods whose TRL config has a max_length
# GRPOConfig/RLOOConfig have no max_length: the reward model trained first has it
RL_FAST = ["--trainer", "num_generations=2", "--trainer", "max_completion_length=8", "--reward-max-steps", "1",
           "--reward-trainer", "max_length=64"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
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


def run_cli(args: list[str], capsys) -> dict:
    result_file = Path(tempfile.mkdtemp()) / "result.json"
    code = main([*args, "--result-file", str(result_file)])
    captured = capsys.readouterr()
    assert code == 0, (captured.out + captured.err)[-3000:]
    return json.loads(result_file.read_text())


def preference_args(workdir, out: Path) -> list[str]:
    return ["--base-model", workdir["base"], "--train-data", workdir["train_preference"], "--output-dir", str(out)]


def test_rlhf_reward_model_then_grpo_and_rloo_against_it(workdir, tmp_path, capsys):
    """RLHF: ``grpo`` with no reward model trains one from the pairs first (in the same step), then
    ``rloo`` is given that reward model by path and trains against it without training another."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmops_tasks.core import tracking

    grpo = run_cli(["train", "grpo", *preference_args(workdir, tmp_path / "grpo"), *FAST, *RL_FAST], capsys)
    assert grpo["method"] == "grpo" and grpo["global_step"] == 2
    reward_dir = str(tmp_path / "grpo" / "reward" / "model")
    assert grpo["reward_model"] == reward_dir and grpo["reward_result"]["global_step"] == 1  # reward_max_steps
    runs = tracking.client().search_runs([tracking.experiment_id()])
    assert sorted(r.info.run_name for r in runs) == ["train-grpo", "train-reward"]

    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir)
    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    assert reward.config.num_labels == 1
    scores = reward(**tokenizer(["a question and its answer", "another"], return_tensors="pt", padding=True)).logits
    assert tuple(scores.shape) == (2, 1)  # one scalar reward per sequence

    rloo = run_cli(["train", "rloo", *preference_args(workdir, tmp_path / "rloo"), *FAST, *RL_FAST,
                    "--reward-model", reward_dir], capsys)
    assert rloo["method"] == "rloo" and rloo["global_step"] == 2
    assert rloo["reward_model"] == reward_dir and "reward_result" not in rloo
    assert not (tmp_path / "rloo" / "reward").exists()
    assert (Path(rloo["model_dir"]) / "config.json").is_file()


@pytest.mark.parametrize("method", ["kto", "orpo"])
def test_unpaired_and_reference_free_methods(workdir, tmp_path, capsys, method):
    result = run_cli(["train", method, *preference_args(workdir, tmp_path / method), *FAST, *SHORT], capsys)
    assert result["method"] == method and result["global_step"] == 2
    history = json.loads((tmp_path / method / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert any("loss" in entry for entry in history["log_history"])


def test_dpo_combines_loss_variants_with_weights(workdir, tmp_path, capsys):
    result = run_cli(["train", "dpo", *preference_args(workdir, tmp_path / "dpo"), *FAST, *SHORT,
                      "--set", "trainer.loss_type=sigmoid,sft", "--set", "trainer.loss_weights=1.0,0.5"], capsys)
    assert result["global_step"] == 2
    from llmops_tasks.core import tracking

    params = tracking.client().get_run(result["mlflow_run_id"]).data.params
    assert params["loss_type"] == "['sigmoid', 'sft']" and params["loss_weights"] == "[1.0, 0.5]"


def test_train_run_carries_system_metrics_and_the_final_model(workdir, tmp_path, capsys):
    """MLflow: batched training metrics, system metrics sampled during training, the LoRA adapter
    logged as a loadable model with the base model's name and explicit pip requirements."""
    import mlflow

    from llmops_tasks.core import tracking

    result = run_cli(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                      "--output-dir", str(tmp_path / "sft"), "--trainer", "max_steps=6", "--trainer", "save_steps=3",
                      "--trainer", "logging_steps=1", "--trainer", "per_device_train_batch_size=4", *SHORT,
                      "--system-metrics-interval", "0.5", "--model", "use_peft=true"], capsys)
    mlflow_client = tracking.client()
    run = mlflow_client.get_run(result["mlflow_run_id"])
    assert len(mlflow_client.get_metric_history(run.info.run_id, "loss")) == 6
    assert any(k.startswith("system/cpu_utilization_percentage") for k in run.data.metrics), run.data.metrics.keys()
    assert run.data.tags["llmops.base_model"] == workdir["base"]
    model_dir = Path(mlflow.artifacts.download_artifacts(result["mlflow_model_uri"], dst_path=str(tmp_path / "dl")))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert any(r.startswith("transformers==") for r in requirements) and "peft" in requirements
    assert (model_dir / "artifacts" / "adapter" / "adapter_config.json").is_file()  # the adapter, not full weights
    assert not list(model_dir.rglob("model*.safetensors"))
    assert "base_model" in (model_dir / "MLmodel").read_text()


# --------------------------------------------------------------------------------------------
# settings that need hardware this machine does not have


@pytest.mark.unit
def test_launch_command_runs_the_same_step_under_accelerate():
    command = train.launch_command("/ckpt/train/launch_config.yaml", "dpo", 4)
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[command.index("--module") + 1:] == [
        "llmops_tasks.cli", "train", "dpo", "--config", "/ckpt/train/launch_config.yaml"]


def test_more_processes_than_gpus_is_a_configuration_error(workdir, tmp_path):
    config = load(train.TrainConfig, None, {"base_model": workdir["base"], "train_data": workdir["train_sft"],
                                            "output_dir": str(tmp_path / "out"), "num_processes": 2})
    with pytest.raises(ConfigError, match="num_processes=2 runs one process per GPU, but this machine has 0"):
        train.train(config, "sft")
    assert not (tmp_path / "out" / "result.json").exists()


def test_qlora_without_cuda_is_a_configuration_error(workdir, tmp_path, capsys):
    code = main(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                 "--output-dir", str(tmp_path / "q"), "--model", "use_peft=true", "--model", "load_in_4bit=true"])
    assert code == 2
    assert "load_in_4bit (QLoRA) needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # refused before anything was written


@pytest.mark.unit
@pytest.mark.parametrize(("method", "values", "message"), [
    ("dpo", {"trainer": {"loss_type": "sigmoid,bogus"}}, "unknown loss_type bogus"),
    ("dpo", {"trainer": {"loss_type": "sigmoid,ipo", "loss_weights": "1.0"}},
     "loss_weights has 1 values for 2 loss_type"),
    ("sft", {"model": {"load_in_4bit": True}}, "set model.use_peft: true as well"),
    ("sft", {"num_processes": 0}, "num_processes must be a positive integer"),
    ("grpo", {"trainer": {"num_generations": 0}}, "num_generations must be a positive integer"),
])
def test_invalid_method_settings_are_named(method, values, message):
    with pytest.raises(ConfigError, match=message):
        load(train.config_class(method), None, {"base_model": "m", "train_data": "d", **values})


@pytest.mark.gpu
def test_two_gpu_launch_trains_sft(workdir, tmp_path, capsys):
    """Needs 2 CUDA GPUs: the step re-runs itself under accelerate launch, rank 0 reports."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    result = run_cli(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                      "--output-dir", str(tmp_path / "ddp"), "--trainer", "max_steps=4", "--num-processes", "2"],
                     capsys)
    assert result["global_step"] == 4


@pytest.mark.gpu
def test_qlora_trains_on_cuda(workdir, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    result = run_cli(["train", "sft", "--base-model", workdir["base"], "--train-data", workdir["train_sft"],
                      "--output-dir", str(tmp_path / "qlora"), "--trainer", "max_steps=2", "--model", "use_peft=true",
                      "--model", "load_in_4bit=true"], capsys)
    assert result["global_step"] == 2
