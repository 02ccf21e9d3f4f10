"""Every flag of every step, given a bad value, ends ``llmops`` with exit code 2 and one line of
error naming the flag or its setting, never a traceback.

The cases are made from the steps themselves (``cli.STEPS``, each config dataclass's fields and
their types), so a new flag gets a case, or a failure here saying it has none. Bad values: the
wrong type, out of range, an unknown choice, a missing input file, a file where a folder is
written, a model folder that is not there. The CLI's ``main`` runs in this process; the step
itself is swapped for a guard that fails the test if it is ever reached, since a bad value must be
refused before any work (a step that ran would train, evaluate or start servers). The few values
only a step can find bad (a hub id that does not exist, a home folder that is a file) run the real
step (``test_a_bad_value_only_the_step_can_find``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing

import pytest

from llmops_tasks import cli
from llmops_tasks.core.command import Command


def _leaves() -> dict[str, Command]:
    leaves: dict[str, Command] = {}
    for name, (module_name, _) in cli.STEPS.items():
        commands = importlib.import_module(module_name).command()
        if isinstance(commands, Command):
            leaves[name] = commands
        else:
            leaves.update({f"{name} {action}": command for action, command in commands.items()})
    return leaves


LEAVES = _leaves()
TRAIN = [leaf for leaf in LEAVES if leaf.startswith("train ")]

# What each step needs to get as far as the flag under test: files made in the test's folder.
GOOD = {
    "validate": ["--dataset", "data.jsonl"], "eda": ["--dataset", "data.jsonl"], "split": ["--dataset", "data.jsonl"],
    **{leaf: ["--base-model", "model", "--train-data", "data.jsonl"] for leaf in TRAIN},
    "evaluate": ["--candidate-model", "model", "--base-model", "model", "--eval-data", "data.jsonl"],
    "gate": ["--metrics", "metrics.json"],
    "registry register": ["--train-result", "result.json", "--metrics", "metrics.json", "--decision", "decision.json"],
    "registry approval": ["--version", "1"],
    "feedback log": ["--trace-id", "tr-0123456789abcdef", "--thumbs", "up"],
}

# Bad values of settings whose type alone admits anything: (leaf or "*" for every leaf, setting) -> values.
BAD_TEXT = {
    ("validate", "pii_kinds"): ["passport"],
    ("validate", "severity"): ["no_pii=sometimes", "no_such_rule=warn"],
    ("validate", "mostly"): ["no_pii=2"],
    ("evaluate", "bleu_tokenizer"): ["klingon"],
    ("evaluate", "rouge_tokenizer"): ["klingon"],
    ("gate", "regression_metrics"): ["accuracy"],
    ("gate", "primary_metric"): ["perplexity"],
    ("gate", "policy"): ["no-such-policy.yaml"],
    ("up", "users"): ["admin"],
    ("serve", "model"): ["runs:/abc/model", "models:/llmops-chat@"],
    ("feedback log", "trace_id"): ["not a trace id"], ("feedback log", "preferred"): ["not a trace id"],
    ("feedback log", "correction"): ["   "], ("curate", "pii_kinds"): ["passport"],
    ("monitor", "window"): ["24 hours"], ("monitor", "end"): ["yesterday"], ("monitor", "model_version"): ["latest"],
    ("monitor", "model_name"): ["team/model:v1"],
    **{(leaf, "trainer"): ["max_stepz=3", "max_steps=abc"] for leaf in TRAIN},
    **{(leaf, "model"): ["lora_r=many"] for leaf in TRAIN},
}
# Numbers out of their range: (leaf, setting) -> value.
OUT_OF_RANGE = {
    ("validate", "min_rows"): "-1", ("validate", "max_chars"): "0", ("validate", "chunk_rows"): "0",
    ("validate", "max_prompt_duplication"): "1.5", ("validate", "max_chosen_longer_share"): "-0.1",
    ("eda", "bins"): "0", ("eda", "top_k"): "5000", ("eda", "chunk_rows"): "0",
    ("split", "eval_fraction"): "1.5",
    **{(leaf, "num_processes"): "0" for leaf in TRAIN},
    **{(leaf, "reward_max_steps"): "-1" for leaf in TRAIN},
    **{(leaf, "system_metrics_interval"): "-1" for leaf in TRAIN},
    ("evaluate", "max_new_tokens"): "0", ("evaluate", "batch_size"): "0", ("evaluate", "beta"): "0",
    ("gate", "min_bleu"): "1.5", ("gate", "max_regression"): "-1", ("gate", "max_perplexity"): "0.5",
    ("gate", "min_preference_accuracy"): "2",
    ("demo", "max_steps"): "0",
    ("serve", "port"): "70000", ("serve", "max_batch_size"): "0", ("serve", "max_prompts"): "0",
    ("serve", "max_new_tokens"): "0", ("serve", "poll_interval"): "-1",
    ("feedback log", "rating"): "9", ("feedback log", "rating_min"): "0", ("feedback log", "rating_max"): "1",
    ("curate", "retention_days"): "-1", ("curate", "rating_gap"): "0", ("curate", "max_pairs_per_prompt"): "0",
    ("curate", "max_traces"): "-1", ("curate", "page_size"): "0", ("curate", "lookback_hours"): "-1",
    ("monitor", "history"): "0", ("gate", "max_empty_rate"): "2", ("gate", "max_answer_rate_rise"): "2",
}
# Free text: any value is a valid one (a salt, a comment, who did it).
FREE_TEXT = {
    ("split", "salt"), ("registry register", "dataset_hash"), ("registry register", "intended_use"),
    ("registry register", "limitations"), ("registry promote", "approved_by"), ("registry promote", "comment"),
    ("registry approval", "by"), ("registry approval", "comment"), ("registry rollback", "reason"),
    ("registry rollback", "actor"), ("up", "host"),  # an address is checked when the servers bind to it
    ("registry register", "trigger"), ("serve", "host"), ("serve", "traffic_experiment"),
    ("feedback log", "by"), ("feedback log", "rationale"), ("curate", "experiment"),
    ("monitor", "traffic_experiment"),
}
# Bad values only the step can find: run for real (test_a_bad_value_only_the_step_can_find).
IN_STEP = {
    ("validate", "tokenizer"): "no-such-tokenizer", ("eda", "tokenizer"): "no-such-tokenizer",
    ("train sft", "base_model"): "no-such-model", ("init", "home"): "a-file.txt",
}
# Not refused yet: the settings of modules outside this change (see each reason). Delete an entry
# when its module declares the field with field(path=...) or checks the value; strict, so a fix shows.
NOT_YET: dict[tuple[str, str], str] = {  # (step, setting) -> why a bad value is not refused yet
}
REGISTRY_VALUES = {"model_name": "team/model:v1", "version": "abc", "expected_production": "abc", "to_version": "abc"}


def _bad_values(leaf: str, f: dataclasses.Field, hint) -> list[str]:
    """The bad values of one setting, from its type and its path kind, plus the tables above."""
    key = (leaf, f.name)
    kind = f.metadata.get("path")
    origin = typing.get_origin(hint)
    values = list(BAD_TEXT.get(key, []))
    if key in OUT_OF_RANGE:
        values.append(OUT_OF_RANGE[key])
    if hint is bool:
        values.append("maybe")
    elif hint is int:
        values.append("many")
    elif hint is float or hint == (float | None):
        values.append("lots")
    elif origin is typing.Literal:
        values.append("bogus")
    elif origin is dict:
        values.append("no-equals-sign")
    elif kind == "input":
        values.append("missing.jsonl")
    elif kind == "output":
        values.append("a-file.txt")
    elif kind == "model":
        values.append("./no-such-model")
    elif kind == "config":
        values.append("no-such-policy.yaml")
    elif f.name in REGISTRY_VALUES and leaf.startswith("registry "):
        values.append(REGISTRY_VALUES[f.name])
    elif key in (("gate", "metrics"), ("demo", "dataset_uri")) or (leaf == "registry register" and f.name in (
            "train_result", "metrics", "decision", "validation")):
        values.append("missing.json")
    elif key == ("gate", "out_dir"):
        values.append("a-file.txt")
    return values


def _cases() -> list:
    cases = []
    for leaf, command in LEAVES.items():
        hints = typing.get_type_hints(command.config_cls)
        for f in dataclasses.fields(command.config_cls):
            key = (leaf, f.name)
            if not f.init or key in FREE_TEXT or key in IN_STEP:
                continue
            values = _bad_values(leaf, f, hints[f.name])  # none: test_every_setting_has_a_bad_value... fails
            marks = [pytest.mark.xfail(reason=NOT_YET[key], strict=True)] if key in NOT_YET else []
            for value in values:
                cases.append(pytest.param(leaf, f.name, value, marks=marks,
                                          id=f"{leaf} --{f.name.replace('_', '-')} {value}"))
    return cases


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current folder with the files GOOD names; MLflow and the run folders under it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    for name in ("metrics.json", "result.json", "decision.json"):
        (tmp_path / name).write_text("{}\n")
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMOPS_MLFLOW_ARTIFACTS", str(tmp_path / "mlartifacts"))
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_TASK_ID", "LLMOPS_RESULT_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class StepRan(AssertionError):
    pass


@pytest.fixture
def guarded(monkeypatch):
    """Each step's run swapped for a guard; the path checks ``Command.run`` does first stay."""
    real = cli._commands

    def guard(config):
        raise StepRan(f"the step ran with {config!r}")

    def commands(module_name):
        found = real(module_name)
        if isinstance(found, Command):
            return dataclasses.replace(found, run=guard)
        return {name: dataclasses.replace(command, run=guard) for name, command in found.items()}

    monkeypatch.setattr(cli, "_commands", commands)


