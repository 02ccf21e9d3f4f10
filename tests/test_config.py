"""Step configuration and the ``llmops`` CLI: precedence, strictness, help, exit codes, cheap imports."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import llmops_tasks
from llmops_tasks import cli, train
from llmops_tasks.core import config
from llmops_tasks.core.config import ConfigError, field
from llmops_tasks.local import samples
from llmops_tasks.split import SplitConfig
from llmops_tasks.train import TrainConfig

HEAVY_MODULES = ("torch", "transformers", "trl", "great_expectations", "mlflow", "evaluate", "pandas")
REQUIRED = {"base_model": "base", "train_data": "train.jsonl"}
SFT = train.config_class("sft")  # what `llmops train sft` loads: its trainer: section is trl.SFTConfig's


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Configs resolve default output folders under the home; keep them in tmp_path."""
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMOPS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    for name in ("LLMOPS_DAG_ID", "LLMOPS_RUN_ID", "LLMOPS_RESULT_FILE"):
        monkeypatch.delenv(name, raising=False)


def recipe(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def parse(argv: list[str]):
    """Parse a step's command line the way main() does, without running the step."""
    args = cli.build_parser(argv[0]).parse_args(argv)
    return config.load(args._command.config_cls, args.config, cli._collect_overrides(args))


# --------------------------------------------------------------------------- precedence


def test_defaults_apply_when_nothing_is_given():
    loaded = config.load(SFT, None, [f"{k}={v}" for k, v in REQUIRED.items()])
    defaults = {name: default for name, _, default in config.describe(SFT)}
    assert loaded.trainer == defaults["trainer"] == {} and loaded.model == defaults["model"] == {}
    effective = train.trainer_settings(loaded, "sft")  # the house layer, since the recipe sets nothing
    assert effective["max_steps"] == train.HOUSE_TRAINER["max_steps"] == 60
    assert effective["learning_rate"] == train.HOUSE_TRAINER["learning_rate"]
    assert train.model_config(loaded, "sft").use_peft is False


def test_yaml_overrides_defaults_and_set_overrides_yaml(tmp_path):
    path = recipe(tmp_path, """
        base_model: base
        train_data: train.jsonl
        trainer:
          max_steps: 7
          learning_rate: 1.0e-2
          seed: 3
    """)
    loaded = config.load(SFT, path, ["trainer.max_steps=9", "model.use_peft=true"])
    assert (loaded.trainer["max_steps"], loaded.trainer["learning_rate"], loaded.trainer["seed"],
            loaded.model["use_peft"]) == (9, 0.01, 3, True)
    assert "warmup_steps" not in train.trainer_settings(loaded, "sft")  # untouched: TRL's own default


def test_cli_flags_and_set_override_the_recipe(tmp_path):
    path = recipe(tmp_path, """
        base_model: base
        train_data: train.jsonl
        trainer:
          max_steps: 7
          learning_rate: 1.0e-2
          beta: 0.5
    """)
    loaded = parse(["train", "dpo", "--config", str(path), "--trainer", "max_steps=11", "--set", "trainer.beta=0.25"])
    # key by key: the recipe's other trainer settings stay
    assert loaded.trainer == {"max_steps": 11, "beta": 0.25, "learning_rate": 0.01}


def test_set_json_sits_between_the_recipe_and_set(tmp_path):
    """What the DAG passes from the trigger form: only the fields set, typed, key by key over the recipe."""
    path = recipe(tmp_path, """
        base_model: base
        train_data: train.jsonl
        trainer:
          max_steps: 7
          learning_rate: 5.0e-6
        model:
          use_peft: true
    """)
    loaded = parse(["train", "dpo", "--config", str(path), "--set-json", '{"trainer": {"max_steps": 3}}',
                    "--set-json", '{"base_model": "tiny"}', "--set", "trainer.seed=5"])
    assert loaded.trainer == {"max_steps": 3, "learning_rate": 5e-6, "seed": 5}
    assert (loaded.base_model, loaded.model) == ("tiny", {"use_peft": True})
    assert parse(["train", "dpo", "--config", str(path), "--set-json", "{}"]).trainer["max_steps"] == 7
    for bad, message in (("[1, 2]", "expects a JSON object, got list"), ("{max_steps: 3}", "expects a JSON object")):
        with pytest.raises(ConfigError, match=message):
            parse(["train", "dpo", "--config", str(path), "--set-json", bad])


def test_a_packaged_recipe_or_policy_is_found_by_its_file_name(tmp_path, monkeypatch):
    from llmops_tasks.core import settings

    monkeypatch.chdir(tmp_path)
    assert settings.config_file("dpo_llama_lora.yaml") == settings.packaged_recipe("dpo_llama_lora.yaml")
    assert settings.config_file("gate.yaml") == settings.packaged_policy("gate.yaml")
    own = tmp_path / "gate.yaml"  # a file of the team's own, named like a packaged one, wins
    own.write_text("min_bleu: 0.1\n")
    assert settings.config_file("gate.yaml") == str(own)
    assert settings.config_file("recipes/mine.yaml") == str(tmp_path / "recipes" / "mine.yaml")
    assert settings.config_file("s3://bucket/recipe.yaml") == "s3://bucket/recipe.yaml"
    with pytest.raises(ConfigError, match=r"config file not found: nope.yaml .*packaged: .*dpo_llama_lora.yaml"):
        config.load(TrainConfig, "nope.yaml")


def test_split_recipe_precedence(tmp_path):
    path = recipe(tmp_path, """
        dataset: data.jsonl
        eval_fraction: 0.5
        salt: recipe-salt
    """)
    loaded = config.load(SplitConfig, path, {"eval_fraction": 0.3})
    # a recipe's relative path is the current folder's, as on the command line
    assert (loaded.dataset, loaded.eval_fraction, loaded.salt) == (str(Path.cwd() / "data.jsonl"), 0.3, "recipe-salt")


# --------------------------------------------------------------------------- strictness


def test_unknown_key_in_yaml_is_rejected_with_the_known_keys(tmp_path):
    path = recipe(tmp_path, """
        base_model: base
        train_data: train.jsonl
        max_stepz: 5
    """)
    with pytest.raises(ConfigError) as error:
        config.load(TrainConfig, path)
    message = str(error.value)
    assert "max_stepz" in message
    assert str(path) in message
    assert "known settings are:" in message
    assert all(f.name in message for f in dataclasses.fields(TrainConfig))


def test_unknown_key_in_set_is_rejected_with_the_known_keys():
    with pytest.raises(ConfigError) as error:
        config.load(SplitConfig, None, ["dataset=d.jsonl", "eval_fracton=0.3"])
    message = str(error.value)
    assert "eval_fracton" in message
    assert "known settings are: dataset, eval_fraction, out_dir, salt" in message


def test_type_error_in_yaml_names_the_setting_and_the_expected_type(tmp_path):
    path = recipe(tmp_path, """
        base_model: base
        train_data: train.jsonl
        trainer:
          max_steps: abc
    """)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps: expected an integer, got 'abc'"):
        config.load(SFT, path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.learning_rate=fast", r"trainer\.learning_rate: expected a number, got 'fast'"),
        ("model.use_peft=maybe", r"model\.use_peft: expected true or false, got 'maybe'"),
        ("trainer.max_steps=true", r"trainer\.max_steps: expected an integer, got 'true'"),
        ("trainer.max_steps=[1, 2]", r"trainer\.max_steps: expected an integer"),
        ("log_model=maybe", r"log_model: expected true or false, got 'maybe'"),
    ],
)
def test_type_error_in_set_names_the_setting(override, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load(SFT, None, [*(f"{k}={v}" for k, v in REQUIRED.items()), override])


def test_validation_errors_say_what_was_expected():
    with pytest.raises(ConfigError, match="max_steps must be a positive integer, got 0"):
        config.load(SFT, None, {**REQUIRED, "trainer": {"max_steps": 0}})
    with pytest.raises(ConfigError, match="base_model is required"):
        config.load(TrainConfig, None, {"train_data": "t.jsonl"})


@pytest.mark.parametrize("text", ["- a\n- b\n", "max_steps: [unclosed\n"])
def test_a_recipe_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    with pytest.raises(ConfigError):
        config.load(TrainConfig, recipe(tmp_path, text))


def test_a_missing_recipe_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(TrainConfig, tmp_path / "nope.yaml")


def test_set_without_equals_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_overrides(["max_steps"])


def test_set_values_are_converted_to_the_setting_type():
    """--set keeps the text; the setting's type decides: numbers, booleans, lists, null, free text."""
    assert config.parse_overrides(["a=3", "f=text: with colon"]) == {"a": "3", "f": "text: with colon"}

    @dataclass
    class Typed:
        a: int = field(0, help="")
        b: float = field(0.0, help="")
        c: bool = field(False, help="")
        d: float | None = field(1.0, help="")
        e: list[str] = field(default_factory=list, help="")
        f: str = field("", help="")

    loaded = config.load(Typed, None, ["a=3", "b=0.5", "c=true", "d=null", "e=[x, y]", "f=text: with colon"])
    assert (loaded.a, loaded.b, loaded.c, loaded.d, loaded.e, loaded.f) == (3, 0.5, True, None, ["x", "y"],
                                                                            "text: with colon")


def test_exponent_notation_becomes_a_float_in_yaml_and_set(tmp_path):
    """PyYAML reads ``1e-4`` (no dot) as a string; the float field must still get a number."""
    path = recipe(tmp_path, "base_model: b\ntrain_data: t.jsonl\ntrainer:\n  learning_rate: 1e-4\n")
    assert config.load(SFT, path).trainer["learning_rate"] == pytest.approx(1e-4)
    assert config.load(SFT, path, ["trainer.learning_rate=2e-5"]).trainer["learning_rate"] == pytest.approx(2e-5)


# --------------------------------------------------------------------------- nested sections


@dataclass
class Optimizer:
    learning_rate: float = field(0.1, help="peak learning rate")
    steps: int = field(10, help="optimizer steps")


@dataclass
class Recipe:
    name: str = field("run", help="run name")
    optimizer: Optimizer = field(default_factory=Optimizer, help="optimizer")


def test_dotted_set_addresses_a_nested_section_and_keeps_its_siblings(tmp_path):
    path = recipe(tmp_path, """
        name: nested
        optimizer:
          learning_rate: 0.5
          steps: 3
    """)
    loaded = config.load(Recipe, path, ["optimizer.steps=9"])
    assert loaded == Recipe(name="nested", optimizer=Optimizer(learning_rate=0.5, steps=9))


def test_dotted_set_builds_a_section_the_recipe_does_not_have():
    loaded = config.load(Recipe, None, ["optimizer.learning_rate=0.02"])
    assert loaded.optimizer == Optimizer(learning_rate=0.02, steps=10)


def test_unknown_key_in_a_nested_section_names_the_section_and_its_keys():
    with pytest.raises(ConfigError) as error:
        config.load(Recipe, None, ["optimizer.momentum=0.9"])
    message = str(error.value)
    assert "Recipe.optimizer" in message and "momentum" in message
    assert "known settings are: learning_rate, steps" in message


def test_type_error_in_a_nested_section_names_its_dotted_path():
    with pytest.raises(ConfigError, match=r"Recipe\.optimizer\.steps: expected an integer, got 'many'"):
        config.load(Recipe, None, ["optimizer.steps=many"])


# --------------------------------------------------------------------------- bool flags


def test_bool_flag_alone_means_true():
    assert parse(["demo", "--require-approval"]).require_approval is True


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), ("no", False), ("yes", True)])
def test_bool_flag_takes_an_explicit_value(value, expected):
    loaded = parse(["train", "sft", "--base-model", "b", "--train-data", "t.jsonl", "--log-model", value])
    assert loaded.log_model is expected


