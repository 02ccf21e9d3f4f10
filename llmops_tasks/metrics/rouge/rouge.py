# Copyright 2020 The HuggingFace Evaluate Authors; adapted for offline use by llmops-airflow.
# Licensed under the Apache License, Version 2.0.
"""ROUGE as an ``evaluate`` metric that loads from this folder, with no hub.

Same arguments and result keys as the hub's ``rouge`` metric, computed with ``rouge_score``.
One deliberate difference: with ``use_aggregator=True`` the hub reports the median of a random
bootstrap of the means; this module reports the plain mean F-measure, so a score is
reproducible to the last bit (confidence intervals are the evaluate step's job).
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    url = "https://www.aclweb.org/anthology/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) compares generated text with references
by n-gram overlap (rouge1, rouge2) and longest common subsequence (rougeL, rougeLsum). It is case
insensitive. Wraps Google Research's reimplementation:
https://github.com/google-research/google-research/tree/master/rouge
"""

_KWARGS_DESCRIPTION = """
Mean ROUGE F-measures of predictions against references.

Args:
    predictions (`list` of `str`): generated texts.
    references (`list` of `str`, or `list` of `list` of `str`): one or several references per prediction;
        with several, the best-matching one counts.
    rouge_types (`list` of `str`): any of "rouge1".."rouge9", "rougeL", "rougeLsum" (splits on newlines).
        Default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_stemmer (`bool`): strip word suffixes with the Porter stemmer. Default False.
    use_aggregator (`bool`): True (default) returns the mean per type; False a list per type, one score per example.
    tokenizer (callable): text -> list of tokens, replacing rouge_score's default tokenizer.

Returns:
    rouge1, rouge2, rougeL, rougeLsum (F-measures; those asked for in rouge_types)

Examples:
    >>> rouge = evaluate.load("path/to/llmops_tasks/metrics/rouge")
    >>> rouge.compute(predictions=["hello there", "general kenobi"], references=["hello there", "general kenobi"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0, 'rougeLsum': 1.0}
"""


class Tokenizer:
    """Adapts a callable to the object with a ``tokenize`` method that rouge_score expects."""

    def __init__(self, tokenizer_func):
        self.tokenizer_func = tokenizer_func

    def tokenize(self, text):
        return self.tokenizer_func(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=[
                "https://en.wikipedia.org/wiki/ROUGE_(metric)",
                "https://github.com/google-research/google-research/tree/master/rouge",
            ],
        )

    def _compute(
        self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False, tokenizer=None
    ):
        if rouge_types is None:
            rouge_types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        multi_ref = bool(references) and isinstance(references[0], list)
        scorer = rouge_scorer.RougeScorer(
            rouge_types=rouge_types,
            use_stemmer=use_stemmer,
            tokenizer=Tokenizer(tokenizer) if tokenizer is not None else None,
        )
        per_type = {key: [] for key in rouge_types}
        for ref, pred in zip(references, predictions):
            score = scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
            for key in rouge_types:
                per_type[key].append(score[key].fmeasure)
        if not use_aggregator:
            return per_type
        return {key: (sum(values) / len(values) if values else 0.0) for key, values in per_type.items()}
