# Copyright 2020 The HuggingFace Evaluate Authors; adapted for offline use by llmops-airflow.
# Licensed under the Apache License, Version 2.0.
"""SacreBLEU as an ``evaluate`` metric that loads from this folder, with no hub.

Same arguments and result keys as the hub's ``sacrebleu`` metric; the numbers are
``sacrebleu.corpus_bleu``'s own (the score is on sacrebleu's 0-100 scale).
"""

import datasets
import evaluate
import sacrebleu as scb

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
SacreBLEU computes shareable, comparable and reproducible BLEU scores on detokenized text.
See https://github.com/mjpost/sacreBLEU.
"""

_KWARGS_DESCRIPTION = """
Corpus BLEU with its sufficient statistics, for predictions against one or more references.

Args:
    predictions (`list` of `str`): system outputs, detokenized.
    references (`list` of `str`, or `list` of `list` of `str`): one reference, or the same number of
        references, per prediction.
    smooth_method (`str`): 'none', 'floor', 'add-k' or 'exp' (default).
    smooth_value (`float`): for 'floor' (default 0.1) and 'add-k' (default 1).
    tokenize (`str`): sacrebleu tokenizer: '13a' (default), 'none', 'zh', 'intl', 'char', 'ja-mecab', ...
    lowercase (`bool`): case-insensitive BLEU. Default False.
    force (`bool`): score input that looks tokenized anyway. Default False.
    use_effective_order (`bool`): drop n-gram orders with no match (for sentence-level BLEU). Default False.

Returns:
    'score', 'counts', 'totals', 'precisions', 'bp', 'sys_len', 'ref_len'

Examples:
    >>> sacrebleu = evaluate.load("path/to/llmops_tasks/metrics/sacrebleu")
    >>> results = sacrebleu.compute(predictions=["hello there general kenobi"],
    ...                             references=[["hello there general kenobi"]])
    >>> round(results["score"], 1)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://github.com/mjpost/sacreBLEU", "https://en.wikipedia.org/wiki/BLEU"],
        )

    def _compute(
        self,
        predictions,
        references,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
    ):
        if references and isinstance(references[0], str):
            references = [[ref] for ref in references]
        per_prediction = len(references[0]) if references else 1
        if any(len(refs) != per_prediction for refs in references):
            raise ValueError("sacrebleu needs the same number of references for each prediction")
        # sacrebleu wants one stream per reference position, not one list per prediction.
        streams = [[refs[i] for refs in references] for i in range(per_prediction)]
        output = scb.corpus_bleu(
            predictions,
            streams,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            use_effective_order=use_effective_order,
            **({"tokenize": tokenize} if tokenize else {}),
        )
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
        }