def test_bool_flag_alone_followed_by_another_flag(tmp_path):
    path = recipe(tmp_path, "base_model: b\ntrain_data: t.jsonl\nlog_model: false\n")
    loaded = parse(["train", "sft", "--config", str(path), "--log-model", "--base-model", "c",
                    "--model", "use_peft=true"])
    assert (loaded.log_model, loaded.base_model, loaded.model) == (True, "c", {"use_peft": True})
    assert parse(["demo", "--require-approval", "--method", "dpo"]).method == "dpo"


def test_bool_flag_false_overrides_a_recipe_that_turns_it_on(tmp_path):
    path = recipe(tmp_path, "base_model: b\ntrain_data: t.jsonl\nlog_model: true\n"
                            "trainer:\n  completion_only_loss: true\nmodel:\n  use_peft: true\n")
    loaded = parse(["train", "sft", "--config", str(path), "--log-model", "false", "--model", "use_peft=false",
                    "--set", "trainer.completion_only_loss=false"])
    assert (loaded.log_model, loaded.model["use_peft"], loaded.trainer["completion_only_loss"]) == (False, False, False)


def test_a_trl_setting_from_set_takes_its_field_type():
    """--set trainer.X / --trainer X=... reach the method's TRL field as its type, next to the recipe's."""
    loaded = parse(["train", "dpo", "--base-model", "b", "--train-data", "t.jsonl",
                    "--set", "trainer.learning_rate=3e-3", "--set", "trainer.loss_type=sigmoid,sft",
                    "--trainer", "loss_weights=1,0.2", "--trainer", "weight_decay=0.01", "--set", "model.lora_r=4"])
    assert loaded.trainer == {"learning_rate": 3e-3, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.2],
                              "weight_decay": 0.01}
    assert loaded.model == {"lora_r": 4}


