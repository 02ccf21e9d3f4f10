"""``llmops evaluate``: generate on the eval set and score the candidate against the champion.

Both models answer every eval prompt with greedy decoding (deterministic, left padding, only the
new tokens decoded). The answers are scored with BLEU (sacrebleu) and ROUGE-1/2/L (rouge_score)
through the ``evaluate`` metric modules shipped in ``llmops_tasks/metrics/`` (no hub needed).
Each model also scores text it did not write, by teacher forcing:

- ``perplexity`` of the references given their prompts;
- where the eval rows carry ``chosen`` / ``rejected``, the implicit reward of each answer: the
  summed log-probability log pi(y|x), or with a ``reference_model`` DPO's
  beta * (log pi(y|x) - log pi_ref(y|x)); ``preference_accuracy`` is the share of pairs whose
  chosen answer gets the higher reward, ``reward_margin`` the mean reward(chosen) - reward(rejected).

A paired bootstrap over eval examples gives 95% confidence intervals of candidate - champion for
every metric the gate can check (and of each model's own score, for the report).

BLEU is reported on a 0-1 scale (sacrebleu's score / 100) so that one regression tolerance means
the same on every text metric. Both metrics tokenize for the eval set's language: the references'
majority script picks sacrebleu's tokenizer and ROUGE's tokens (``metrics/tokenization.py``: English
keeps sacrebleu's and rouge_score's defaults, Chinese gets ``zh`` and characters, Russian ``intl``
and Unicode words, ...), unless the recipe names them; the choice is in metrics.json
(``tokenization``). A text metric whose references have no token under its tokenizer can only
score 0: it is listed under ``unmeasurable`` with the reason, and the gate fails any rule on it.

The champion's answers and log-probabilities depend only on the champion, the eval set and the
generation settings, so they are cached under ``$LLMOPS_HOME/cache/predictions/`` and reused by
every later run against the same champion.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops_tasks.core import data, settings
from llmops_tasks.core.config import ConfigError, field, require
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.core.settings import RunContext
from llmops_tasks.metrics import tokenization
from llmops_tasks.serving import generation
from llmops_tasks.text.records import answer_text

log = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
TEXT_METRICS = ("bleu", "rouge1", "rouge2", "rougeL")
PREFERENCE_METRICS = ("preference_accuracy", "reward_margin")
# Every metric the gate can check; all get a bootstrap interval. Lower perplexity is better.
GATED_METRICS = (*TEXT_METRICS, *PREFERENCE_METRICS, "perplexity")
LOWER_IS_BETTER = frozenset({"perplexity"})
CI_LEVEL = 0.95
# Bumped when the fields cached per champion answer change, so older cache files are not reused.
CACHE_FORMAT = 2
# Generation progress is logged after the first batch, then at most this often, then at the end.
PROGRESS_EVERY_S = 10.0


@dataclass
class EvaluateConfig:
    candidate_model: str = field(
        "", path="model", help="model to judge: a folder written by save_pretrained, or a hub id (default: the run's train/model)"
    )
    champion_model: str = field(
        "production", path="model", keywords=("production",),
        help="model to beat: a folder, a hub id, or 'production' (the registry's production version, "
        "else base_model)",
    )
    base_model: str = field(
        "", path="model", help="base model, the champion while nothing is in production (default: the embedded tiny model)"
    )
    eval_data: str = field("", path="input",
                           help="eval set with prompt and reference columns (default: the run's split/eval.jsonl)")
    out_dir: str = field("", path="output", help="output folder (default: the run's evaluate/ folder)")
    max_new_tokens: int = field(32, help="tokens generated per answer at most")
    batch_size: int = field(16, help="prompts generated together")
    seed: int = field(0, help="seed for torch and the bootstrap")
    max_samples: int = field(0, help="score only the first N eval rows (0 = all)")
    bootstrap_samples: int = field(1000, help="paired bootstrap resamples for the confidence intervals (0 = none)")
    reference_model: str = field(
        "", path="model", keywords=("base",),
        help="reference model for DPO implicit rewards beta*(log pi - log pi_ref): a folder, a hub id or 'base' "
        "(base_model); empty: the reward is the summed log-probability of the answer",
    )
    beta: float = field(0.1, help="DPO beta scaling the implicit reward when reference_model is set")
    bleu_tokenizer: str = field(
        "", help=f"sacrebleu tokenizer for BLEU, one of {', '.join(tokenization.BLEU_TOKENIZERS)}; "
        "empty: chosen from the references' script (13a for English, zh for Chinese, ja-mecab, intl, ...)"
    )
    rouge_tokenizer: str = field(
        "", help=f"tokens ROUGE counts, one of {', '.join(tokenization.ROUGE_TOKENIZERS)}; empty: chosen from "
        "the references' script (default = rouge_score's own for English, char for Chinese/Japanese/Korean/Thai, "
        "unicode-words for other scripts)"
    )
    report: bool = field(True, help="write report.html (metrics, intervals, best and worst examples)")

    def base(self) -> str:
        """The base model: ``base_model``, else the embedded tiny model."""
        return self.base_model or str(settings.tiny_model_dir())

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
        require(self.beta > 0, f"evaluate: beta must be above 0, got {self.beta}")
        self.bleu_tokenizer, self.rouge_tokenizer = self.bleu_tokenizer.strip(), self.rouge_tokenizer.strip()
        require(self.bleu_tokenizer in ("", *tokenization.BLEU_TOKENIZERS),
                f"evaluate: bleu_tokenizer must be empty (automatic) or one of "
                f"{', '.join(tokenization.BLEU_TOKENIZERS)}, got {self.bleu_tokenizer!r}")
        require(self.rouge_tokenizer in ("", *tokenization.ROUGE_TOKENIZERS),
                f"evaluate: rouge_tokenizer must be empty (automatic) or one of "
                f"{', '.join(tokenization.ROUGE_TOKENIZERS)}, got {self.rouge_tokenizer!r}")
        self.reference_model = self.reference_model.strip()
        context = RunContext.from_env()
        self.candidate_model = self.candidate_model or f"{context.step_dir('train')}/model"
        # Left empty until it is needed (no production yet, or reference_model "base"): a run that
        # names its champion does not need the embedded tiny model to exist.
        self.base_model = self.base_model.strip()
        self.eval_data = self.eval_data.strip() or f"{context.step_dir('split')}/eval.jsonl"
        self.out_dir = self.out_dir.strip() or context.step_dir("evaluate")


@functools.cache
def load_metric(name: str):
    """An ``evaluate`` metric shipped with the package ('sacrebleu' or 'rouge'), loaded offline."""
    import evaluate

    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no metric {name!r} in {METRICS_DIR}; known metrics: {', '.join(known)}")
    return evaluate.load(str(folder), keep_in_memory=True)


def read_eval_set(uri: str, max_samples: int = 0) -> list[dict[str, Any]]:
    """Rows with ``prompt`` and ``reference``, plus ``chosen``/``rejected`` where the set has them."""
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
    paired = [r.get("chosen") is not None and r.get("rejected") is not None for r in rows]
    if any(paired) and not all(paired):
        half = [str(r.get("_line", i + 1)) for i, (r, p) in enumerate(zip(rows, paired)) if not p]
        raise StepFailed(
            f"evaluate: {uri}: rows {', '.join(half[:10])}{' ...' if len(half) > 10 else ''} lack chosen or "
            "rejected while other rows have both; preference metrics need the pair on every row"
        )
    out = []
    for r in rows:
        row = {"prompt": r["prompt"], "reference": answer_text(r["reference"])}
        if r.get("chosen") is not None and r.get("rejected") is not None:
            row.update(chosen=answer_text(r["chosen"]), rejected=answer_text(r["rejected"]))
        if r.get("id") is not None:
            row["id"] = r["id"]
        out.append(row)
    return out


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

        champion = dict(from_registry(fallback=config.base()))
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
        "format": CACHE_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return settings.home() / "cache" / "predictions" / f"{digest}.jsonl"


def answer_logprobs(model_ref: str, pairs: list[tuple[Any, str]], *, batch_size: int) -> list[tuple[float, int]]:
    """(summed log pi(answer | prompt), answer tokens) for each (prompt, answer), by teacher forcing.

    The answer is scored as training sees it: the tokens of prompt + answer after the prompt's own
    tokens, plus EOS. Long inputs lose the start of the prompt, never the answer.
    """
    model, tokenizer, device = generation.load_model(model_ref, padding_side="right")
    try:
        return _score_answers(model, tokenizer, device, pairs, batch_size)
    finally:
        del model


def preference_pairs(rows: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    """(prompt, chosen) for every row, then (prompt, rejected): scored as one list, so the policy and
    the reference model see the very same batches (and the base model's reward against itself is 0)."""
    return [(r["prompt"], r[key]) for key in ("chosen", "rejected") for r in rows]


def _score_answers(model, tokenizer, device, pairs: list[tuple[Any, str]], batch_size: int) -> list[tuple[float, int]]:
    import torch

    limit = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    limit = min(limit, tokenizer.model_max_length)
    sequences: list[tuple[list[int], int]] = []  # (input ids, index of the first answer token)
    for prompt, answer in pairs:
        prompt_text = generation.prompt_text(tokenizer, prompt)
        prompt_ids = tokenizer(prompt_text)["input_ids"]
        full_ids = tokenizer(prompt_text + answer)["input_ids"]
        if tokenizer.eos_token_id is not None:
            full_ids = full_ids + [tokenizer.eos_token_id]
        start = min(len(prompt_ids), len(full_ids) - 1)
        if len(full_ids) > limit:
            cut = len(full_ids) - limit
            full_ids, start = full_ids[cut:], max(1, start - cut)
        sequences.append((full_ids, max(1, start)))
    scores: list[tuple[float, int]] = []
    with torch.inference_mode():
        for first in range(0, len(sequences), batch_size):
            batch = sequences[first:first + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            answer_mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for i, (ids, start) in enumerate(batch):
                input_ids[i, :len(ids)] = torch.tensor(ids)
                attention[i, :len(ids)] = 1
                answer_mask[i, start:len(ids)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            targets = input_ids[:, 1:].to(device)
            mask = answer_mask[:, 1:].to(device)
            for i in range(len(batch)):  # one row at a time: a float32 (length x vocab) copy, not (batch x ...)
                # Position t predicts token t+1.
                logp = torch.log_softmax(logits[i, :-1].float(), dim=-1)
                token_logp = logp.gather(-1, targets[i].unsqueeze(-1)).squeeze(-1)
                scores.append((float((token_logp * mask[i]).sum()), int(mask[i].sum())))
    return scores


class GenerationProgress:
    """Logs "<who> answers: done/total prompts (rate, time left)" after the first batch, then at
    most every ``every`` seconds, and when the last batch is done: a steady line in the task log."""

    def __init__(self, who: str, every: float = PROGRESS_EVERY_S) -> None:
        self.who, self.every = who, every
        self.start = time.monotonic()
        self.logged_at: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and self.logged_at is not None and now - self.logged_at < self.every:
            return
        self.logged_at = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        left = f", about {(total - done) / rate:.0f} s left" if done < total and rate > 0 else ""
        log.info("evaluate: %s answers: %d/%d prompts (%.1f prompts/s%s)", self.who, done, total, rate, left)


def _predict(model_ref: str, rows: list[dict[str, Any]], config: EvaluateConfig,
             who: str = "model") -> list[dict[str, Any]]:
    """The model's answers and its log-probabilities of the reference (and chosen/rejected) answers."""
    answers = generation.generate(
        model_ref, [r["prompt"] for r in rows],
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed,
        progress=GenerationProgress(who),
    )
    predicted = [{**row, "prediction": text, "gen_tokens": length} for row, (text, length) in zip(rows, answers)]
    model, tokenizer, device = generation.load_model(model_ref, padding_side="right")  # one load for every answer scored
    scored = {"reference": _score_answers(model, tokenizer, device, [(r["prompt"], r["reference"]) for r in rows],
                                          config.batch_size)}
    if "chosen" in rows[0]:
        both = _score_answers(model, tokenizer, device, preference_pairs(rows), config.batch_size)
        scored.update(chosen=both[:len(rows)], rejected=both[len(rows):])
    del model
    for name, values in scored.items():
        for row, (logp, tokens) in zip(predicted, values):
            row[f"{name}_logp"] = logp
            row[f"{name}_tokens"] = tokens
    return predicted


def _cached_predictions(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The cached answers, if they are for exactly these prompts and carry every scored field."""
    if not path.is_file():
        return None
    try:
        cached = data.read_records(str(path))
    except data.DataError:
        return None
    if len(cached) != len(rows) or any(c.get("prompt") != r["prompt"] for c, r in zip(cached, rows)):
        return None
    needed = {f"{k}_logp" for k in ("reference", "chosen", "rejected") if k in rows[0]}
    if any(not needed <= set(c) for c in cached):
        return None
    return [{k: v for k, v in c.items() if not k.startswith("_")} for c in cached]


def _compute(metric, **kwargs):
    """The metric module's own computation, without evaluate's Arrow round trip of the inputs.

    ``Metric.compute`` first writes every prediction and reference to an Arrow table and reads
    them back (to support distributed ``add_batch``); for one process holding the whole eval set
    that is pure overhead. The numbers are the module's, unchanged.
    """
    return metric._compute(**kwargs)


def score(
    predictions: list[str], references: list[str], tokens: tokenization.Tokenization | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus scores ({bleu, rouge1, rouge2, rougeL}, all 0-1) and the per-example ROUGE F-measures.

    ``tokens`` says how both metrics tokenize; None chooses it from the references' script (on
    English: sacrebleu's and rouge_score's defaults, so the numbers are theirs).
    """
    tokens = tokens or tokenization.choose(references)
    bleu = _compute(load_metric("sacrebleu"), predictions=predictions, references=[[r] for r in references],
                    tokenize=tokens.bleu)
    rouge = _compute(
        load_metric("rouge"), predictions=predictions, references=references,
        rouge_types=["rouge1", "rouge2", "rougeL"], use_aggregator=False, tokenizer=tokens.rouge_callable(),
    )
    scores = {"bleu": bleu["score"] / 100.0}
    for key in ("rouge1", "rouge2", "rougeL"):
        scores[key] = sum(rouge[key]) / len(rouge[key])
    return scores, {key: list(rouge[key]) for key in ("rouge1", "rouge2", "rougeL")}


def likelihood_scores(
    rows: list[dict[str, Any]], reference_logps: dict[str, list[float]] | None, beta: float
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Perplexity on references and, with chosen/rejected, preference accuracy and reward margin.

    Returns the corpus values and the per-example values the bootstrap resamples: reward rows use
    ``reference_logps`` ({"chosen": [...], "rejected": [...]}) from the reference model when given.
    """
    import math

    per_example: dict[str, list[float]] = {}
    values: dict[str, float] = {}
    if "reference_logp" in rows[0]:
        nll = [-float(r["reference_logp"]) for r in rows]
        tokens = [float(r["reference_tokens"]) for r in rows]
        per_example.update(nll=nll, tokens=tokens)
        values["perplexity"] = math.exp(sum(nll) / max(sum(tokens), 1.0))
    if "chosen_logp" in rows[0]:
        chosen = [float(r["chosen_logp"]) for r in rows]
        rejected = [float(r["rejected_logp"]) for r in rows]
        if reference_logps is not None:
            chosen = [beta * (c - ref) for c, ref in zip(chosen, reference_logps["chosen"])]
            rejected = [beta * (r - ref) for r, ref in zip(rejected, reference_logps["rejected"])]
        margin = [c - r for c, r in zip(chosen, rejected)]
        correct = [1.0 if m > 0 else 0.0 for m in margin]
        per_example.update(preference_accuracy=correct, reward_margin=margin)
        values["preference_accuracy"] = sum(correct) / len(correct)
        values["reward_margin"] = sum(margin) / len(margin)
    return values, per_example


def _statistic_matrix(predictions: list[str], references: list[str], per_example: dict[str, list[float]],
                      bleu_tokenizer: str = "13a"):
    """Per-example sufficient statistics: BLEU n-gram counts, ROUGE, pairs, NLL and token counts."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    # corpus_bleu's defaults but the tokenizer, hence the sacrebleu metric module's numbers in score()
    bleu = BLEU(tokenize=bleu_tokenizer)
    stats = {"bleu": np.asarray(bleu._extract_corpus_statistics(predictions, [references]), dtype=np.float64)}
    stats.update({key: np.asarray(values, dtype=np.float64) for key, values in per_example.items()})
    return bleu, stats


def _corpus_values(bleu, stats: dict[str, Any], counts) -> dict[str, Any]:
    """Each metric on each resample (rows of ``counts``: how often each example is drawn)."""
    import numpy as np

    n = counts.shape[1]
    values: dict[str, Any] = {}
    bleu_sums = counts @ stats["bleu"]
    values["bleu"] = np.array([bleu._compute_score_from_stats(row.astype(np.int64).tolist()).score / 100.0
                               for row in bleu_sums])
    for key in ("rouge1", "rouge2", "rougeL", "preference_accuracy", "reward_margin"):
        if key in stats:
            values[key] = counts @ stats[key] / n
    if "nll" in stats:
        values["perplexity"] = np.exp((counts @ stats["nll"]) / np.maximum(counts @ stats["tokens"], 1.0))
    return values


def paired_bootstrap(
    references: list[str],
    candidate: tuple[list[str], dict[str, list[float]]],
    champion: tuple[list[str], dict[str, list[float]]],
    *,
    samples: int,
    seed: int,
    bleu_tokenizer: str = "13a",
) -> dict[str, dict]:
    """95% percentile intervals over ``samples`` paired resamples of the eval examples.

    ``candidate`` and ``champion`` are (predictions, per-example values: rouge1/rouge2/rougeL,
    preference_accuracy, reward_margin, nll, tokens). Both are scored on the same resampled
    examples, so the interval of candidate - champion ("delta") is not widened by which examples
    happened to be drawn. Corpus BLEU and perplexity are recomputed on each resample from summed
    per-example statistics, the way sacrebleu's own paired bootstrap test does, so a resample costs
    a matrix product, not a re-tokenization. ``bleu_tokenizer`` must be the one :func:`score` used;
    the ROUGE values come per example from it already tokenized.
    """
    import numpy as np

    bleu, ours = _statistic_matrix(candidate[0], references, candidate[1], bleu_tokenizer)
    _, theirs = _statistic_matrix(champion[0], references, champion[1], bleu_tokenizer)
    n = len(references)
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list]] = {"candidate": {}, "champion": {}}
    chunk = max(1, 2_000_000 // max(n, 1))  # bounds the (resamples x examples) count matrix in memory
    for start in range(0, samples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - start)).astype(np.float64)
        for name, stats in (("candidate", ours), ("champion", theirs)):
            for metric, values in _corpus_values(bleu, stats, counts).items():
                draws[name].setdefault(metric, []).append(values)
    tail = (1.0 - CI_LEVEL) / 2 * 100

    def interval(values) -> list[float]:
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]

    result: dict[str, dict] = {"delta": {}, "candidate": {}, "champion": {}}
    for metric in GATED_METRICS:
        if metric not in draws["candidate"] or metric not in draws["champion"]:
            continue
        cand = np.concatenate(draws["candidate"][metric])
        champ = np.concatenate(draws["champion"][metric])
        result["delta"][metric] = interval(cand - champ)
        result["candidate"][metric] = interval(cand)
        result["champion"][metric] = interval(champ)
    return result


def choose_tokenization(references: list[str], config: EvaluateConfig) -> tokenization.Tokenization:
    """The recipe's tokenizers, else those for the references' script; logged, since they decide what
    the numbers mean."""
    try:
        tokens = tokenization.choose(references, bleu=config.bleu_tokenizer, rouge=config.rouge_tokenizer)
    except ValueError as exc:
        raise ConfigError(f"evaluate: {exc}") from exc
    log.info("evaluate: tokenization: %s", tokens.summary())
    return tokens


def run(config: EvaluateConfig) -> dict:
    rows = read_eval_set(config.eval_data, config.max_samples)
    references = [r["reference"] for r in rows]
    tokens = choose_tokenization(references, config)  # before any model runs: a missing tokenizer fails fast
    eval_hash = data.content_hash(config.eval_data)
    out = config.out_dir.rstrip("/")
    candidate_ref = _model_ref(config.candidate_model)
    champion = resolve_champion(config)

    candidate_rows = _predict(candidate_ref, rows, config, who="candidate")
    cache_path = champion_cache_path(champion, eval_hash, config)
    champion_rows = _cached_predictions(cache_path, rows)
    champion_cached = champion_rows is not None
    if champion_rows is None:
        champion_rows = _predict(champion["model_dir"], rows, config, who="champion")
        data.write_jsonl(str(cache_path), champion_rows)

    reference_logps = None
    reference_label = ""
    if config.reference_model and "chosen" in rows[0]:
        reference_label = config.base() if config.reference_model == "base" else config.reference_model
        reference_ref = _model_ref(reference_label)
        scored = answer_logprobs(reference_ref, preference_pairs(rows), batch_size=config.batch_size)
        reference_logps = {"chosen": [logp for logp, _ in scored[:len(rows)]],
                           "rejected": [logp for logp, _ in scored[len(rows):]]}

    paths = {
        "metrics": f"{out}/metrics.json",
        "candidate_predictions": f"{out}/predictions_candidate.jsonl",
        "champion_predictions": f"{out}/predictions_champion.jsonl",
    }
    results: dict[str, dict[str, float]] = {}
    per_example: dict[str, dict[str, list[float]]] = {}
    for name, predicted in (("candidate", candidate_rows), ("champion", champion_rows)):
        results[name], per_example[name] = score([r["prediction"] for r in predicted], references, tokens)
        likelihood, likelihood_rows = likelihood_scores(predicted, reference_logps, config.beta)
        results[name].update(likelihood)
        per_example[name].update(likelihood_rows)
        results[name]["gen_len"] = sum(r["gen_tokens"] for r in predicted) / len(predicted)
        for i, row in enumerate(predicted):  # per-example scores travel with the predictions
            row.update({k: v[i] for k, v in per_example[name].items()
                        if k in ("rouge1", "rouge2", "rougeL", "reward_margin")})
    data.write_jsonl(paths["candidate_predictions"], candidate_rows)
    data.write_jsonl(paths["champion_predictions"], champion_rows)

    delta = {key: results["candidate"][key] - results["champion"][key]
             for key in results["candidate"] if key in results["champion"]}
    intervals: dict[str, dict] = {"delta": {}, "candidate": {}, "champion": {}}
    if config.bootstrap_samples:
        intervals = paired_bootstrap(
            references,
            ([r["prediction"] for r in candidate_rows], per_example["candidate"]),
            ([r["prediction"] for r in champion_rows], per_example["champion"]),
            samples=config.bootstrap_samples,
            seed=config.seed,
            bleu_tokenizer=tokens.bleu,
        )
    unmeasurable = tokenization.unmeasurable(references, tokens)
    for metric, why in unmeasurable.items():
        log.warning("evaluate: %s could not be measured: %s; the gate fails any rule on it", metric, why)
    metrics = {
        "candidate": results["candidate"],
        "champion": results["champion"],
        "delta": delta,
        "ci": intervals["delta"],
        "intervals": {"candidate": intervals["candidate"], "champion": intervals["champion"]},
        "ci_level": CI_LEVEL,
        "bootstrap_samples": config.bootstrap_samples,
        "lower_is_better": sorted(LOWER_IS_BETTER),
        "reward": (f"beta*(log pi - log pi_ref), beta={config.beta}, reference {reference_label}"
                   if reference_logps is not None else "summed log-probability of the answer"),
        "champion_label": champion["label"],
        "champion_version": champion["version"],
        "candidate_model": candidate_ref,
        "champion_model": champion["model_dir"],
        "n": len(rows),
        "eval_data": config.eval_data,
        "eval_hash": eval_hash,
        "predictions": {"candidate": paths["candidate_predictions"], "champion": paths["champion_predictions"]},
        "generation": {"max_new_tokens": config.max_new_tokens, "greedy": True, "seed": config.seed},
        "tokenization": tokens.record(),
        "unmeasurable": unmeasurable,
    }
    if config.report:
        from llmops_tasks import eval_report

        paths["report"] = f"{out}/report.html"
        eval_report.write(paths["report"], metrics, candidate_rows, champion_rows)
        metrics["report"] = paths["report"]
    data.write_json(paths["metrics"], metrics)
    run_url = _log_to_mlflow(metrics, paths, config)
    return {
        **paths,
        "mlflow_run_url": run_url,
        "champion_cache": str(cache_path),
        "champion_cached": champion_cached,
        "champion_label": champion["label"],
        "champion_version": champion["version"],
        "n": len(rows),
        "candidate": results["candidate"],
        "champion": results["champion"],
        "delta": delta,
        "ci": intervals["delta"],
        "tokenization": metrics["tokenization"],
        "unmeasurable": unmeasurable,
    }


def _log_to_mlflow(metrics: dict, paths: dict[str, str], config: EvaluateConfig) -> str:
    """A child run with candidate, champion, delta and interval bounds as metrics, files as artifacts."""
    from llmops_tasks.core import tracking
    from llmops_tasks.core.config import to_dict

    flat: dict[str, float] = {}
    for group in ("candidate", "champion", "delta"):
        flat.update({f"{group}_{k}": v for k, v in metrics[group].items()})
    for metric, (low, high) in metrics["ci"].items():
        flat.update({f"delta_{metric}_ci_low": low, f"delta_{metric}_ci_high": high})
    for group, by_metric in metrics["intervals"].items():
        for metric, (low, high) in by_metric.items():
            flat.update({f"{group}_{metric}_ci_low": low, f"{group}_{metric}_ci_high": high})
    tokens = metrics["tokenization"]
    tags = {"champion": metrics["champion_label"], "bleu_tokenizer": tokens["bleu"],
            "rouge_tokenizer": tokens["rouge"], "eval_script": tokens["detected_script"]}
    if metrics["unmeasurable"]:
        tags["unmeasurable"] = ",".join(metrics["unmeasurable"])
    with tracking.step_run("evaluate", params=to_dict(config), tags=tags) as run_id:
        tracking.log_metrics(run_id, flat)
        mlflow_client = tracking.client()
        for path in paths.values():
            if "://" not in path:
                mlflow_client.log_artifact(run_id, path, artifact_path="evaluation")
    return tracking.run_url(run_id)


def command():
    from llmops_tasks.core.command import Command

    return Command(EvaluateConfig, run, "generate on the eval set and score candidate vs champion")
