"""``llmops evaluate``: generate on the eval set and score the candidate against the champion.

Both models answer every eval prompt with greedy decoding (deterministic, left padding, only the
new tokens decoded). The answers are scored with BLEU (sacrebleu) and ROUGE-1/2/L (rouge_score)
through the ``evaluate`` metric modules shipped in ``llmops_tasks/metrics/`` (no hub needed), and
a paired bootstrap over eval examples gives a 95% confidence interval of candidate - champion for
BLEU and ROUGE-L, which the gate reads.

BLEU is reported on a 0-1 scale (sacrebleu's score / 100) so that one regression tolerance means
the same on every metric. The champion's answers depend only on the champion, the eval set and the
generation settings, so they are cached under ``$LLMOPS_HOME/cache/predictions/`` and reused by
every later run against the same champion.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops_tasks import data, settings
from llmops_tasks.config import field, require
from llmops_tasks.errors import StepFailed
from llmops_tasks.settings import RunContext

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
SCORED = ("bleu", "rouge1", "rouge2", "rougeL")
BOOTSTRAPPED = ("bleu", "rougeL")
CI_LEVEL = 0.95


@dataclass
class EvaluateConfig:
    candidate_model: str = field(
        "", help="model to judge: a folder written by save_pretrained, or a hub id (default: the run's train/model)"
    )
    champion_model: str = field(
        "production",
        help="model to beat: a folder, a hub id, or 'production' (the registry's production version, "
        "else base_model)",
    )
    base_model: str = field(
        "", help="base model, the champion while nothing is in production (default: the embedded tiny model)"
    )
    eval_data: str = field("", help="eval set with prompt and reference columns (default: the run's split/eval.jsonl)")
    out_dir: str = field("", help="output folder (default: the run's evaluate/ folder)")
    max_new_tokens: int = field(32, help="tokens generated per answer at most")
    batch_size: int = field(16, help="prompts generated together")
    seed: int = field(0, help="seed for torch and the bootstrap")
    max_samples: int = field(0, help="score only the first N eval rows (0 = all)")
    bootstrap_samples: int = field(1000, help="paired bootstrap resamples for the confidence intervals (0 = none)")

    def __post_init__(self) -> None:
        self.candidate_model = self.candidate_model.strip()
        self.champion_model = self.champion_model.strip() or "production"
        require(self.max_new_tokens >= 1, f"evaluate: max_new_tokens must be at least 1, got {self.max_new_tokens}")
        require(self.batch_size >= 1, f"evaluate: batch_size must be at least 1, got {self.batch_size}")
        require(self.max_samples >= 0, f"evaluate: max_samples must be 0 (all) or more, got {self.max_samples}")
        require(
            self.bootstrap_samples >= 0,
            f"evaluate: bootstrap_samples must be 0 (no intervals) or more, got {self.bootstrap_samples}",
        )
        context = RunContext.from_env()
        self.candidate_model = self.candidate_model or f"{context.step_dir('train')}/model"
        self.base_model = self.base_model.strip() or str(settings.tiny_model_dir())
        self.eval_data = self.eval_data.strip() or f"{context.step_dir('split')}/eval.jsonl"
        self.out_dir = self.out_dir.strip() or context.step_dir("evaluate")


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """An ``evaluate`` metric shipped with the package ('sacrebleu' or 'rouge'), loaded offline."""
    import evaluate

    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no metric {name!r} in {METRICS_DIR}; known metrics: {', '.join(known)}")
    return evaluate.load(str(folder), keep_in_memory=True)


def _text(value: Any) -> str:
    """A reference is a string, or a conversation whose last message is the answer."""
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value else ""
    return "" if value is None else str(value)


def read_eval_set(uri: str, max_samples: int = 0) -> list[dict[str, Any]]:
    try:
        rows = data.read_records(uri)
    except data.DataError as exc:
        raise StepFailed(f"evaluate: {exc}") from exc
    if max_samples:
        rows = rows[:max_samples]
    bad = [str(r.get("_line", i + 1)) for i, r in enumerate(rows) if not r.get("prompt") or r.get("reference") is None]
    if bad:
        raise StepFailed(
            f"evaluate: {uri}: rows {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''} lack a prompt or a "
            "reference; eval data needs both columns"
        )
    if not rows:
        raise StepFailed(f"evaluate: {uri} has no rows to evaluate on")
    return [{"prompt": r["prompt"], "reference": _text(r["reference"])} for r in rows]


def _model_ref(ref: str) -> str:
    """A local folder as an absolute path; anything else is a hub id and passes through."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if ref.startswith(("/", ".", "~")) or "://" in ref:
        raise StepFailed(f"evaluate: no model folder at {ref} (expected a save_pretrained folder or a hub id)")
    return ref


