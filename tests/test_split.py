"""The split step on the embedded help-desk preference data: stable, leak-free, well-formed outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_tasks.core import data
from llmops_tasks.core.config import ConfigError
from llmops_tasks.core.errors import StepFailed
from llmops_tasks.local import samples
from llmops_tasks.split import SplitConfig, run
from llmops_tasks.text.records import prompt_key

pytestmark = pytest.mark.unit

OUTPUTS = ("train_preference", "train_sft", "eval")
KEPT = {"id", "source"}  # carried through; created_at is not
COLUMNS = {
    "train_preference": {"prompt", "chosen", "rejected"} | KEPT,
    "train_sft": {"prompt", "completion"} | KEPT,
    "eval": {"prompt", "reference", "chosen", "rejected"} | KEPT,
}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def write(path: Path, rows: list[dict]) -> str:
    data.write_jsonl(str(path), rows)
    return str(path)


@pytest.fixture
def dataset(tmp_path) -> str:
    return write(tmp_path / "preference.jsonl", samples.preference_rows())


def split(dataset: str, out_dir: Path, **settings) -> dict:
    return run(SplitConfig(dataset=dataset, out_dir=str(out_dir), **settings))


def rows_of(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def prompts_of(path: str) -> set[str]:
    return {prompt_key(row["prompt"]) for row in rows_of(path)}


def test_same_input_gives_byte_identical_outputs(dataset, tmp_path):
    first = split(dataset, tmp_path / "a")
    second = split(dataset, tmp_path / "b")
    for name in OUTPUTS:
        assert Path(first[name]).read_bytes() == Path(second[name]).read_bytes(), name
    assert first["eval_hash"] == second["eval_hash"]
    assert (first["train_rows"], first["eval_rows"]) == (second["train_rows"], second["eval_rows"])


def test_rerun_into_the_same_folder_rewrites_the_same_bytes(dataset, tmp_path):
    first = split(dataset, tmp_path / "out")
    before = {name: Path(first[name]).read_bytes() for name in OUTPUTS}
    split(dataset, tmp_path / "out")
    assert {name: Path(first[name]).read_bytes() for name in OUTPUTS} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.jsonl" for n in OUTPUTS)


def test_every_row_lands_on_exactly_one_side(dataset, tmp_path):
    result = split(dataset, tmp_path / "out")
    train_ids = [r["id"] for r in rows_of(result["train_preference"])]
    eval_ids = [r["id"] for r in rows_of(result["eval"])]
    assert sorted(train_ids + eval_ids) == sorted(r["id"] for r in samples.preference_rows())
    assert [r["id"] for r in rows_of(result["train_sft"])] == train_ids
    assert (result["train_rows"], result["eval_rows"]) == (len(train_ids), len(eval_ids))


def test_no_prompt_is_on_both_sides(dataset, tmp_path):
    result = split(dataset, tmp_path / "out")
    assert prompts_of(result["train_preference"]).isdisjoint(prompts_of(result["eval"]))


def test_case_and_whitespace_variants_of_a_prompt_stay_on_one_side(tmp_path):
    rows = samples.preference_rows()
    variants = []
    for i, row in enumerate(rows):
        variants.append({**row, "id": f"upper-{i}", "prompt": f"  {row['prompt'].upper()}  "})
        variants.append({**row, "id": f"spaced-{i}", "prompt": row["prompt"].replace(" ", " \t ")})
        variants.append({**row, "id": f"chat-{i}",
                         "prompt": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": row["prompt"].lower()}]})
    result = split(write(tmp_path / "dupes.jsonl", rows + variants), tmp_path / "out")

    side = {}
    for name in ("train_preference", "eval"):
        for row in rows_of(result[name]):
            side.setdefault(prompt_key(row["prompt"]), set()).add(name)
    assert len(side) == len(rows)  # the variants collapse onto the original prompts
    assert all(len(sides) == 1 for sides in side.values()), [p for p, s in side.items() if len(s) > 1]
    assert result["train_rows"] + result["eval_rows"] == 4 * len(rows)


def test_the_three_files_have_the_right_columns(dataset, tmp_path):
    result = split(dataset, tmp_path / "out")
    for name in OUTPUTS:
        rows = rows_of(result[name])
        assert rows, name
        assert all(set(row) == COLUMNS[name] for row in rows), (name, rows[0])


def test_outputs_carry_the_source_texts(dataset, tmp_path):
    result = split(dataset, tmp_path / "out")
    by_id = {row["id"]: row for row in samples.preference_rows()}
    for row in rows_of(result["train_sft"]):
        assert row["completion"] == by_id[row["id"]]["chosen"] and row["prompt"] == by_id[row["id"]]["prompt"]
    for row in rows_of(result["eval"]):
        source = by_id[row["id"]]
        assert (row["reference"], row["chosen"], row["rejected"]) == (source["chosen"], source["chosen"],
                                                                      source["rejected"])


def test_result_names_the_files_and_hashes_the_eval_set(dataset, tmp_path):
    result = split(dataset, tmp_path / "out")
    assert {name: Path(result[name]) for name in OUTPUTS} == {
        name: tmp_path / "out" / f"{name}.jsonl" for name in OUTPUTS
    }
    assert result["eval_hash"] == data.content_hash(result["eval"])


def test_eval_fraction_sets_the_share_of_prompts_held_out(dataset, tmp_path):
    total = len(samples.preference_rows())
    small = split(dataset, tmp_path / "small", eval_fraction=0.1)["eval_rows"]
    large = split(dataset, tmp_path / "large", eval_fraction=0.5)["eval_rows"]
    assert 0.03 * total < small < 0.2 * total
    assert 0.35 * total < large < 0.65 * total


def test_eval_set_only_grows_when_the_fraction_grows(dataset, tmp_path):
    small = prompts_of(split(dataset, tmp_path / "small", eval_fraction=0.1)["eval"])
    large = prompts_of(split(dataset, tmp_path / "large", eval_fraction=0.5)["eval"])
    assert small < large


def test_a_prompt_keeps_its_side_when_new_rows_arrive(tmp_path):
    rows = samples.preference_rows()
    before = split(write(tmp_path / "old.jsonl", rows[:100]), tmp_path / "old")
    after = split(write(tmp_path / "new.jsonl", rows), tmp_path / "new")
    assert prompts_of(before["eval"]) <= prompts_of(after["eval"])
    assert prompts_of(before["train_preference"]) <= prompts_of(after["train_preference"])


def test_the_salt_changes_which_prompts_are_held_out(dataset, tmp_path):
    default = prompts_of(split(dataset, tmp_path / "a")["eval"])
    salted = prompts_of(split(dataset, tmp_path / "b", salt="other")["eval"])
    assert default != salted


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_eval_fraction_outside_0_and_1_is_rejected(fraction):
    with pytest.raises(ConfigError, match=f"eval_fraction must be between 0 and 1, got {fraction}"):
        SplitConfig(dataset="d.jsonl", eval_fraction=fraction)


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_eval_fraction_just_inside_the_bounds_is_accepted(fraction):
    assert SplitConfig(dataset="d.jsonl", eval_fraction=fraction).eval_fraction == fraction


def test_dataset_is_required():
    with pytest.raises(ConfigError, match="dataset is required"):
        SplitConfig()


def test_default_out_dir_is_the_runs_split_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_DAG_ID", "llm_retraining")
    monkeypatch.setenv("LLMOPS_RUN_ID", "manual__2026-01-01T00:00:00+00:00")
    config = SplitConfig(dataset="d.jsonl")
    assert config.out_dir == f"{tmp_path / 'artifacts'}/llm_retraining/manual__2026-01-01T00_00_00_00_00/split"


def test_a_single_row_is_too_small_to_split(tmp_path):
    dataset = write(tmp_path / "one.jsonl", samples.preference_rows()[:1])
    with pytest.raises(StepFailed, match="both need at least one row"):
        split(dataset, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_many_rows_of_one_prompt_are_too_small_to_split(tmp_path):
    row = samples.preference_rows()[0]
    rows = [{**row, "id": f"copy-{i}", "prompt": row["prompt"] + " " * i} for i in range(20)]
    with pytest.raises(StepFailed, match="has 20 rows"):
        split(write(tmp_path / "same.jsonl", rows), tmp_path / "out")


def test_an_empty_data_set_is_too_small_to_split(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(StepFailed, match="has 0 rows"):
        split(str(empty), tmp_path / "out")


def test_a_missing_data_set_fails_the_step_naming_the_file(tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(StepFailed, match="missing.jsonl: file not found"):
        split(missing, tmp_path / "out")


def test_a_row_without_a_preference_column_fails_the_step(tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": "answer"} for i in range(20)]
    with pytest.raises(StepFailed, match="rejected"):
        split(write(tmp_path / "no_rejected.jsonl", rows), tmp_path / "out")
