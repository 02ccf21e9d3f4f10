"""PII and secret detectors: each kind found where it is, and look-alikes left alone."""

from __future__ import annotations

import pytest

from llmops_tasks.text import pii

pytestmark = pytest.mark.unit

TRUE_POSITIVES = [
    ("email", "Write to jane.doe+billing@example.co.uk today"),
    ("phone", "call +1 415 555 2671 after six"),
    ("phone", "office: (415) 555-2671"),
    ("phone", "mobile +44 20 7946 0958"),
    ("credit_card", "card 4111 1111 1111 1111 was declined"),
    ("credit_card", "Amex 378282246310005 on file"),
    ("credit_card", "5555-5555-5555-4444"),
    ("iban", "pay to GB82 WEST 1234 5698 7654 32 please"),
    ("iban", "IBAN DE89370400440532013000"),
    ("ipv4", "the server at 192.168.10.254 is down"),
    ("ipv6", "ping 2001:db8::8a2e:370:7334 now"),
    ("ipv6", "link-local fe80::1ff:fe23:4567:890a"),
    ("aws_access_key", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE"),
    ("github_token", "token ghp_" + "A1b2C3d4E5" * 3 + "abcdef"),
    ("slack_token", "SLACK=xoxb-123456789012-abcdefghijklmn"),
    ("openai_key", "OPENAI_API_KEY=sk-proj-" + "Ab12Cd34Ef56Gh78Ij90"),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow..."),
    ("private_key", "-----BEGIN PRIVATE KEY-----"),
    ("jwt", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
]

FALSE_POSITIVES = [
    "restart service 12 and wait 30 seconds",
    "order number 4111 1111 1111 1112 (fails the Luhn check)",
    "0000 0000 0000 0000",
    "GB82 WEST 1234 5698 7654 33 (wrong IBAN check digits)",
    "version 1.2.3.4567 of the library",
    "999.999.1.1 is not an address",
    "the meeting is at 12:30:45",
    "use std::vector in C++",
    "a::b",
    "the year 2024 had 365 days and 12345 users",
    "email me @ the office",
    "skill-based routing and task-oriented sk-ills",
    "a plain sentence about keys and tokens",
    "AKIA is a prefix but AKIA123 is too short",
    "ratio 3.14 and 2.71",
]


@pytest.mark.parametrize(("kind", "text"), TRUE_POSITIVES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(TRUE_POSITIVES)])
def test_detects(kind, text):
    assert kind in pii.kinds_in(text)


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_leaves_look_alikes_alone(text):
    assert pii.kinds_in(text) == []


def test_hit_positions_and_one_kind_per_span():
    text = "card 4111 1111 1111 1111, mail a@b.io"
    hits = pii.find(text)
    assert [(h.kind, text[h.start:h.end]) for h in hits] == [("credit_card", "4111 1111 1111 1111"),
                                                             ("email", "a@b.io")]


def test_kinds_filter():
    text = "mail a@b.io from 10.0.0.1"
    assert pii.kinds_in(text, ["ipv4"]) == ["ipv4"]
    assert pii.kinds_in(text) == ["email", "ipv4"]


def test_checksums():
    assert pii.luhn_valid("79927398713") and not pii.luhn_valid("79927398710")
    assert pii.iban_valid("GB82 WEST 1234 5698 7654 32") and not pii.iban_valid("GB82 WEST 1234 5698 7654 31")
    assert not pii.iban_valid("GB82")


def test_mask_keeps_only_a_prefix():
    assert pii.mask("jane.doe@example.com") == "jane…"


def test_candidate_pattern_finds_every_text_with_a_hit():
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = [text for _, text in TRUE_POSITIVES] + FALSE_POSITIVES + ["mail a@b.io from 10.0.0.1", "", None]
    for kind in pii.KINDS:
        matched = pc.match_substring_regex(pa.array(texts, pa.string()), pii.candidate_pattern([kind])).to_pylist()
        for text, flag in zip(texts, matched):
            if text is not None and kind in pii.kinds_in(text):
                assert flag, (kind, text)
    found = pii.kinds_in_texts(pa.array(texts, pa.string()))
    assert found == {i: pii.kinds_in(t) for i, t in enumerate(texts) if t is not None and pii.kinds_in(t)}
    server = texts.index("the server at 192.168.10.254 is down")
    assert pii.kinds_in_texts(pa.array(texts, pa.string()), ["ipv4"]) == {server: ["ipv4"], len(texts) - 3: ["ipv4"]}


def test_re2_digits_cover_the_digits_of_python():
    """The candidate patterns use RE2's ``\\p{Nd}`` for Python's ``\\d``: with Unicode tables of different
    ages a digit Python knows could be missed by the pre-scan, and its PII with it."""
    import re

    import pyarrow as pa
    import pyarrow.compute as pc

    digits = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and re.fullmatch(r"\d", chr(c))]
    matched = pc.match_substring_regex(pa.array(digits, pa.string()), r"^\p{Nd}$").to_pylist()
    assert [d for d, hit in zip(digits, matched) if not hit] == []
