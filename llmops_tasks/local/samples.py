"""The embedded sample data set: an IT help-desk assistant's preference pairs.

The project generates it itself (no dataset hub is needed): every prompt asks how to do one task
on one internal system, ``chosen`` is the precise, helpful answer and ``rejected`` is the kind of
answer a reviewer marks down (vague, wrong system, or dismissive). It is deterministic, so the
content hash, and therefore the lineage of every model trained on it, is stable.
"""

from __future__ import annotations

import random
from pathlib import Path

from llmops_tasks.core import data, settings

SYSTEMS = [
    "VPN", "email", "HR portal", "payroll app", "wiki", "expense tool", "laptop", "printer",
    "code repository", "calendar", "ticket system", "badge reader",
]

# intent -> (prompt phrasings, helpful answer template)
INTENTS = {
    "reset": (
        ["How do I reset my password for the {s}?", "I forgot my {s} password, what should I do?",
         "Can you help me reset the {s} password?"],
        "Open the {s} sign-in page, choose Forgot password, and follow the link sent to your work email.",
    ),
    "access": (
        ["How do I get access to the {s}?", "Who approves access to the {s}?",
         "I need access to the {s}, how do I request it?"],
        "Request {s} access in the self-service catalog; your manager approves it within one business day.",
    ),
    "outage": (
        ["The {s} is down, what should I do?", "Is the {s} having an outage?",
         "The {s} stopped working for me, how do I report it?"],
        "Check the status page for the {s}, and if it shows no incident, open a priority ticket with the error.",
    ),
    "install": (
        ["How do I set up the {s} on a new machine?", "What are the steps to install the {s}?",
         "I got a new computer, how do I configure the {s}?"],
        "Install the {s} from the software center, sign in with your work account, and restart once.",
    ),
    "lock": (
        ["My {s} account is locked, how do I unlock it?", "Why is my {s} account locked?",
         "The {s} says my account is locked, what now?"],
        "Wait fifteen minutes for the {s} lock to clear, or call the help desk to unlock it after identity checks.",
    ),
    "slow": (
        ["Why is the {s} so slow today?", "The {s} is very slow, can you help?",
         "How can I make the {s} faster?"],
        "Close other sessions of the {s}, clear its cache, and open a ticket if it stays slow for an hour.",
    ),
}

REJECTED = [
    "I don't know, ask someone else.",
    "Just restart everything and hope it works.",
    "That is not my problem, figure it out yourself.",
    "Try turning the {other} off and on again.",
    "You need to buy a new {other}.",
]

SOURCES = ["helpdesk-tickets", "chat-transcripts", "reviewer-written"]


def preference_rows(seed: int = 7) -> list[dict]:
    """All prompt/chosen/rejected pairs, with id, source and created_at."""
    rng = random.Random(seed)
    rows = []
    for intent, (phrasings, answer) in INTENTS.items():
        for system in SYSTEMS:
            for variant, phrasing in enumerate(phrasings):
                other = rng.choice([s for s in SYSTEMS if s != system])
                rejected = rng.choice(REJECTED).format(other=other)
                rows.append(
                    {
                        "id": f"{intent}-{system.replace(' ', '_')}-{variant}",
                        "prompt": phrasing.format(s=system),
                        "chosen": answer.format(s=system),
                        "rejected": rejected,
                        "source": SOURCES[(len(rows) + variant) % len(SOURCES)],
                        "created_at": f"2026-10-{1 + len(rows) % 28:02d}T09:00:00Z",
                    }
                )
    rng.shuffle(rows)
    return rows


def ensure_sample_data(directory: Path | None = None) -> Path:
    """Write ``preference.jsonl`` under the home folder once; return its path."""
    directory = directory or settings.sample_data_dir()
    path = directory / "preference.jsonl"
    if not path.exists():
        data.write_jsonl(str(path), preference_rows())
    return path


def corpus_text() -> list[str]:
    """Every string the tokenizer of the tiny demo model is trained on."""
    texts = []
    for row in preference_rows():
        texts.extend([row["prompt"], row["chosen"], row["rejected"]])
    return texts