def resolve_champion(config: EvaluateConfig) -> dict[str, str]:
    """{"model_dir", "label", "version"} of the model the candidate has to beat."""
    if config.champion_model == "production":
        from llmops_tasks.registry import resolve_champion as from_registry

        champion = dict(from_registry(fallback=config.base_model))
    else:
        champion = {"model_dir": config.champion_model, "label": config.champion_model, "version": ""}
    champion["model_dir"] = _model_ref(str(champion["model_dir"]))
    champion.setdefault("version", "")
    champion.setdefault("label", champion["model_dir"])
    return champion


def champion_cache_path(champion: dict[str, str], eval_hash: str, config: EvaluateConfig) -> Path:
    """Where the champion's answers to this eval set, under these generation settings, are kept.

    A registered version is named by its version (its download folder may change between runs),
    anything else by its path; both with a hash of its config.json.
    """
    model_dir = champion["model_dir"]
    config_json = Path(model_dir) / "config.json"
    key = {
        "model": f"{settings.model_name()} v{champion['version']}" if champion.get("version") else model_dir,
        "config_json": hashlib.sha256(config_json.read_bytes()).hexdigest() if config_json.is_file() else "",
        "eval": eval_hash,
        "max_new_tokens": config.max_new_tokens,
        "max_samples": config.max_samples,
        "batch_size": config.batch_size,
        "seed": config.seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return settings.home() / "cache" / "predictions" / f"{digest}.jsonl"


def generate(
    model_ref: str, prompts: list[Any], *, max_new_tokens: int, batch_size: int, seed: int
) -> list[tuple[str, int]]:
    """Greedy answers to ``prompts``: (text of the new tokens, number of new tokens before EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    # Decoder-only models continue from the last position: pad on the left so every prompt ends there.
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_ref, **({"dtype": "auto"} if device == "cuda" else {}))
    model.to(device)
    model.eval()
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else str(p)
        for p in prompts
    ]
    stop_ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    torch.manual_seed(seed)
    answers: list[tuple[str, int]] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[start:start + batch_size], return_tensors="pt", padding=True,
                truncation=limit is not None, max_length=max(1, limit - max_new_tokens) if limit else None,
            ).to(device)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, encoded["input_ids"].shape[1]:].tolist():
                length = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
                answers.append((tokenizer.decode(row[:length], skip_special_tokens=True).strip(), length))
    del model
    return answers


def _predict(model_ref: str, rows: list[dict[str, Any]], config: EvaluateConfig) -> list[dict[str, Any]]:
    answers = generate(
        model_ref, [r["prompt"] for r in rows],
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed,
    )
    return [{**row, "prediction": text, "gen_tokens": length} for row, (text, length) in zip(rows, answers)]


def _cached_predictions(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The cached answers, if they are for exactly these prompts."""
    if not path.is_file():
        return None
    try:
        cached = data.read_records(str(path))
    except data.DataError:
        return None
    if len(cached) != len(rows) or any(c.get("prompt") != r["prompt"] for c, r in zip(cached, rows)):
        return None
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in cached]


def score(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[float]]:
    """Corpus scores ({bleu, rouge1, rouge2, rougeL}, all 0-1) and the per-example ROUGE-L."""
    bleu = load_metric("sacrebleu").compute(predictions=predictions, references=[[r] for r in references])
    rouge = load_metric("rouge").compute(
        predictions=predictions, references=references, rouge_types=["rouge1", "rouge2", "rougeL"],
        use_aggregator=False,
    )
    scores = {"bleu": bleu["score"] / 100.0}
    for key in ("rouge1", "rouge2", "rougeL"):
        scores[key] = sum(rouge[key]) / len(rouge[key])
    return scores, list(rouge["rougeL"])


