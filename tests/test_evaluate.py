"""The evaluate step on two real tiny causal LMs: one random, one trained to answer the eval prompts.

Everything is real (transformers generation, the shipped metric modules, MLflow on SQLite under a
temporary home); only the GPU is absent, so generation runs on the CPU.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from pathlib import Path

import pytest

from llmops_tasks import cli
from llmops_tasks.core import data
from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.evaluate import (
    EvaluateConfig,
    answer_logprobs,
    likelihood_scores,
    paired_bootstrap,
    read_eval_set,
    run,
)
from llmops_tasks.local import samples

RECIPE = Path(__file__).resolve().parents[1] / "llmops_tasks" / "recipes" / "evaluate_tiny.yaml"
EVAL_ROWS = 16


def build_model(out_dir: Path) -> Path:
    """The project's own tiny model builder when present, else the same recipe inline."""
    try:
        from llmops_tasks.local.bootstrap import build_tiny_model
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
    rows = samples.preference_rows()[:EVAL_ROWS]
    pairs = [(r["prompt"], r["chosen"]) for r in rows]
    random_dir = build_model(root / "random")
    trained_dir = train_to_answer(random_dir, root / "trained", pairs)
    eval_path = root / "eval.jsonl"
    data.write_jsonl(str(eval_path), [
        {"prompt": r["prompt"], "reference": r["chosen"], "chosen": r["chosen"], "rejected": r["rejected"], "id": f"e{i}"}
        for i, r in enumerate(rows)
    ])
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
    from llmops_tasks.serving import generation

    real_generate = generation.generate

    def counting_generate(model_ref, prompts, **kwargs):
        calls.append(model_ref)
        return real_generate(model_ref, prompts, **kwargs)

    monkeypatch.setattr(generation, "generate", counting_generate)
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
    assert set(metrics) >= {"candidate", "champion", "delta", "ci", "intervals", "champion_label", "n", "report"}
    assert metrics["n"] == EVAL_ROWS and metrics["champion_label"] == tiny["random"]
    gated = {"bleu", "rouge1", "rouge2", "rougeL", "preference_accuracy", "reward_margin", "perplexity"}
    assert set(metrics["candidate"]) == gated | {"gen_len"}
    assert metrics["delta"]["bleu"] == metrics["candidate"]["bleu"] - metrics["champion"]["bleu"]
    # Every gated metric has an interval of the difference and of each model's own score.
    assert set(metrics["ci"]) == gated
    assert set(metrics["intervals"]["candidate"]) == set(metrics["intervals"]["champion"]) == gated
    for metric in gated:
        lo, hi = metrics["ci"][metric]
        assert lo <= metrics["delta"][metric] + 1e-9 and metrics["delta"][metric] - 1e-9 <= hi, metric
    # The model trained on the chosen answers prefers them and finds the references far less surprising.
    assert metrics["candidate"]["preference_accuracy"] > metrics["champion"]["preference_accuracy"]
    assert metrics["candidate"]["preference_accuracy"] >= 0.9
    assert metrics["candidate"]["reward_margin"] > 0 > metrics["delta"]["perplexity"]
    assert metrics["ci"]["perplexity"][1] < 0 < metrics["ci"]["preference_accuracy"][0]
    page = Path(first["report"]).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "Preference accuracy" in page

    # The written predictions are what was scored: recompute BLEU straight from the files.
    import sacrebleu

    rows = data.read_records(first["candidate_predictions"])
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in data.read_records(tiny["eval"])]
    assert all(set(r) >= {"prompt", "reference", "prediction", "chosen_logp", "rejected_logp", "rougeL"} for r in rows)
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

    # Other generation settings are other answers: no cache hit. With the random (base) model as the
    # DPO reference, the base model's own reward is 0 on every pair; the trained one prefers chosen.
    third = run(EvaluateConfig(
        candidate_model=tiny["trained"], champion_model=tiny["random"], eval_data=tiny["eval"],
        out_dir=str(tmp_path / "third"), max_new_tokens=8, max_samples=6, bootstrap_samples=0,
        reference_model=tiny["random"], beta=0.5, report=False,
    ))
    assert third["champion_cached"] is False and third["n"] == 6 and third["ci"] == {}
    assert third["candidate"]["gen_len"] <= 8
    assert third["champion"]["reward_margin"] == 0.0 and third["champion"]["preference_accuracy"] == 0.0
    assert third["candidate"]["reward_margin"] > 0 and third["candidate"]["preference_accuracy"] >= 0.8
    dpo_metrics = json.loads(Path(third["metrics"]).read_text())
    assert dpo_metrics["reward"].startswith("beta*(log pi - log pi_ref), beta=0.5") and "report" not in dpo_metrics
    summed, _ = likelihood_scores(data.read_records(third["candidate_predictions"]), None, 0.5)
    assert summed["reward_margin"] != third["candidate"]["reward_margin"]  # without a reference: log pi alone