def test_train_help_says_any_trl_field_can_be_set(capsys):
    out = _collapse(_help_of(["train", "dpo"], capsys))
    assert "--trainer KEY=VALUE" in out and "settings of trl.DPOConfig: any of its fields" in out
    assert "--set trainer.KEY=VALUE" in out and "--model KEY=VALUE" in out and "trl.ModelConfig" in out
    assert "learning_rate=0.0005" in out  # the house defaults under the section


# --------------------------------------------------------------------------- help


def _squash(text: str) -> str:
    """argparse wraps help text (also at hyphens); compare with all whitespace removed."""
    return "".join(text.split())


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_top_level_help_lists_every_step(capsys):
    out = _help_of([], capsys)
    assert out.startswith("usage: llmops")
    for name, (_, help_text) in cli.STEPS.items():
        assert name in out
        assert _squash(help_text) in _squash(out)


def _leaf_commands() -> list[tuple[list[str], cli.Command]]:
    leaves = []
    for name, (module_name, _) in cli.STEPS.items():
        commands = importlib.import_module(module_name).command()
        if isinstance(commands, cli.Command):
            leaves.append(([name], commands))
        else:
            leaves.extend(([name, action], command) for action, command in commands.items())
    return leaves


LEAVES = _leaf_commands()


def test_the_nested_commands_are_all_there():
    names = {" ".join(argv) for argv, _ in LEAVES}
    assert {"train sft", "train dpo", "registry status", "registry promote", "registry rollback",
            "registry register", "split"} <= names