def paired_bootstrap(
    references: list[str],
    candidate: list[str],
    champion: list[str],
    candidate_rougeL: list[float],
    champion_rougeL: list[float],
    *,
    samples: int,
    seed: int,
) -> dict[str, list[float]]:
    """95% intervals of candidate - champion for BLEU and ROUGE-L, resampling eval examples.

    Both systems are scored on the same resampled examples. BLEU is recomputed as a corpus score on
    each resample from the per-sentence n-gram statistics, the way sacrebleu's own paired bootstrap
    test does, so a resample costs a sum, not a re-tokenization.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU

    bleu = BLEU()  # the same defaults as corpus_bleu, hence as the sacrebleu metric module
    candidate_stats = np.asarray(bleu._extract_corpus_statistics(candidate, [references]), dtype=np.int64)
    champion_stats = np.asarray(bleu._extract_corpus_statistics(champion, [references]), dtype=np.int64)
    rouge_diff = np.asarray(candidate_rougeL, dtype=np.float64) - np.asarray(champion_rougeL, dtype=np.float64)
    n = len(references)
    rng = np.random.default_rng(seed)
    bleu_deltas: list[float] = []
    rouge_deltas: list[float] = []
    chunk = max(1, 2_000_000 // max(n, 1))  # bounds the (resamples x examples) count matrix in memory
    for start in range(0, samples, chunk):
        # How often each example is drawn in each resample: sampling n with replacement.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - start))
        for cand_row, champ_row in zip(counts @ candidate_stats, counts @ champion_stats):
            ours = bleu._compute_score_from_stats(cand_row).score
            theirs = bleu._compute_score_from_stats(champ_row).score
            bleu_deltas.append((ours - theirs) / 100.0)
        rouge_deltas.extend((counts @ rouge_diff / n).tolist())
    tail = (1.0 - CI_LEVEL) / 2 * 100
    return {
        metric: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
        for metric, values in (("bleu", bleu_deltas), ("rougeL", rouge_deltas))
    }


def run(config: EvaluateConfig) -> dict:
    rows = read_eval_set(config.eval_data, config.max_samples)
    eval_hash = data.content_hash(config.eval_data)
    out = config.out_dir.rstrip("/")
    candidate_ref = _model_ref(config.candidate_model)
    champion = resolve_champion(config)

    candidate_rows = _predict(candidate_ref, rows, config)
    cache_path = champion_cache_path(champion, eval_hash, config)
    champion_rows = _cached_predictions(cache_path, rows)
    champion_cached = champion_rows is not None
    if champion_rows is None:
        champion_rows = _predict(champion["model_dir"], rows, config)
        data.write_jsonl(str(cache_path), champion_rows)

    paths = {
        "metrics": f"{out}/metrics.json",
        "candidate_predictions": f"{out}/predictions_candidate.jsonl",
        "champion_predictions": f"{out}/predictions_champion.jsonl",
    }
    data.write_jsonl(paths["candidate_predictions"], candidate_rows)
    data.write_jsonl(paths["champion_predictions"], champion_rows)

    references = [r["reference"] for r in rows]
    results: dict[str, dict[str, float]] = {}
    rougeL: dict[str, list[float]] = {}
    for name, predicted in (("candidate", candidate_rows), ("champion", champion_rows)):
        results[name], rougeL[name] = score([r["prediction"] for r in predicted], references)
        results[name]["gen_len"] = sum(r["gen_tokens"] for r in predicted) / len(predicted)
    delta = {key: results["candidate"][key] - results["champion"][key] for key in (*SCORED, "gen_len")}
    ci: dict[str, list[float]] = {}
    if config.bootstrap_samples:
        ci = paired_bootstrap(
            references,
            [r["prediction"] for r in candidate_rows],
            [r["prediction"] for r in champion_rows],
            rougeL["candidate"],
            rougeL["champion"],
            samples=config.bootstrap_samples,
            seed=config.seed,
        )
    metrics = {
        "candidate": results["candidate"],
        "champion": results["champion"],
        "delta": delta,
        "ci": ci,
        "ci_level": CI_LEVEL,
        "bootstrap_samples": config.bootstrap_samples,
        "champion_label": champion["label"],
        "champion_version": champion["version"],
        "candidate_model": candidate_ref,
        "champion_model": champion["model_dir"],
        "n": len(rows),
        "eval_data": config.eval_data,
        "eval_hash": eval_hash,
        "generation": {"max_new_tokens": config.max_new_tokens, "greedy": True, "seed": config.seed},
    }
    data.write_json(paths["metrics"], metrics)
    run_url = _log_to_mlflow(metrics, paths, config)
    return {
        **paths,
        "mlflow_run_url": run_url,
        "champion_cache": str(cache_path),
        "champion_cached": champion_cached,
        "champion_label": champion["label"],
        "n": len(rows),
        "candidate": results["candidate"],
        "champion": results["champion"],
        "delta": delta,
        "ci": ci,
    }


def _log_to_mlflow(metrics: dict, paths: dict[str, str], config: EvaluateConfig) -> str:
    """A child run with candidate, champion, delta and CI bounds as metrics, files as artifacts."""
    from llmops_tasks import tracking
    from llmops_tasks.config import to_dict

    flat: dict[str, float] = {}
    for group in ("candidate", "champion", "delta"):
        flat.update({f"{group}_{k}": v for k, v in metrics[group].items()})
    for metric, (low, high) in metrics["ci"].items():
        flat.update({f"delta_{metric}_ci_low": low, f"delta_{metric}_ci_high": high})
    with tracking.step_run("evaluate", params=to_dict(config),
                           tags={"champion": metrics["champion_label"]}) as run_id:
        tracking.log_metrics(run_id, flat)
        mlflow_client = tracking.client()
        for path in paths.values():
            if "://" not in path:
                mlflow_client.log_artifact(run_id, path, artifact_path="evaluation")
    return tracking.run_url(run_id)


def command():
    from llmops_tasks.cli import Command

    return Command(EvaluateConfig, run, "generate on the eval set and score candidate vs champion")