@pytest.mark.integration
def test_answer_logprobs_equal_the_models_own_loss(tiny):
    """Teacher-forced log-probabilities match -loss * tokens from the model's forward with labels."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt, answer = samples.preference_rows()[0]["prompt"], samples.preference_rows()[0]["chosen"]
    other = samples.preference_rows()[1]
    tokenizer = AutoTokenizer.from_pretrained(tiny["trained"])
    model = AutoModelForCausalLM.from_pretrained(tiny["trained"])
    prompt_len = len(tokenizer(prompt)["input_ids"])
    ids = tokenizer(prompt + answer)["input_ids"] + [tokenizer.eos_token_id]
    labels = [-100] * prompt_len + ids[prompt_len:]
    with torch.inference_mode():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    # Batched with a longer and a shorter pair, so right padding is exercised too.
    scored = answer_logprobs(tiny["trained"], [(prompt, answer), (other["prompt"], other["rejected"]),
                                               (other["prompt"], other["chosen"] * 2)], batch_size=3)
    logp, tokens = scored[0]
    assert tokens == len(ids) - prompt_len
    assert logp == pytest.approx(-loss * tokens, rel=1e-4)
    alone = answer_logprobs(tiny["trained"], [(other["prompt"], other["rejected"])], batch_size=1)
    assert alone[0][1] == scored[1][1] and alone[0][0] == pytest.approx(scored[1][0], rel=1e-4, abs=1e-4)


@pytest.mark.integration
def test_cli_evaluate_then_gate(tiny, home, tmp_path, capsys):
    common = ["--eval-data", tiny["eval"], "--bootstrap-samples", "200", "--max-samples", "8"]
    assert cli.main(["evaluate", "--config", str(RECIPE), "--candidate-model", tiny["trained"],
                     "--champion-model", tiny["random"], "--out-dir", str(tmp_path / "good"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delta"]["bleu"] > 0
    assert cli.main(["gate", "--metrics", result["metrics"], "--out-dir", str(tmp_path / "gate-good")]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["passed"] is True and decision["failed_rules"] == []
    assert all(r["passed"] for r in decision["rules"])
    # the 7 metric rules, then the answer rules (both prediction files exist): 4 absolute, 4 vs the champion, leaks
    assert len(decision["rules"]) == 7 + 4 + 4 + 1
    assert {r["rule"] for r in decision["rules"]} >= {"min_bleu", "max_answer_rate_rise", "no_new_leaks"}
    page = Path(decision["report_path"]).read_text()
    assert "PASSED" in page and "Where the candidate gained most" in page

    # The other way round the random model regresses against the trained champion: rejected, exit 1.
    assert cli.main(["evaluate", "--candidate-model", tiny["random"], "--champion-model", tiny["trained"],
                     "--out-dir", str(tmp_path / "bad"), *common]) == 0
    capsys.readouterr()
    assert cli.main(["gate", "--metrics", str(tmp_path / "bad" / "metrics.json"),
                     "--out-dir", str(tmp_path / "gate-bad")]) == 1
    assert "rejected: max_regression (bleu)" in capsys.readouterr().err
    rejected = json.loads((tmp_path / "gate-bad" / "decision.json").read_text())
    assert rejected["passed"] is False and "max_regression(bleu)" in rejected["failed_rules"]
    assert "REJECTED" in Path(rejected["report_path"]).read_text()


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
    assert config.base_model == "" and config.base() == str(home / "models" / "tiny-base")
    from llmops_tasks.core import config as config_module

    recipe = config_module.load(EvaluateConfig, RECIPE)
    assert (recipe.champion_model, recipe.max_new_tokens, recipe.bootstrap_samples) == ("production", 32, 1000)
    for bad in ({"batch_size": 0}, {"max_new_tokens": 0}, {"max_samples": -1}, {"bootstrap_samples": -5}, {"beta": 0}):
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
    half = tmp_path / "half.jsonl"
    half.write_text(json.dumps({"prompt": "a?", "reference": "b.", "chosen": "b.", "rejected": "c."}) + "\n"
                    + json.dumps({"prompt": "d?", "reference": "e.", "chosen": "e."}) + "\n")
    with pytest.raises(StepFailed, match="rows 2 lack chosen or rejected"):
        read_eval_set(str(half))
    with pytest.raises(StepFailed, match="file not found"):
        read_eval_set(str(tmp_path / "missing.jsonl"))
    with pytest.raises(StepFailed, match="no model folder"):
        run(EvaluateConfig(candidate_model=str(tmp_path / "no-model"), champion_model=str(tmp_path / "no-model"),
                           eval_data=str(path), max_samples=1))


def _per_example(rouge: float, correct: float, margin: float, nll: float, n: int = 30) -> dict[str, list[float]]:
    return {"rouge1": [rouge] * n, "rouge2": [rouge] * n, "rougeL": [rouge] * n, "preference_accuracy": [correct] * n,
            "reward_margin": [margin] * n, "nll": [nll] * n, "tokens": [10.0] * n}


@pytest.mark.unit
def test_paired_bootstrap_intervals():
    refs = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(30)]
    same = paired_bootstrap(refs, (refs, _per_example(1.0, 1.0, 2.0, 5.0)), (refs, _per_example(1.0, 1.0, 2.0, 5.0)),
                            samples=200, seed=0)
    assert set(same["delta"]) == {"bleu", "rouge1", "rouge2", "rougeL", "preference_accuracy", "reward_margin",
                                  "perplexity"}
    assert all(interval == [0.0, 0.0] for interval in same["delta"].values())
    assert same["candidate"]["bleu"] == pytest.approx([1.0, 1.0])

    worse = [r.replace("lazy", "sleepy") if i % 2 else "a fox" for i, r in enumerate(refs)]
    better = paired_bootstrap(refs, (refs, _per_example(1.0, 1.0, 2.0, 5.0)), (worse, _per_example(0.5, 0.0, -1.0, 20.0)),
                              samples=200, seed=0)
    assert 0 < better["delta"]["bleu"][0] <= better["delta"]["bleu"][1] <= 1
    assert better["delta"]["rougeL"] == pytest.approx([0.5, 0.5])
    assert better["delta"]["preference_accuracy"] == pytest.approx([1.0, 1.0])
    assert better["delta"]["reward_margin"] == pytest.approx([3.0, 3.0])
    import math

    assert better["delta"]["perplexity"] == pytest.approx([math.exp(0.5) - math.exp(2.0)] * 2)
    assert better["champion"]["bleu"][0] <= better["champion"]["bleu"][1] < better["candidate"]["bleu"][0]
    again = paired_bootstrap(refs, (refs, _per_example(1.0, 1.0, 2.0, 5.0)), (worse, _per_example(0.5, 0.0, -1.0, 20.0)),
                             samples=200, seed=0)
    assert again == better  # seeded

    # Without chosen/rejected or reference log-probabilities, only the text metrics get intervals.
    text_only = {k: v for k, v in _per_example(1.0, 1.0, 2.0, 5.0).items() if k.startswith("rouge")}
    assert set(paired_bootstrap(refs, (refs, text_only), (worse, text_only), samples=20, seed=0)["delta"]) == {
        "bleu", "rouge1", "rouge2", "rougeL",
    }


@pytest.mark.unit
def test_bootstrap_interval_covers_a_known_difference():
    """Mixed per-example differences: the interval brackets the observed mean and narrows with more examples."""
    import random

    rng = random.Random(1)
    refs = [f"answer number {i} about the printer" for i in range(200)]

    def rouge(n):
        return {"rouge1": [rng.random() for _ in range(n)], "rouge2": [0.0] * n, "rougeL": [rng.random() for _ in range(n)]}

    small_a, small_b = rouge(40), rouge(40)
    big_a, big_b = rouge(200), rouge(200)
    small = paired_bootstrap(refs[:40], (refs[:40], small_a), (refs[:40], small_b), samples=400, seed=0)["delta"]
    big = paired_bootstrap(refs, (refs, big_a), (refs, big_b), samples=400, seed=0)["delta"]
    observed = (sum(small_a["rougeL"]) - sum(small_b["rougeL"])) / 40
    assert small["rougeL"][0] < observed < small["rougeL"][1]
    assert big["rougeL"][1] - big["rougeL"][0] < small["rougeL"][1] - small["rougeL"][0]


@pytest.mark.unit
def test_likelihood_scores_from_logprobs():
    rows = [
        {"reference_logp": -4.0, "reference_tokens": 2, "chosen_logp": -3.0, "rejected_logp": -5.0},
        {"reference_logp": -2.0, "reference_tokens": 2, "chosen_logp": -6.0, "rejected_logp": -4.0},
    ]
    values, per_example = likelihood_scores(rows, None, 0.1)
    import math

    assert values["perplexity"] == pytest.approx(math.exp(6.0 / 4))
    assert values["preference_accuracy"] == 0.5 and values["reward_margin"] == 0.0
    # DPO reward: beta * (policy - reference) log-probabilities.
    with_ref, _ = likelihood_scores(rows, {"chosen": [-4.0, -8.0], "rejected": [-4.0, -4.0]}, 0.5)
    assert with_ref["preference_accuracy"] == 1.0
    assert with_ref["reward_margin"] == pytest.approx((0.5 * (1.0 - (-1.0)) + 0.5 * (2.0 - 0.0)) / 2)
    assert per_example["preference_accuracy"] == [1.0, 0.0]
    assert likelihood_scores([{"reference_logp": -1.0, "reference_tokens": 1}], None, 0.1)[0].keys() == {"perplexity"}


# --- tokenization for the eval set's language, and metrics that cannot measure ---

CHINESE = [
    ("今天的天气怎么样？", "今天天气很好，我们去公园散步吧。"),
    ("报告什么时候交？", "请在周五之前完成这份报告。"),
    ("图书馆几点开门？", "图书馆每天早上九点开门。"),
    ("他早上做什么？", "他每天早上都看报纸。"),
]


@pytest.mark.unit
def test_tokenizer_settings_are_validated(home):
    config = EvaluateConfig(bleu_tokenizer=" zh ", rouge_tokenizer="char")
    assert (config.bleu_tokenizer, config.rouge_tokenizer) == ("zh", "char")
    assert (EvaluateConfig().bleu_tokenizer, EvaluateConfig().rouge_tokenizer) == ("", "")
    with pytest.raises(ConfigError, match="bleu_tokenizer must be empty .automatic. or one of 13a"):
        EvaluateConfig(bleu_tokenizer="moses")
    with pytest.raises(ConfigError, match="rouge_tokenizer must be empty"):
        EvaluateConfig(rouge_tokenizer="jieba")


@pytest.mark.unit
def test_bootstrap_uses_the_chosen_bleu_tokenizer():
    """The resampled BLEU is the corpus BLEU under the same tokenizer: on Chinese, 13a would read 0."""
    from llmops_tasks.evaluate import score
    from llmops_tasks.metrics import tokenization

    references = [answer for _, answer in CHINESE] * 5
    predictions = [r.replace("早上", "上午").replace("之前", "以前") for r in references]
    tokens = tokenization.choose(references)
    scores, per_example = score(predictions, references, tokens)
    intervals = paired_bootstrap(references, (predictions, per_example), (references, per_example),
                                 samples=200, seed=0, bleu_tokenizer=tokens.bleu)
    low, high = intervals["candidate"]["bleu"]
    assert 0.3 < low <= scores["bleu"] <= high < 1.0
    assert intervals["champion"]["bleu"] == pytest.approx([1.0, 1.0])
    assert intervals["delta"]["bleu"][1] < 0
    assert paired_bootstrap(references, (predictions, per_example), (references, per_example),
                            samples=20, seed=0)["candidate"]["bleu"] == [0.0, 0.0]  # what 13a made of it


@pytest.mark.unit
def test_generation_progress_is_logged_at_a_steady_rate(caplog, monkeypatch):
    from llmops_tasks import evaluate

    clock = iter([0.0, 1.0, 2.0, 15.0, 16.0, 17.0])
    monkeypatch.setattr(evaluate.time, "monotonic", lambda: next(clock))
    progress = evaluate.GenerationProgress("candidate", every=10.0)
    with caplog.at_level("INFO", logger="llmops_tasks.evaluate"):
        for done in (16, 32, 48, 64, 80):
            progress(done, 80)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "evaluate: candidate answers: 16/80 prompts (16.0 prompts/s, about 4 s left)",  # the first batch
        "evaluate: candidate answers: 48/80 prompts (3.2 prompts/s, about 10 s left)",  # 10 s later
        "evaluate: candidate answers: 80/80 prompts (4.7 prompts/s)",  # the end
    ]


@pytest.mark.unit
def test_report_says_how_the_text_was_tokenized_and_what_was_not_measured():
    from llmops_tasks import eval_report
    from llmops_tasks.metrics import tokenization

    tokens = tokenization.choose([answer for _, answer in CHINESE], rouge="default")
    scores = {"bleu": 0.42, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    metrics = {"candidate": scores, "champion": scores, "delta": {k: 0.0 for k in scores}, "n": 4,
               "tokenization": tokens.record(),
               "unmeasurable": tokenization.unmeasurable([answer for _, answer in CHINESE], tokens)}
    page = eval_report.render(metrics, [], [])
    assert "BLEU: sacrebleu tokenizer &#x27;zh&#x27;" in page and "references&#x27; script Han" in page
    assert "Not measured" in page and page.count("not measured: no reference has a token") == 2  # ROUGE-1, ROUGE-L
    assert "not measured: no reference has 2 tokens" in page
    assert "Tokenization: not recorded" in eval_report.render({"candidate": scores, "champion": scores}, [], [])


@pytest.mark.integration
def test_chinese_eval_set_is_scored_in_characters_and_a_blind_metric_fails_the_gate(tiny, home, tmp_path, capsys):
    """Two real tiny models on a Chinese eval set: metrics.json records the tokenization chosen; with
    ROUGE forced to rouge_score's default (which sees no Chinese), the gate rejects by name instead of
    passing two zeros."""
    eval_path = tmp_path / "eval_zh.jsonl"
    data.write_jsonl(str(eval_path), [{"prompt": p, "reference": r} for p, r in CHINESE])
    common = ["--eval-data", str(eval_path), "--candidate-model", tiny["trained"], "--champion-model", tiny["random"],
              "--bootstrap-samples", "50", "--max-new-tokens", "8"]
    assert cli.main(["evaluate", *common, "--out-dir", str(tmp_path / "auto")]) == 0
    log = capsys.readouterr().err  # the CLI's log lines
    assert "evaluate: candidate answers: 4/4 prompts" in log and "evaluate: champion answers: 4/4 prompts" in log
    assert "tokenization: BLEU: sacrebleu tokenizer 'zh'" in log
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert {k: metrics["tokenization"][k] for k in ("bleu", "rouge", "detected_script", "source")} == {
        "bleu": "zh", "rouge": "char", "detected_script": "Han", "source": "auto"}
    assert metrics["unmeasurable"] == {}
    assert "tokenizer &#x27;zh&#x27;" in Path(metrics["report"]).read_text()

    assert cli.main(["evaluate", *common, "--out-dir", str(tmp_path / "blind"), "--rouge-tokenizer", "default",
                     "--bleu-tokenizer", "char"]) == 0
    blind = json.loads((tmp_path / "blind" / "metrics.json").read_text())
    assert blind["tokenization"]["source"] == "recipe" and blind["tokenization"]["bleu"] == "char"
    assert set(blind["unmeasurable"]) == {"rouge1", "rouge2", "rougeL"}
    assert blind["candidate"]["rougeL"] == blind["champion"]["rougeL"] == 0.0
    assert "rougeL could not be measured" in capsys.readouterr().err
    assert cli.main(["gate", "--metrics", str(tmp_path / "blind" / "metrics.json"),
                     "--out-dir", str(tmp_path / "gate")]) == 1
    decision = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert {"max_regression(rougeL)", "min_rougeL(rougeL)", "min_improvement(rougeL)"} <= set(decision["failed_rules"])
    assert "rougeL could not be measured: no reference has a token under ROUGE tokenizer 'default'" in decision["reason"]