def _refused(argv: list[str], capsys, *names: str) -> str:
    """Run ``llmops argv``: exit 2, no traceback, one error line naming one of ``names``; that line."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, (argv, captured.err[-2000:])
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    errors = [line for line in captured.err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, captured.err[-2000:]
    assert "configuration error" in errors[0]
    assert any(name in errors[0] for name in names), (names, errors[0])
    assert not captured.out.strip()  # no result: the step did nothing
    return errors[0]


@pytest.mark.parametrize(("leaf", "name", "value"), _cases())
def test_a_bad_flag_value_is_one_line_and_exit_2(workdir, guarded, capsys, leaf, name, value):
    flag = "--" + name.replace("_", "-")
    _refused([*leaf.split(), *GOOD.get(leaf, []), flag, value], capsys, name, flag)


GENERIC = [
    (["--config", "no-such-recipe.yaml"], ("config file not found", "no-such-recipe.yaml")),
    (["--config", "a-file.txt"], ("a-file.txt: expected a mapping",)),
    (["--set", "no-equals-sign"], ("--set expects key=value",)),
    (["--set", "no_such_setting=1"], ("no_such_setting",)),
    (["--set", "a=1", "--set", "a.b=2"], ("--set 'a.b=2': a is a value, not a section",)),
    (["--set-json", "{not json"], ("--set-json",)),
    (["--set-json", "[1]"], ("--set-json",)),
    (["--result-file", "."], ("--result-file",)),
    (["--result-file", "a-file.txt/result.json"], ("--result-file",)),
]


@pytest.mark.parametrize("leaf", list(LEAVES))
@pytest.mark.parametrize(("args", "names"), GENERIC, ids=[" ".join(args) for args, _ in GENERIC])
def test_a_bad_common_flag_is_one_line_and_exit_2(workdir, guarded, capsys, leaf, args, names):
    _refused([*leaf.split(), *GOOD.get(leaf, []), *args], capsys, *names)


@pytest.mark.parametrize("leaf", list(LEAVES))
def test_every_setting_has_a_bad_value_tried_or_a_reason_it_has_none(leaf):
    """A new setting needs a case: a bad value derived from its type, one in the tables, or a reason."""
    command = LEAVES[leaf]
    hints = typing.get_type_hints(command.config_cls)
    for f in dataclasses.fields(command.config_cls):
        key = (leaf, f.name)
        assert key in FREE_TEXT or key in IN_STEP or _bad_values(leaf, f, hints[f.name]), key


def test_a_missing_path_names_every_setting_at_once(workdir, guarded, capsys):
    line = _refused(["split", "--dataset", "nope.jsonl", "--out-dir", "a-file.txt"], capsys, "dataset")
    assert f"dataset (--dataset): no such file or folder: {workdir / 'nope.jsonl'}" in line
    assert f"out_dir (--out-dir): {workdir / 'a-file.txt'} is a file; expected a folder to write into" in line


@pytest.mark.integration  # the real steps: transformers' loading, an MLflow logging process for train
@pytest.mark.parametrize(("leaf", "name"), list(IN_STEP), ids=[f"{leaf} --{name}" for leaf, name in IN_STEP])
def test_a_bad_value_only_the_step_can_find(workdir, capsys, monkeypatch, train_workdir, leaf, name):
    """A hub id that does not exist (offline here, as anywhere without the hub), a home folder that is a file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LLMOPS_HOME", str(workdir / "home"))  # init sets it; restored after
    good = {"train sft": ["--train-data", train_workdir["train_sft"], "--output-dir", "out", "--log-model", "false",
                          "--system-metrics-interval", "0"],
            "validate": ["--dataset", "data.jsonl", "--data-docs", "false", "--max-tokens", "10"]}
    good["eda"] = ["--dataset", "data.jsonl"]
    flag = "--" + name.replace("_", "-")
    _refused([*leaf.split(), *good.get(leaf, []), flag, IN_STEP[(leaf, name)]], capsys, name, flag,
             IN_STEP[(leaf, name)])
