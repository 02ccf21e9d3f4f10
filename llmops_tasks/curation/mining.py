"""From votes on traced answers to training rows, column-wise (pandas): pairs, KTO rows, SFT rows.

Input: ``answers`` (one row per trace: ``trace_id``, ``prompt_key``, ``prompt``, ``answer``) and
``votes`` (one row per valid assessment: ``trace_id``, ``name``, ``value``, ``by``, ``created_ms``).
The rules, in order:

1. One vote per person: per (trace, name, person) the latest counts (MLflow's overrides already
   mark replaced ones invalid; this also covers clients that log a second assessment instead).
2. Conflicts are dropped, never resolved by a majority: a trace whose thumbs disagree (someone up,
   someone down); a trace whose ratings differ by ``rating_gap`` or more; a pairwise choice made
   both ways (A over B and B over A: both dropped). Otherwise a trace's thumbs is the common
   value and its rating the mean of its raters'.
3. Pairs (``prompt``, ``chosen``, ``rejected``): a correction (chosen = the correction, rejected =
   the model's answer; a correction equal to the answer is dropped); a pairwise choice between two
   answers to the same prompt (``prompt_key``); same-prompt answers with opposite thumbs, and with
   ratings ``rating_gap`` or more apart (higher = chosen); at most ``max_pairs_per_prompt`` of each
   per prompt, and never two equal answers.
4. Thumbs not used in a pair become KTO rows (``prompt``, ``completion``, ``label``); every kept
   correction is also an SFT row (``prompt``, ``completion``). Ratings not in a pair are unused.

``created_ms`` of a row is the newest vote it rests on (the retention window counts from it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llmops_tasks import feedback

PAIR_COLUMNS = ["prompt_of", "chosen", "rejected", "source", "created_ms", "trace_ids"]


def _empty(columns: list[str]):
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def latest_votes(votes):
    """Rule 1: the newest vote of each person per trace and name."""
    ordered = votes.sort_values("created_ms", kind="stable")
    return ordered.drop_duplicates(["trace_id", "name", "by"], keep="last")


def _capped(frame, cap: int):
    """At most ``cap`` rows per prompt (the first ones: oldest traces first)."""
    return frame[frame.groupby("prompt_key").cumcount() < cap]


def mine(answers, votes, *, rating_gap: int, max_pairs_per_prompt: int) -> dict[str, Any]:
    """``{"pairs", "kto", "sft"}`` frames (prompt by its trace: ``prompt_of``) and ``dropped`` (reason -> count)."""
    import pandas as pd

    dropped: Counter = Counter()
    # ids as Python objects: pandas' hash tables take them directly, Arrow strings go value by value
    answers = answers.astype({"trace_id": object, "prompt_key": object})
    votes = latest_votes(votes.astype({"trace_id": object}))
    answer_of = answers.set_index("trace_id")["answer"]
    key_of = answers.set_index("trace_id")["prompt_key"]
    pairs = []

    # --- thumbs per trace (rule 2)
    thumbs = votes[votes["name"] == feedback.THUMBS].copy()
    thumbs["up"] = thumbs["value"].astype(bool)
    per_trace = thumbs.groupby("trace_id").agg(low=("up", "min"), high=("up", "max"), created_ms=("created_ms", "max"))
    conflict = per_trace["low"] != per_trace["high"]
    dropped["thumbs: raters disagree (trace dropped)"] += int(conflict.sum())
    trace_thumbs = per_trace[~conflict].reset_index()
    trace_thumbs["up"] = trace_thumbs["high"].astype(bool)
    trace_thumbs["prompt_key"] = trace_thumbs["trace_id"].map(key_of)
    trace_thumbs["answer"] = trace_thumbs["trace_id"].map(answer_of)

    # --- ratings per trace (rule 2)
    ratings = votes[votes["name"] == feedback.RATING].copy()
    ratings["rating"] = pd.to_numeric(ratings["value"], errors="coerce")
    dropped["rating: not a number"] += int(ratings["rating"].isna().sum())
    ratings = ratings.dropna(subset=["rating"])
    per_rating = ratings.groupby("trace_id").agg(low=("rating", "min"), high=("rating", "max"),
                                                 rating=("rating", "mean"), created_ms=("created_ms", "max"))
    rating_conflict = (per_rating["high"] - per_rating["low"]) >= rating_gap
    dropped["rating: raters differ by rating_gap or more (trace dropped)"] += int(rating_conflict.sum())
    trace_ratings = per_rating[~rating_conflict].reset_index()
    trace_ratings["prompt_key"] = trace_ratings["trace_id"].map(key_of)
    trace_ratings["answer"] = trace_ratings["trace_id"].map(answer_of)

    # --- corrections (rule 3) and SFT rows (rule 4)
    corrections = votes[votes["name"] == feedback.CORRECTION].copy()
    corrections["chosen"] = corrections["value"].astype(str).str.strip()
    corrections["rejected"] = corrections["trace_id"].map(answer_of)
    same = corrections["chosen"] == corrections["rejected"].astype(str).str.strip()
    dropped["correction: equals the model's answer"] += int(same.sum())
    corrections = corrections[~same & (corrections["chosen"] != "")]
    repeats = corrections.duplicated(["trace_id", "chosen"])
    dropped["correction: the same text twice on a trace"] += int(repeats.sum())
    corrections = corrections[~repeats]
    pairs.append(pd.DataFrame({
        "prompt_of": corrections["trace_id"], "chosen": corrections["chosen"], "rejected": corrections["rejected"],
        "source": "correction", "created_ms": corrections["created_ms"],
        "trace_ids": [[t] for t in corrections["trace_id"]]}))
    sft = pd.DataFrame({"prompt_of": corrections["trace_id"], "completion": corrections["chosen"],
                        "source": "correction", "created_ms": corrections["created_ms"],
                        "trace_ids": [[t] for t in corrections["trace_id"]]})

    # --- pairwise choices (rules 2 and 3)
    choices = votes[votes["name"] == feedback.PREFERRED_OVER].copy()
    choices["loser"] = choices["value"].astype(str).astype(object)
    choices = choices.groupby(["trace_id", "loser"], as_index=False)["created_ms"].max()
    both_ways = choices.merge(choices, left_on=["trace_id", "loser"], right_on=["loser", "trace_id"])
    contested = _ids(both_ways["trace_id_x"], both_ways["loser_x"])
    contested_rows = choices["trace_id"].isin(contested) & choices["loser"].isin(contested)
    dropped["pairwise: chosen both ways (both dropped)"] += int(contested_rows.sum())
    choices = choices[~contested_rows]
    known = choices["loser"].isin(answer_of.index)
    dropped["pairwise: the other trace was not found"] += int((~known).sum())
    choices = choices[known]
    same_prompt = choices["trace_id"].map(key_of).to_numpy() == choices["loser"].map(key_of).to_numpy()
    dropped["pairwise: the two answers are to different prompts"] += int((~same_prompt).sum())
    choices = choices[same_prompt]
    pairs.append(pd.DataFrame({
        "prompt_of": choices["trace_id"], "chosen": choices["trace_id"].map(answer_of),
        "rejected": choices["loser"].map(answer_of), "source": "pairwise", "created_ms": choices["created_ms"],
        "trace_ids": [[w, b] for w, b in zip(choices["trace_id"], choices["loser"])]}))

    # --- same-prompt answers with opposite thumbs (rule 3), the rest as KTO rows (rule 4)
    ups = trace_thumbs[trace_thumbs["up"]]
    downs = trace_thumbs[~trace_thumbs["up"]]
    opposite = ups.merge(downs, on="prompt_key", suffixes=("_c", "_r"))
    opposite = opposite[opposite["answer_c"].astype(str).str.strip() != opposite["answer_r"].astype(str).str.strip()]
    opposite = _capped(opposite, max_pairs_per_prompt)
    pairs.append(_pairs_from(opposite, "thumbs"))
    used = _ids(opposite["trace_id_c"], opposite["trace_id_r"])
    single = trace_thumbs[~trace_thumbs["trace_id"].isin(used)]
    kto = pd.DataFrame({"prompt_of": single["trace_id"], "completion": single["answer"], "label": single["up"],
                        "source": "thumbs", "created_ms": single["created_ms"],
                        "trace_ids": [[t] for t in single["trace_id"]]})

    # --- same-prompt ratings far enough apart (rule 3)
    apart = trace_ratings.merge(trace_ratings, on="prompt_key", suffixes=("_c", "_r"))
    apart = apart[(apart["rating_c"] - apart["rating_r"]) >= rating_gap]
    apart = apart[apart["answer_c"].astype(str).str.strip() != apart["answer_r"].astype(str).str.strip()]
    apart = _capped(apart, max_pairs_per_prompt)
    pairs.append(_pairs_from(apart, "rating"))
    paired_ratings = _ids(apart["trace_id_c"], apart["trace_id_r"])
    dropped["rating: no answer to the same prompt rated rating_gap apart"] += int(
        (~trace_ratings["trace_id"].isin(paired_ratings)).sum())

    frames = [p for p in pairs if len(p)]
    all_pairs = pd.concat(frames, ignore_index=True) if frames else _empty(PAIR_COLUMNS)
    return {"pairs": all_pairs, "kto": kto.reset_index(drop=True), "sft": sft.reset_index(drop=True),
            "dropped": {k: v for k, v in dropped.items() if v}}


def _ids(*columns):
    """The distinct values of some id columns, as an array (iterating an Arrow-backed column into a
    Python set costs a call per value)."""
    import numpy as np
    import pandas as pd

    return pd.unique(np.concatenate([c.to_numpy(dtype=object) for c in columns])) if columns else []


def _pairs_from(merged, source: str):
    import numpy as np
    import pandas as pd

    return pd.DataFrame({
        "prompt_of": merged["trace_id_c"].to_numpy(), "chosen": merged["answer_c"].to_numpy(),
        "rejected": merged["answer_r"].to_numpy(), "source": source,
        "created_ms": np.maximum(merged["created_ms_c"].to_numpy(), merged["created_ms_r"].to_numpy()),
        "trace_ids": [[c, r] for c, r in zip(merged["trace_id_c"], merged["trace_id_r"])]})
