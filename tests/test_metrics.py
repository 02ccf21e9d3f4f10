"""The shipped `evaluate` metric modules give exactly sacrebleu's and rouge_score's numbers, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmops_tasks.evaluate import METRICS_DIR, load_metric

pytestmark = pytest.mark.unit

# (system output, reference): real English sentences, some exact, some paraphrased, some wrong.
PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("A man is playing the guitar on stage.", "A man plays a guitar on the stage."),
    ("The weather will be sunny tomorrow afternoon.", "Tomorrow afternoon the weather is expected to be sunny."),
    ("Please restart your computer before installing updates.", "Restart the computer before you install the updates."),
    ("She bought three apples and a loaf of bread.", "She bought three apples and some bread."),
    ("The meeting has been moved to Thursday.", "The meeting was rescheduled to Thursday."),
    ("Open the settings menu and select Network.", "Open Settings, then choose Network."),
    ("Our flight was delayed by two hours.", "The flight was delayed two hours."),
    ("He reads the newspaper every morning.", "Every morning he reads the newspaper."),
    ("The museum is closed on Mondays.", "The museum is closed on Mondays."),
    ("I don't know.", "Reset your password from the sign-in page."),
    ("Children were playing in the park.", "Kids were playing in the park all afternoon."),
    ("The committee approved the new budget.", "The new budget was approved by the committee."),
    ("Turn left at the second traffic light.", "At the second traffic light, turn left."),
    ("The printer on the third floor is out of paper.", "The third-floor printer has run out of paper."),
    ("We need to finish the report by Friday.", "The report must be finished by Friday."),
    ("The river flooded after heavy rain.", "Heavy rain caused the river to flood."),
    ("My phone battery drains very quickly.", "My phone's battery runs down very fast."),
    ("The train leaves at half past seven.", "The train departs at 7:30."),
    ("They celebrated their anniversary in Paris.", "They celebrated their anniversary in Paris last year."),
    ("The VPN disconnects every few minutes.", "The VPN keeps dropping the connection every few minutes."),
    ("Add the eggs and stir gently.", "Stir in the eggs gently."),
    ("The doctor recommended more sleep and exercise.", "The doctor advised getting more sleep and exercise."),
    ("Prices rose sharply last quarter.", "Prices increased sharply in the last quarter."),
    ("Buy a new laptop.", "Request a replacement laptop through the service catalog."),
    ("The library opens at nine in the morning.", "The library opens at 9 a.m."),
    ("Close all other applications and try again.", "Close the other applications, then try again."),
    ("The package was delivered to the wrong address.", "The parcel went to the wrong address."),
    ("Running every day improves your health.", "Daily running is good for your health."),
    ("Click Forgot password and follow the link in the email.", "Choose Forgot password and follow the emailed link."),
    ("The concert was cancelled because of the storm.", "Because of the storm, the concert was called off."),
    ("", "Check the status page for any ongoing incident."),
]
PREDICTIONS = [p for p, _ in PAIRS]
REFERENCES = [r for _, r in PAIRS]
SECOND_REFERENCES = [r.lower().replace(".", " !") for r in REFERENCES]


def bleu_fields(score) -> dict:
    return {
        "score": score.score, "counts": score.counts, "totals": score.totals, "precisions": score.precisions,
        "bp": score.bp, "sys_len": score.sys_len, "ref_len": score.ref_len,
    }


def test_metric_folders_are_loadable_scripts():
    for name in ("sacrebleu", "rouge"):
        assert (METRICS_DIR / name / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="known metrics: rouge, sacrebleu"):
        load_metric("bleurt")


def test_sacrebleu_matches_the_hub_documentation_example():
    results = load_metric("sacrebleu").compute(
        predictions=["hello there general kenobi", "on our way to ankh morpork"],
        references=[["hello there general kenobi", "hello there !"], ["goodbye ankh morpork", "ankh morpork"]],
    )
    assert list(results) == ["score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"]
    assert round(results["score"], 1) == 39.8


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"tokenize": "intl", "lowercase": True},
        {"tokenize": "char"},
        {"smooth_method": "floor", "smooth_value": 0.2},
        {"smooth_method": "add-k", "smooth_value": 1},
        {"smooth_method": "none", "use_effective_order": True, "force": True},
    ],
    ids=["default", "intl-lowercase", "char", "floor", "add-k", "none-effective-force"],
)
def test_sacrebleu_equals_corpus_bleu(kwargs):
    ours = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=[[r] for r in REFERENCES], **kwargs)
    theirs = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], **kwargs)
    assert ours == bleu_fields(theirs)
    assert 0.0 < ours["score"] < 100.0


def test_sacrebleu_flat_and_multiple_references():
    metric = load_metric("sacrebleu")
    flat = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert flat == bleu_fields(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]))
    two_each = [list(pair) for pair in zip(REFERENCES, SECOND_REFERENCES)]
    multi = metric.compute(predictions=PREDICTIONS, references=two_each)
    assert multi == bleu_fields(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, SECOND_REFERENCES]))
    with pytest.raises(ValueError, match="same number of references"):
        metric.compute(predictions=PREDICTIONS[:2], references=[[REFERENCES[0]], [REFERENCES[1], REFERENCES[0]]])


@pytest.mark.parametrize("use_stemmer", [False, True], ids=["plain", "stemmer"])
def test_rouge_equals_rouge_scorer(use_stemmer):
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    direct = [scorer.score(ref, pred) for pred, ref in zip(PREDICTIONS, REFERENCES)]
    metric = load_metric("rouge")

    per_example = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer, use_aggregator=False
    )
    assert set(per_example) == set(types)
    for key in types:
        assert per_example[key] == [s[key].fmeasure for s in direct]

    aggregated = metric.compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer)
    assert list(aggregated) == types
    for key in types:
        assert aggregated[key] == sum(s[key].fmeasure for s in direct) / len(direct)
    assert 0.0 < aggregated["rougeL"] < 1.0


def test_rouge_types_multiple_references_and_custom_tokenizer():
    metric = load_metric("rouge")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [list(pair) for pair in zip(REFERENCES, SECOND_REFERENCES)]
    ours = metric.compute(predictions=PREDICTIONS, references=refs, rouge_types=["rougeL"], use_aggregator=False)
    assert ours == {"rougeL": [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, refs)]}

    by_whitespace = metric.compute(
        predictions=["Hello, World"], references=["hello world"], rouge_types=["rouge1"], tokenizer=str.split
    )
    assert by_whitespace == {"rouge1": 0.0}  # no default lower-casing or punctuation stripping
    same = ["hello there", "general kenobi"]
    assert metric.compute(predictions=same, references=same) == {
        "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0,
    }


# --- tokenization for the eval set's language (llmops_tasks/metrics/tokenization.py) ---

# (references, answers that overlap them, unrelated answers sharing no token with them, not even punctuation)
LANGUAGES = {
    "zh": (["今天天气很好，我们去公园散步吧。", "请在周五之前完成这份报告。", "图书馆每天早上九点开门。", "他每天早上都看报纸。"],
           ["今天天气很好，我们去公园走走吧。", "请在周五以前完成这份报告。", "图书馆每天上午九点开门。", "他每天早上都读报纸。"],
           ["小狗喜欢吃骨头", "火车已经出发", "电脑需要重新启动", "价格涨了"]),
    "ja": (["今日は天気がとても良いので、公園に行きます。", "金曜日までにこの報告書を完成させてください。",
            "図書館は毎朝九時に開きます。", "彼は毎朝新聞を読みます。"],
           ["今日は天気が良いので、公園に行きました。", "金曜日までに報告書を完成させてください。",
            "図書館は毎朝十時に開きます。", "彼は毎朝新聞を読んでいます。"],
           ["ロボット製造業者", "東京駅前", "赤信号", "野菜スープ"]),
    "ru": (["Сегодня хорошая погода, пойдём гулять в парк.", "Пожалуйста, закончите отчёт до пятницы.",
            "Библиотека открывается каждый день в девять утра.", "Он читает газету каждое утро."],
           ["Сегодня отличная погода, пойдём гулять в парк.", "Пожалуйста, закончите этот отчёт до пятницы.",
            "Библиотека открывается каждый день в десять утра.", "Каждое утро он читает газету."],
           ["Кошка спала", "Поезд отправляется", "Перезагрузите компьютер", "Цены выросли"]),
    "ar": (["الطقس جميل اليوم، لنذهب إلى الحديقة.", "من فضلك أكمل التقرير قبل يوم الجمعة.",
            "تفتح المكتبة كل يوم في الساعة التاسعة صباحا.", "يقرأ الجريدة كل صباح."],
           ["الطقس رائع اليوم، لنذهب إلى الحديقة.", "من فضلك أكمل هذا التقرير قبل يوم الجمعة.",
            "تفتح المكتبة كل يوم في الساعة العاشرة صباحا.", "يقرأ الصحيفة كل صباح."],
           ["القطة نائمة", "انطلق القطار", "أعد تشغيل الحاسوب", "ارتفعت الأسعار"]),
}
EXPECTED = {"zh": ("Han", "zh", "char"), "ja": ("Japanese", "ja-mecab", "char"),
            "ru": ("Cyrillic", "intl", "unicode-words"), "ar": ("Arabic", "intl", "unicode-words")}


@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_non_english_eval_sets_are_measured(language):
    """Overlapping answers score high, unrelated ones exactly 0; rouge_score's default saw nothing in either."""
    from llmops_tasks.evaluate import score
    from llmops_tasks.metrics import tokenization

    references, close, unrelated = LANGUAGES[language]
    chosen = tokenization.choose(references)
    assert (chosen.detected_script, chosen.bleu, chosen.rouge, chosen.source) == (*EXPECTED[language], "auto")
    assert chosen.note == ""  # ja-mecab's MeCab and IPA dictionary are installed (the train extra)
    near, per_example = score(close, references, chosen)
    far, _ = score(unrelated, references, chosen)
    assert near["bleu"] > 0.5 and all(near[k] > 0.6 for k in ("rouge1", "rouge2", "rougeL")), near
    assert all(0.0 < v < 1.0 for v in per_example["rougeL"])
    assert far == {"bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert tokenization.unmeasurable(references, chosen) == {}
    # The numbers are sacrebleu's and rouge_score's own, with the chosen tokenizers.
    assert near["bleu"] == sacrebleu.corpus_bleu(close, [references], tokenize=chosen.bleu).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=rouge_module_tokenizer(chosen.rouge_callable()))
    assert per_example["rougeL"] == [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(close, references)]
    # What the defaults made of it: rouge_score's tokenizer drops every character outside a-z0-9.
    default_rouge = rouge_scorer.RougeScorer(["rougeL"])
    assert all(default_rouge.score(r, p)["rougeL"].fmeasure == 0.0 for p, r in zip(close, references))


