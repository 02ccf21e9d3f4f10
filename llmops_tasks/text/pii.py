"""Find personal data and secrets in training text before a model memorises them.

Detectors are regular expressions confirmed by a checksum or a parser where the shape allows it
(Luhn for card numbers, ISO 13616 mod-97 for IBANs, :mod:`ipaddress` for IP addresses), which
keeps false positives such as order numbers and version strings out. Written here rather than
taken from a library: the well-kept ones (Presidio, scrubadub) need spaCy models downloaded from
the internet, which a pipeline worker cannot count on. Each detector has a cheap trigger test so
that text without an ``@``, a long digit run or a key prefix costs a few substring scans.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# The kinds of hit, in the order reports list them.
KINDS = (
    "email", "phone", "credit_card", "iban", "ipv4", "ipv6",
    "aws_access_key", "github_token", "slack_token", "openai_key", "private_key", "jwt",
)


@dataclass(frozen=True)
class Hit:
    kind: str
    start: int
    end: int
    text: str


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# International (+CC ...) or North-American style numbers; at least 10 digits in total.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_AWS = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{50,255})\b")
_SLACK = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")
_OPENAI = re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}\b")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_LONG_DIGITS = re.compile(r"\d[\d -]{8,}\d")  # cards, IBANs and most phone numbers hold one
# Long digit runs (cards, IBANs, phones), "(415)" area codes, and dotted digits (IPv4).
_DIGIT_TRIGGER = re.compile(r"\d(?:[\d -]{8,}\d|\.\d)|\(\d{3}\)")


def _card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def _phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 10 <= digits <= 15


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6(text: str) -> bool:
    # "a::b" parses as an address but is more often code (std::map); ask for a real-looking one.
    if len(text) < 6 or not any(c.isdigit() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern
    trigger: str  # the name of the cheap test (see :func:`_triggers`) that must pass first
    confirm: Callable[[str], bool] | None = None


DETECTORS: tuple[Detector, ...] = (
    Detector("email", _EMAIL, "at"),
    Detector("credit_card", _CARD, "long_digits", _card),
    Detector("iban", _IBAN, "long_digits", iban_valid),
    Detector("phone", _PHONE, "phone", _phone),
    Detector("ipv4", _IPV4, "dotted_digits", _ipv4),
    Detector("ipv6", _IPV6, "colons", _ipv6),
    Detector("aws_access_key", _AWS, "aws"),
    Detector("github_token", _GITHUB, "underscore"),
    Detector("slack_token", _SLACK, "slack"),
    Detector("openai_key", _OPENAI, "openai"),
    Detector("private_key", _PRIVATE_KEY, "private_key"),
    Detector("jwt", _JWT, "jwt"),
)


# For scanning many texts at once (RE2, as pyarrow.compute runs it): per kind, a pattern that
# matches every text in which :func:`find` can report that kind (the detector's pattern without
# look-arounds and word boundaries, or its trigger). Only texts it matches are scanned by
# :func:`find`, so a million clean rows cost one pass of compiled RE2 per column.
# ``\p{Nd}`` is Python's Unicode ``\d``.
CANDIDATES = {
    "email": r"[A-Za-z0-9._%+\-]@[A-Za-z0-9\-]+\.[A-Za-z0-9\-]",
    "phone": r"\p{Nd}[\p{Nd} \-]{8,}\p{Nd}|\(\p{Nd}{3}\)",
    "credit_card": r"\p{Nd}(?:[ \-]?\p{Nd}){12}",
    "iban": r"[A-Z]{2}\p{Nd}{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4}",
    "ipv4": r"\p{Nd}\.\p{Nd}+\.\p{Nd}+\.\p{Nd}",
    "ipv6": r":[0-9A-Fa-f]{0,4}:",
    "aws_access_key": r"(?:AKIA|ASIA)[0-9A-Z]{16}",
    "github_token": r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50}",
    "slack_token": r"xox[abposr]-[A-Za-z0-9\-]{10}",
    "openai_key": r"sk-[A-Za-z0-9_\-]{20}",
    "private_key": r"PRIVATE KEY-----",
    "jwt": r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ",
}


def candidate_pattern(kinds: Iterable[str] | None = None) -> str:
    """One RE2 pattern matching every text where :func:`find` may report one of ``kinds``
    (a superset: the caller confirms each match with :func:`kinds_in`)."""
    wanted = KINDS if kinds is None else [k for k in KINDS if k in set(kinds)]
    return "|".join(f"(?:{CANDIDATES[kind]})" for kind in wanted)


def kinds_in_texts(texts, kinds: Iterable[str] | None = None) -> dict[int, list[str]]:
    """``{row: kinds_in(text, kinds)}`` for the texts of a pyarrow string array that hold a hit.

    RE2 picks the few texts that may hold one in a single vectorized pass; only those are
    scanned in Python, so the result is exactly what :func:`kinds_in` says row by row.
    """
    import numpy as np
    import pyarrow.compute as pc

    kinds = list(KINDS if kinds is None else kinds)
    if not kinds or not len(texts):
        return {}
    flags = pc.fill_null(pc.match_substring_regex(texts, candidate_pattern(kinds)), False)
    rows = np.flatnonzero(flags.to_numpy(zero_copy_only=False))
    found = {}
    for row, text in zip(rows.tolist(), texts.take(rows).to_pylist() if len(rows) else []):
        hit = kinds_in(text, kinds)
        if hit:
            found[row] = hit
    return found


def _triggers(text: str) -> set[str]:
    """The cheap tests ``text`` passes: substring checks run in C, and at most three small regexes.
    Most text passes none, and then no detector's pattern runs at all."""
    found = set()
    if "@" in text:
        found.add("at")
    for match in _DIGIT_TRIGGER.finditer(text):  # one scan for the three digit shapes
        shape = match.group(0)
        if shape[0] == "(":
            found.add("phone")
        elif "." in shape:
            found.add("dotted_digits")
        else:
            found.update(("long_digits", "phone"))
    if "::" in text or text.count(":") >= 3:
        found.add("colons")
    for name, marker in (("aws", "AKIA"), ("aws", "ASIA"), ("underscore", "_"), ("slack", "xox"),
                         ("openai", "sk-"), ("private_key", "PRIVATE KEY"), ("jwt", "eyJ")):
        if marker in text:
            found.add(name)
    return found


def find(text: str, kinds: Iterable[str] | None = None) -> list[Hit]:
    """Every hit in ``text``, by position; a span claimed by an earlier detector is not reused
    (a card number is not also a phone number)."""
    passed = _triggers(text)
    if not passed:
        return []
    wanted = set(KINDS if kinds is None else kinds)
    hits: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for detector in DETECTORS:
        if detector.kind not in wanted or detector.trigger not in passed:
            continue
        for match in detector.pattern.finditer(text):
            start, end = match.span()
            if any(start < e and s < end for s, e in taken):
                continue
            value = match.group(0)
            if detector.confirm is not None and not detector.confirm(value):
                continue
            hits.append(Hit(detector.kind, start, end, value))
            taken.append((start, end))
    return sorted(hits, key=lambda h: h.start)


def kinds_in(text: str, kinds: Iterable[str] | None = None) -> list[str]:
    """The sorted distinct kinds found in ``text`` (what a validation rule needs)."""
    return sorted({hit.kind for hit in find(text, kinds)})


def mask(value: str, keep: int = 4) -> str:
    """A hit as it may appear in a report: its kind is known, its value is not repeated."""
    return value[:keep] + "…" if len(value) > keep else "…"
