"""The ``curate`` step's settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from llmops_tasks.core import settings
from llmops_tasks.core.config import field, require
from llmops_tasks.text import pii

# Where each kind of row came from (the ``source`` column).
SOURCES = ("base", "correction", "pairwise", "thumbs", "rating")


@dataclasses.dataclass
class CurateConfig:
    """Settings of ``llmops curate``: traced feedback -> a validated, versioned preference snapshot."""

    experiment: str = field("", help="traffic experiment the production traces are in "
                                     "(default: $LLMOPS_TRAFFIC_EXPERIMENT, else <model name>-traffic)")
    snapshot_root: str = field("", path="output",
                               help="folder of the versioned snapshots v0001-<hash>/ "
                                    "(default: {artifact_root}/datasets/preference)")
    base_dataset: str = field("", path="input", keywords=("none",),
                              help="preference data set (JSONL or Parquet) the first snapshot starts from "
                                   "(default: the embedded sample set when it exists; none = no base)")
    policy: str = field("", path="config",
                        help="validate policy the snapshot must pass, a path or a packaged policy's name "
                             "(default: the packaged validate_preference.yaml, as any training data)")
    report_dir: str = field("", path="output", help="folder of this run's report.html "
                                                    "(default: the run's curate step folder)")
    retention_days: int = field(90, help="feedback rows older than this many days leave the snapshot "
                                         "(base rows stay); 0 = keep all")
    rating_gap: int = field(2, help="two ratings of answers to the same prompt make a pair when they differ by "
                                    "at least this; a trace whose raters differ by this much is a conflict")
    max_pairs_per_prompt: int = field(8, help="most pairs mined from the thumbs (or ratings) of one prompt")
    max_traces: int = field(200_000, help="most traces read in one run (the watermark moves on by what was "
                                          "read); 0 = no limit")
    lookback_hours: float = field(0.0, help="also re-read traces this long before the watermark, for feedback "
                                            "given after the last run (rows already in a snapshot are not "
                                            "added twice)")
    page_size: int = field(500, help="traces fetched per search request (1-500: the MLflow server's limit)")
    pii_mode: Literal["redact", "block"] = field("redact", help="personal data found: redact it "
                                                          "([REDACTED kind]) or drop the row")
    pii_kinds: list[str] = field(default_factory=lambda: list(pii.KINDS),
                                 help=f"kinds of personal data and secrets to act on ({', '.join(pii.KINDS)})")
    data_docs: bool = field(False, help="also build the validation's Great Expectations Data Docs")
    json: bool = field(False, help="print only the JSON result")

    def __post_init__(self) -> None:
        require(self.retention_days >= 0, f"retention_days: expected 0 (keep all) or more, got {self.retention_days}")
        require(self.rating_gap >= 1, f"rating_gap: expected 1 or more, got {self.rating_gap}")
        require(self.max_pairs_per_prompt >= 1,
                f"max_pairs_per_prompt: expected 1 or more, got {self.max_pairs_per_prompt}")
        require(self.max_traces >= 0, f"max_traces: expected 0 (no limit) or more, got {self.max_traces}")
        require(self.lookback_hours >= 0, f"lookback_hours: expected 0 or more, got {self.lookback_hours}")
        require(1 <= self.page_size <= 500, f"page_size: expected 1 to 500 (the MLflow server's limit), got "
                                            f"{self.page_size}")
        unknown = sorted(set(self.pii_kinds) - set(pii.KINDS))
        require(not unknown, f"pii_kinds: unknown kind(s) {unknown}; known kinds are {list(pii.KINDS)}")
        self.policy = self.policy or settings.packaged_policy("validate_preference.yaml")