@pytest.mark.parametrize(("argv", "command"), LEAVES, ids=[" ".join(argv) for argv, _ in LEAVES])
def test_every_subcommand_help_prints_its_settings_with_help_text(argv, command, capsys):
    out = _help_of(argv, capsys)
    assert out.startswith(f"usage: llmops {' '.join(argv)}")
    assert "--config FILE" in out and "--set KEY=VALUE" in out
    for name, help_text, _ in config.describe(command.config_cls):
        assert f"--{name.replace('_', '-')}" in out, (argv, name)
        assert help_text, f"{command.config_cls.__name__}.{name} has no help text"
        assert _squash(help_text) in _squash(out), (argv, name)


@pytest.mark.parametrize("group", ["train", "registry"])
def test_group_help_lists_its_actions(group, capsys):
    out = _help_of([group], capsys)
    actions = importlib.import_module(cli.STEPS[group][0]).command()
    for action, command in actions.items():
        assert action in out
        assert _squash(command.help) in _squash(out)


def test_split_help_shows_the_defaults(capsys):
    out = _help_of(["split"], capsys)
    assert "(default: 0.2)" in _collapse(out) and "(default: llmops)" in _collapse(out)


# --------------------------------------------------------------------------- exit codes


def test_configuration_error_through_main_exits_2(tmp_path, capsys):
    path = recipe(tmp_path, "dataset: d.jsonl\neval_fraction: 1.5\n")
    assert cli.main(["split", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "llmops split: configuration error" in err and "eval_fraction must be between 0 and 1" in err


def test_unknown_set_key_through_main_exits_2(capsys):
    assert cli.main(["train", "sft", "--set", "max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "max_stepz" in err and "known settings are:" in err


def test_type_error_through_main_exits_2(tmp_path, capsys):
    path = recipe(tmp_path, "base_model: b\ntrain_data: t.jsonl\ntrainer:\n  max_steps: abc\n")
    assert cli.main(["train", "sft", "--config", str(path)]) == 2
    assert "trainer.max_steps: expected an integer, got 'abc'" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["split", "--no-such-flag", "1"])
    assert exit_info.value.code == 2


def test_no_step_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage: llmops" in capsys.readouterr().out


def test_a_step_runs_through_main_with_recipe_and_flags(tmp_path, capsys):
    """End to end: a real split through main(), recipe value overridden by a flag, result file written."""
    dataset = tmp_path / "preference.jsonl"
    from llmops_tasks.core import data

    data.write_jsonl(str(dataset), samples.preference_rows())
    path = recipe(tmp_path, f"dataset: {dataset}\neval_fraction: 0.9\nout_dir: {tmp_path / 'split'}\n")
    result_file = tmp_path / "result.json"
    status = cli.main(["split", "--config", str(path), "--eval-fraction", "0.25", "--result-file", str(result_file)])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(result_file.read_text())
    total = printed["train_rows"] + printed["eval_rows"]
    assert total == len(samples.preference_rows())
    assert printed["eval_rows"] < total / 2  # 0.25 from the flag, not 0.9 from the recipe


# --------------------------------------------------------------------------- version and imports


@pytest.mark.integration  # a subprocess: not a unit test
def test_python_m_llmops_tasks_version():
    done = subprocess.run([sys.executable, "-m", "llmops_tasks", "--version"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"llmops {llmops_tasks.__version__}"


@pytest.mark.integration  # a subprocess: not a unit test
def test_cli_import_and_top_level_parser_import_no_heavy_library():
    code = textwrap.dedent(f"""
        import sys
        import llmops_tasks.cli
        llmops_tasks.cli.build_parser()
        heavy = {HEAVY_MODULES!r}
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("comment", ["approved: looks good", "yes", "#42 fixes the tone"])
def test_free_text_flag_values_reach_string_settings_verbatim(comment):
    loaded = parse(["registry", "promote", "--comment", comment])
    assert loaded.comment == comment


# --------------------------------------------------------------------------- path settings


@dataclass
class Paths:
    data: str = field("", path="input", help="")
    out: str = field("", path="output", help="")
    model: str = field("", path="model", keywords=("production",), help="")
    policy: str = field("", path="config", help="")
    name: str = field("", help="")


def test_path_settings_are_made_absolute_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    path = recipe(tmp_path, "data: in/data.jsonl\nout: out/\nname: out/\n")
    loaded = config.load(Paths, path, ["model=../models/m"])
    assert (loaded.data, loaded.out) == (str(tmp_path / "in" / "data.jsonl"), str(tmp_path / "out"))
    assert loaded.model == str(tmp_path.parent / "models" / "m")
    assert loaded.name == "out/"  # not a path setting: as given
    for value in ("s3://bucket/data.jsonl", "file:///data/x.jsonl", "models:/llmops-chat@production", ""):
        assert config.load(Paths, None, [f"data={value}"]).data == value
    # a model: a hub id (name or org/name) stays one, unless a folder of that name is here
    models = {"gpt2": "gpt2", "Qwen/Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B", "production": "production",
              "tiny": str(tmp_path / "tiny"), "./gpt2": str(tmp_path / "gpt2"), "a/b/c": str(tmp_path / "a/b/c"),
              "~/m": str(Path("~/m").expanduser())}
    assert {value: config.load(Paths, None, {"model": value}).model for value in models} == models
    # a recipe or policy: a path, or a packaged one by its file name
    assert config.load(Paths, None, {"policy": "validate_eval.yaml"}).policy.endswith("policies/validate_eval.yaml")
    with pytest.raises(ConfigError, match=r"^Paths\.policy: config file not found: nope\.yaml"):
        config.load(Paths, None, {"policy": "nope.yaml"})


def test_check_paths_names_every_setting_whose_path_is_not_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    config.check_paths(config.load(Paths, None, {"data": "a-file", "out": "new/folder", "model": "org/name"}))
    with pytest.raises(ConfigError) as error:
        config.check_paths(config.load(Paths, None, {"data": "nope.jsonl", "out": "a-file", "model": "./m"}))
    assert str(error.value) == "; ".join([
        f"data (--data): no such file or folder: {tmp_path / 'nope.jsonl'}",
        f"out (--out): {tmp_path / 'a-file'} is a file; expected a folder to write into",
        (f"model (--model): no such folder: {tmp_path / 'm'} (a model is a folder written by save_pretrained, "
         "or a hub id such as org/name)")])
    with pytest.raises(ValueError, match=r"field\(path=\.\.\.\): expected one of"):
        field("", path="folder", help="")


def test_a_bad_flag_is_named_as_the_flag_not_as_the_recipe_it_overrides(tmp_path):
    path = recipe(tmp_path, "dataset: d.jsonl\neval_fraction: lots\n")
    with pytest.raises(ConfigError, match=rf"^{path}\.eval_fraction: expected a number, got 'lots'"):
        config.load(SplitConfig, path)
    with pytest.raises(ConfigError, match=r"^SplitConfig\.eval_fraction: expected a number, got 'many'"):
        config.load(SplitConfig, path, {"eval_fraction": "many"})


def test_a_section_flag_without_equals_names_that_flag(capsys):
    assert cli.main(["train", "sft", "--trainer", "max_steps"]) == 2
    assert "configuration error: --trainer expects key=value, got 'max_steps'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--set 'a\.b=2': a is a value, not a section"):
        config.parse_overrides(["a=1", "a.b=2"])


def test_the_result_of_a_step_run_with_relative_paths_holds_absolute_ones(tmp_path, monkeypatch, llmops):
    from llmops_tasks.core import data

    monkeypatch.chdir(tmp_path)
    data.write_jsonl("data.jsonl", samples.preference_rows())
    code, result = llmops(["split", "--dataset", "data.jsonl", "--out-dir", "out/"])
    assert code == 0
    assert result["train_sft"] == str(tmp_path / "out" / "train_sft.jsonl") and Path(result["train_sft"]).is_file()


def test_validate_without_config_applies_the_packaged_policy_of_its_kind(tmp_path, monkeypatch, capsys):
    """As the DAG does: validate_preference.yaml wants 100 rows; an explicit --config wins."""
    from llmops_tasks.core import data, settings
    from llmops_tasks.validate import ValidateConfig

    for kind in ("preference", "sft", "eval"):
        assert cli.default_config("validate", ValidateConfig, {"kind": kind}) == settings.packaged_policy(
            f"validate_{kind}.yaml")
    assert cli.default_config("validate", ValidateConfig, {}) == settings.packaged_policy("validate_preference.yaml")
    assert cli.default_config("validate", ValidateConfig, {"kind": "bogus"}) is None  # the kind's check says why
    assert cli.default_config("split", SplitConfig, {}) is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data.write_jsonl("one.jsonl", samples.preference_rows()[:1])
    common = ["--dataset", "one.jsonl", "--report-dir", "out", "--data-docs", "false"]
    assert cli.main(["validate", "--kind", "preference", *common]) == 1
    err = capsys.readouterr().err
    assert "settings from the packaged policy" in err and "validate_preference.yaml" in err
    assert "row_count (1 rows, expected at least 100)" in err
    own = recipe(tmp_path, "kind: preference\nmin_rows: 1\n", name="small.yaml")
    assert cli.main(["validate", "--config", str(own), *common]) == 0
    capsys.readouterr()