def rouge_module_tokenizer(func):
    class Wrapped:
        def tokenize(self, text):
            return func(text)

    return Wrapped()


def test_a_chinese_answer_sharing_11_of_12_characters_is_close_not_zero():
    """The finding: under the defaults BLEU and ROUGE were 0 here."""
    from llmops_tasks.evaluate import score

    reference, answer = "我们明天上午去公园散步吧", "我们明天下午去公园散步吧"
    assert sacrebleu.corpus_bleu([answer], [[reference]]).score == 0.0
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure == 0.0
    scores, _ = score([answer], [reference])
    assert scores["rouge1"] == scores["rougeL"] == pytest.approx(11 / 12)
    # char n-gram precisions 11/12, 9/11, 7/10, 5/9, no brevity penalty
    assert scores["bleu"] == pytest.approx((11 / 12 * 9 / 11 * 7 / 10 * 5 / 9) ** 0.25)


def test_english_stays_exactly_sacrebleu_and_rouge_score_defaults():
    from llmops_tasks.evaluate import score
    from llmops_tasks.metrics import tokenization

    chosen = tokenization.choose(REFERENCES)
    assert (chosen.detected_script, chosen.bleu, chosen.rouge, chosen.source) == ("Latin", "13a", "default", "auto")
    scores, per_example = score(PREDICTIONS, REFERENCES)
    assert scores["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    direct = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert per_example[key] == [s[key].fmeasure for s in direct]
        assert scores[key] == sum(s[key].fmeasure for s in direct) / len(direct)
    assert chosen.record()["bleu_signature"] == "13a"


def test_latin_with_letters_outside_a_z_keeps_its_words_in_rouge():
    from llmops_tasks.metrics import tokenization

    german = ["Ich würde gern über die Brücke gehen.", "Die Größe der Tür ist ungewöhnlich."]
    chosen = tokenization.choose(german)
    assert (chosen.detected_script, chosen.bleu, chosen.rouge) == ("Latin", "13a", "unicode-words")
    assert tokenization.unicode_words("Über die Brücke") == ["über", "die", "brücke"]
    # An English set with a stray accented word keeps rouge_score's default.
    assert tokenization.choose([*REFERENCES, "We met at the café."]).rouge == "default"


def test_script_detection_weighs_words_not_letters():
    from llmops_tasks.metrics import tokenization

    # Japanese with Latin words in it is Japanese; Korean, Thai and text without letters have their own choice.
    assert tokenization.choose(["Pythonのlistをsortする方法を教えてください"]).detected_script == "Japanese"
    korean = tokenization.choose(["오늘은 날씨가 좋아서 공원에 갑니다."])
    assert (korean.detected_script, korean.bleu, korean.rouge) == ("Hangul", "ko-mecab", "char")
    thai = tokenization.choose(["วันนี้อากาศดีมาก ไปเดินเล่นที่สวนกัน"])
    assert (thai.detected_script, thai.bleu, thai.rouge) == ("Thai", "char", "char")
    assert tokenization.choose(["42", "3.14"]).detected_script == "none"
    assert tokenization.chars("データをPythonで処理する。") == ["デ", "ー", "タ", "を", "python", "で", "処", "理", "す", "る"]
    shares = tokenization.choose(["今天很好 ok"]).scripts
    assert shares == {"Han": 0.8, "Latin": 0.2}


def test_recipe_tokenizers_win_over_the_detected_script():
    from llmops_tasks.evaluate import score
    from llmops_tasks.metrics import tokenization

    references, close, _ = LANGUAGES["zh"]
    both = tokenization.choose(references, bleu="char", rouge="unicode-words")
    assert (both.bleu, both.rouge, both.detected_script, both.source) == ("char", "unicode-words", "Han", "recipe")
    assert "set in the evaluation recipe" in both.summary()
    one = tokenization.choose(references, rouge="default")
    assert (one.bleu, one.rouge, one.source) == ("zh", "default", "bleu auto, rouge recipe")
    scores, _ = score(close, references, both)
    assert scores["bleu"] == sacrebleu.corpus_bleu(close, [references], tokenize="char").score / 100
    with pytest.raises(ValueError, match="unknown BLEU tokenizer 'moses'"):
        tokenization.choose(references, bleu="moses")


def test_without_mecab_japanese_falls_back_to_characters(monkeypatch):
    """A machine without MeCab cannot exist here (the train extra installs it): its check is faked."""
    from llmops_tasks.metrics import tokenization

    monkeypatch.setattr(tokenization, "bleu_available", lambda name: f"sacrebleu tokenizer {name!r} needs MeCab")
    references = LANGUAGES["ja"][0]
    chosen = tokenization.choose(references)
    assert (chosen.bleu, chosen.rouge) == ("char", "char")
    assert "BLEU uses 'char' instead" in chosen.note and chosen.note in chosen.summary()
    with pytest.raises(ValueError, match="recipe's BLEU tokenizer.*not installed"):
        tokenization.choose(references, bleu="ja-mecab")


def test_a_metric_without_reference_tokens_is_unmeasurable_not_zero():
    from llmops_tasks.metrics import tokenization

    references = LANGUAGES["zh"][0]
    # rouge_score's default tokenizer on Chinese: no reference token, so ROUGE can only read 0.
    forced = tokenization.choose(references, rouge="default")
    found = tokenization.unmeasurable(references, forced)
    assert set(found) == {"rouge1", "rouge2", "rougeL"}
    assert found["rougeL"].startswith("no reference has a token under ROUGE tokenizer 'default'")
    empty = tokenization.choose(["", " "])
    assert set(tokenization.unmeasurable(["", " "], empty)) == {"bleu", "rouge1", "rouge2", "rougeL"}
    # One-token references: no bigram to match, so ROUGE-2 alone cannot measure.
    single = tokenization.choose(["yes", "no"])
    assert set(tokenization.unmeasurable(["yes", "no"], single)) == {"rouge2"}
    # An answer with no tokens against references that have some is a real 0, not a degenerate metric.
    from llmops_tasks.evaluate import score

    assert score(["", ""], references[:2])[0]["rougeL"] == 0.0
    assert tokenization.unmeasurable(references[:2], tokenization.choose(references[:2])) == {}
