"""The evaluate step on two real tiny causal LMs: one random, one trained to answer the eval prompts."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llmops_tasks import cli, data, samples  # noqa: E402
from llmops_tasks import evaluate as evaluate_step  # noqa: E402
from llmops_tasks.config import ConfigError  # noqa: E402
from llmops_tasks.errors import StepFailed  # noqa: E402
from llmops_tasks.evaluate import EvaluateConfig, paired_bootstrap, read_eval_set, run  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "llmops_tasks" / "recipes" / "evaluate_tiny.yaml"
EVAL_ROWS = 16


def build_model(out_dir: Path) -> Path:
    """The project's own tiny model builder when present, else the same recipe inline."""
    try:
        from llmops_tasks.bootstrap import build_tiny_model
    except ImportError:  # the bootstrap module is written in parallel; keep this test independent of it
        build_tiny_model = None
    if build_tiny_model is not None:
        return build_tiny_model(out_dir, samples.corpus_text())
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(samples.corpus_text(), trainer=trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(special.values()), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **special)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def train_to_answer(model_dir: Path, out_dir: Path, pairs: list[tuple[str, str]], steps: int = 60) -> Path:
    """A plain full-batch torch loop on prompt + answer until the model recites the answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sequences = [tokenizer(f"{prompt} {answer}")["input_ids"] + [tokenizer.eos_token_id] for prompt, answer in pairs]
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        input_ids[i, :len(seq)] = labels[i, :len(seq)] = torch.tensor(seq)
        attention[i, :len(seq)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=input_ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two intra-op threads on a busy 2-core runner thrash (20x slower here); one is steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    pairs = [(r["prompt"], r["chosen"]) for r in samples.preference_rows()[:EVAL_ROWS]]
    random_dir = build_model(root / "random")
    trained_dir = train_to_answer(random_dir, root / "trained", pairs)
    eval_path = root / "eval.jsonl"
    data.write_jsonl(str(eval_path), [{"prompt": p, "reference": a, "id": f"e{i}"} for i, (p, a) in enumerate(pairs)])
    return {"random": str(random_dir), "trained": str(trained_dir), "eval": str(eval_path)}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.mark.integration
def test_trained_model_beats_random_and_champion_answers_are_cached(tiny, home, tmp_path, monkeypatch):
    calls = []
    real_generate = evaluate_step.generate

    def counting_generate(model_ref, prompts, **kwargs):
        calls.append(model_ref)
        return real_generate(model_ref, prompts, **kwargs)

    monkeypatch.setattr(evaluate_step, "generate", counting_generate)
    config = EvaluateConfig(
        candidate_model=tiny["trained"], champion_model=tiny["random"], eval_data=tiny["eval"],
        out_dir=str(tmp_path / "first"), bootstrap_samples=300,
    )
    first = run(config)
    assert calls == [tiny["trained"], tiny["random"]]
    assert first["champion_cached"] is False
    assert first["candidate"]["bleu"] > first["champion"]["bleu"] + 0.3
    assert first["candidate"]["rougeL"] > first["champion"]["rougeL"]
    assert first["ci"]["bleu"][0] > 0 and first["ci"]["rougeL"][0] > 0

    metrics = json.loads(Path(first["metrics"]).read_text())
    assert set(metrics) >= {"candidate", "champion", "delta", "ci", "champion_label", "n"}
    assert metrics["n"] == EVAL_ROWS and metrics["champion_label"] == tiny["random"]
    assert set(metrics["candidate"]) == {"bleu", "rouge1", "rouge2", "rougeL", "gen_len"}
    assert metrics["delta"]["bleu"] == metrics["candidate"]["bleu"] - metrics["champion"]["bleu"]
    lo, hi = metrics["ci"]["rougeL"]
    assert lo <= metrics["delta"]["rougeL"] <= hi

    # The written predictions are what was scored: recompute BLEU straight from the files.
    import sacrebleu

    rows = data.read_records(first["candidate_predictions"])
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in data.read_records(tiny["eval"])]
    assert all(set(r) >= {"prompt", "reference", "prediction"} for r in rows)
    direct = sacrebleu.corpus_bleu([r["prediction"] for r in rows], [[r["reference"] for r in rows]])
    assert metrics["candidate"]["bleu"] == direct.score / 100

    cache = Path(first["champion_cache"])
    assert cache.parent == home / "cache" / "predictions"
    stamp = cache.stat().st_mtime_ns
    second = run(EvaluateConfig(
        candidate_model=tiny["trained"], champion_model=tiny["random"], eval_data=tiny["eval"],
        out_dir=str(tmp_path / "second"), bootstrap_samples=300,
    ))
    assert calls == [tiny["trained"], tiny["random"], tiny["trained"]]  # the champion was not run again
    assert second["champion_cached"] is True and second["champion_cache"] == str(cache)
    assert cache.stat().st_mtime_ns == stamp
    assert second["candidate"] == first["candidate"] and second["champion"] == first["champion"]  # deterministic
    assert second["ci"] == first["ci"]
    assert data.read_records(second["champion_predictions"]) == data.read_records(first["champion_predictions"])

    # Other generation settings are other answers: no cache hit.
    third = run(EvaluateConfig(
        candidate_model=tiny["trained"], champion_model=tiny["random"], eval_data=tiny["eval"],
        out_dir=str(tmp_path / "third"), max_new_tokens=8, max_samples=4, bootstrap_samples=0,
    ))
    assert third["champion_cached"] is False and third["n"] == 4 and third["ci"] == {}
    assert third["candidate"]["gen_len"] <= 8


@pytest.mark.integration
def test_cli_evaluate_then_gate(tiny, home, tmp_path, capsys):
    common = ["--eval-data", tiny["eval"], "--bootstrap-samples", "200", "--max-samples", "8"]
    assert cli.main(["evaluate", "--config", str(RECIPE), "--candidate-model", tiny["trained"],
                     "--champion-model", tiny["random"], "--out-dir", str(tmp_path / "good"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delta"]["bleu"] > 0
    assert cli.main(["gate", "--metrics", result["metrics"], "--out-dir", str(tmp_path / "gate-good")]) == 0

    # The other way round the random model regresses against the trained champion: rejected, exit 1.
    assert cli.main(["evaluate", "--candidate-model", tiny["random"], "--champion-model", tiny["trained"],
                     "--out-dir", str(tmp_path / "bad"), *common]) == 0
    capsys.readouterr()
    assert cli.main(["gate", "--metrics", str(tmp_path / "bad" / "metrics.json"),
                     "--out-dir", str(tmp_path / "gate-bad")]) == 1
    assert "rejected: max_regression (bleu)" in capsys.readouterr().err


@pytest.mark.integration
def test_production_champion_falls_back_to_the_base_model(tiny, home, tmp_path):
    """'production' asks the real MLflow registry (SQLite under the home); with none, the base model answers."""
    pytest.importorskip("mlflow")
    result = run(EvaluateConfig(
        candidate_model=tiny["trained"], champion_model="production", base_model=tiny["random"],
        eval_data=tiny["eval"], out_dir=str(tmp_path / "out"), max_samples=4, max_new_tokens=8, bootstrap_samples=0,
    ))
    metrics = json.loads(Path(result["metrics"]).read_text())
    assert result["champion_label"] == "base" == metrics["champion_label"]
    assert metrics["champion_model"] == tiny["random"] and metrics["champion_version"] == ""


@pytest.mark.unit
def test_config_defaults_and_validation(home):
    config = EvaluateConfig()
    assert config.candidate_model.endswith("/adhoc/latest/train/model")
    assert config.eval_data.endswith("/adhoc/latest/split/eval.jsonl")
    assert config.out_dir.endswith("/adhoc/latest/evaluate")
    assert config.base_model == str(home / "models" / "tiny-base")
    from llmops_tasks import config as config_module

    recipe = config_module.load(EvaluateConfig, RECIPE)
    assert (recipe.champion_model, recipe.max_new_tokens, recipe.bootstrap_samples) == ("production", 32, 1000)
    for bad in ({"batch_size": 0}, {"max_new_tokens": 0}, {"max_samples": -1}, {"bootstrap_samples": -5}):
        with pytest.raises(ConfigError):
            EvaluateConfig(**bad)
    with pytest.raises(ConfigError, match="unknown setting"):
        config_module.load(EvaluateConfig, None, {"max_tokens": 3})
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["evaluate", "--help"])
    assert help_exit.value.code == 0


@pytest.mark.unit
def test_bad_eval_data_and_missing_models_fail_the_step(home, tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"prompt": "a?", "reference": "b."}) + "\n" + json.dumps({"prompt": "c?"}) + "\n")
    with pytest.raises(StepFailed, match="rows 2 lack a prompt or a reference"):
        read_eval_set(str(path))
    assert read_eval_set(str(path), max_samples=1) == [{"prompt": "a?", "reference": "b."}]
    with pytest.raises(StepFailed, match="file not found"):
        read_eval_set(str(tmp_path / "missing.jsonl"))
    with pytest.raises(StepFailed, match="no model folder"):
        run(EvaluateConfig(candidate_model=str(tmp_path / "no-model"), champion_model=str(tmp_path / "no-model"),
                           eval_data=str(path), max_samples=1))


@pytest.mark.unit
def test_paired_bootstrap_intervals():
    refs = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(30)]
    same = paired_bootstrap(refs, refs, refs, [1.0] * 30, [1.0] * 30, samples=200, seed=0)
    assert same == {"bleu": [0.0, 0.0], "rougeL": [0.0, 0.0]}
    worse = [r.replace("lazy", "sleepy") if i % 2 else "a fox" for i, r in enumerate(refs)]
    better = paired_bootstrap(refs, refs, worse, [1.0] * 30, [0.5] * 30, samples=200, seed=0)
    assert 0 < better["bleu"][0] <= better["bleu"][1] <= 1
    assert better["rougeL"] == [0.5, 0.5]
    assert paired_bootstrap(refs, refs, worse, [1.0] * 30, [0.5] * 30, samples=200, seed=0) == better  # seeded
