"""``llmops``: one subcommand per pipeline step.

The same command runs in a GPU pod, in a local subprocess started by Airflow, in a test and by
hand. A step's module is imported only when its subcommand runs (or asks for ``--help``), and
step modules import their heavy libraries (torch, transformers, trl, great_expectations, mlflow)
inside functions, so ``llmops --help`` stays instant.

Each step takes ``--config FILE`` (a YAML recipe or policy: a path, or a packaged one's file name;
``validate`` without it applies its kind's packaged policy, as the DAG does), ``--set key=value``
overrides, and one flag per config field; precedence is defaults < YAML < flags/--set. Relative
paths, in flags and recipes alike, are the current folder's and made absolute when the config is
built. The step's result (small JSON: URIs, metrics, decisions) is printed and, with
``--result-file`` or ``$LLMOPS_RESULT_FILE``, written to a file: a pod sets it to
``/airflow/xcom/return.json``.

Exit codes: 0 success, 1 the step ran and said no (invalid data, gate rejected, ...), 2 bad
usage or configuration (one line naming the setting: a wrong type, a value out of range, a path
that is not there), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

from llmops_tasks import __version__
from llmops_tasks.core import logs, settings
from llmops_tasks.core.command import Command
from llmops_tasks.core.config import ConfigError, deep_merge, load, parse_json_overrides, parse_overrides
from llmops_tasks.core.errors import StepFailed

log = logging.getLogger("llmops_tasks.cli")

# subcommand -> (module, one-line help). Modules are imported lazily.
STEPS: dict[str, tuple[str, str]] = {
    "init": ("llmops_tasks.local.bootstrap", "create the embedded home: sample data and the tiny local base model"),
    "validate": ("llmops_tasks.validate", "check a data set against its Great Expectations suite"),
    "eda": ("llmops_tasks.eda", "write an EDA report (HTML + JSON) for a data set"),
    "split": ("llmops_tasks.split", "split a preference data set into train / eval files, by prompt"),
    "train": ("llmops_tasks.train", "fine-tune with TRL (sft, dpo, reward, grpo, rloo, kto, orpo)"),
    "evaluate": ("llmops_tasks.evaluate", "generate on the eval set and score candidate vs champion"),
    "gate": ("llmops_tasks.gate", "decide whether a candidate may be registered, from its metrics"),
    "registry": ("llmops_tasks.registry", "MLflow model registry: register, status, promote, rollback, approval"),
    "serve": ("llmops_tasks.serving.server", "serve a registered model over HTTP (MLflow scoring protocol), tracing every answer"),
    "feedback": ("llmops_tasks.feedback", "record human feedback on a served answer (MLflow assessments on its trace)"),
    "curate": ("llmops_tasks.curation", "turn traced feedback into a validated, versioned preference snapshot"),
    "monitor": ("llmops_tasks.monitoring", "compute traffic, drift, safety and feedback signals of production; apply the policy"),
    "env": ("llmops_tasks.local.embedded", "print the embedded deployment's variables as shell exports"),
    "demo": ("llmops_tasks.local.demo", "run the llm_retraining DAG end to end on the embedded defaults"),
    "up": ("llmops_tasks.local.services", "start Airflow and MLflow as services on loopback for the embedded home"),
}


# Steps that run with a packaged policy unless --config names another, as the DAG's tasks do, so a
# step run by hand applies the same limits (validate: at least 100 rows for a preference set):
# step -> (the setting that picks the policy, the policy's file name pattern).
DEFAULT_CONFIG: dict[str, tuple[str, str]] = {"validate": ("kind", "validate_{}.yaml")}


def _commands(module_name: str) -> Command | dict[str, Command]:
    return importlib.import_module(module_name).command()


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type, step: str | None = None) -> None:
    config_help = "YAML recipe or policy (a path, or the file name of a packaged one); its keys are the settings below"
    if step in DEFAULT_CONFIG:
        key, pattern = DEFAULT_CONFIG[step]
        choices = typing.get_args(typing.get_type_hints(config_cls)[key])
        config_help += (f". Default: the packaged policy of --{key.replace('_', '-')} "
                         f"({', '.join(pattern.format(c) for c in choices)} in llmops_tasks/policies), as the DAG "
                         "runs it; its values replace the defaults shown below")
    parser.add_argument("--config", metavar="FILE", help=config_help.replace("%", "%%"))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting (repeatable); wins over the recipe; a dotted key reaches into a section "
        "(--set trainer.learning_rate=3e-4)",
    )
    parser.add_argument(
        "--set-json", dest="json_overrides", action="append", default=[], metavar="JSON",
        help="settings as a JSON object (repeatable; nested objects reach into sections); over the recipe, "
        "under --set and the flags below (--set-json '{\"trainer\": {\"max_steps\": 50}}')",
    )
    parser.add_argument(
        "--result-file", metavar="PATH", default=os.environ.get("LLMOPS_RESULT_FILE"),
        help="also write the result JSON here (default: $LLMOPS_RESULT_FILE)",
    )
    group = parser.add_argument_group("settings (also valid as recipe keys)")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if default not in (None, "", [], {}):
            help_text += f" (default: {default})"
        kind = typing.get_origin(hints[f.name])
        metavar = "{" + ",".join(map(str, typing.get_args(hints[f.name]))) + "}" if kind is typing.Literal else f.name.upper()
        extra: dict[str, Any] = {"nargs": "?", "const": True} if hints[f.name] is bool else {}
        if kind is dict:  # a section: --trainer KEY=VALUE, repeatable, merged key by key into the recipe's
            metavar, extra = "KEY=VALUE", {"action": "append"}
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f"field__{f.name}", type=str,
            default=argparse.SUPPRESS, help=help_text, metavar=metavar, **extra,
        )


def _add_command(subparsers, name: str, command: Command, step: str | None = None) -> None:
    parser = subparsers.add_parser(
        name, help=command.help, description=command.help,
    )
    _add_config_flags(parser, command.config_cls, step)
    parser.set_defaults(_command=command)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` set, import just that step's module."""
    parser = argparse.ArgumentParser(
        prog="llmops",
        description="LLMOps on Airflow: validate data, fine-tune, evaluate, gate and promote language models.",
        epilog="Run 'llmops <step> --help' for a step's settings. Exit codes: 0 ok, 1 the step said no "
        "(invalid data, gate rejected), 2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"llmops {__version__}")
    subparsers = parser.add_subparsers(dest="step", metavar="<step>")
    for name, (module_name, help_text) in STEPS.items():
        if only != name:
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        commands = _commands(module_name)
        if isinstance(commands, Command):
            _add_command(subparsers, name, commands, name)
            continue
        group = subparsers.add_parser(name, help=help_text, description=help_text)
        nested = group.add_subparsers(dest="action", metavar="<action>", required=True)
        for sub_name, sub in commands.items():
            _add_command(nested, sub_name, sub)
    return parser


def _collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = {k.removeprefix("field__"): v for k, v in vars(args).items() if k.startswith("field__")}
    for name, value in fields.items():
        if isinstance(value, list):  # a section's KEY=VALUE pairs
            fields[name] = parse_overrides(value, flag="--" + name.replace("_", "-"))
    return deep_merge(parse_json_overrides(args.json_overrides), deep_merge(fields, parse_overrides(args.overrides)))


def default_config(step: str, config_cls: type, overrides: dict[str, Any]) -> str | None:
    """The packaged policy ``step`` runs with when no --config is given (:data:`DEFAULT_CONFIG`), else None."""
    if step not in DEFAULT_CONFIG:
        return None
    key, pattern = DEFAULT_CONFIG[step]
    field = next(f for f in dataclasses.fields(config_cls) if f.name == key)
    value = overrides.get(key, field.default)
    try:
        return settings.packaged_policy(pattern.format(str(value).strip()))
    except FileNotFoundError:
        return None  # a value the setting's own check refuses, naming what it expects


def _path_error(exc: OSError) -> str:
    if exc.filename is None:
        return str(exc)
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{where}: {exc.strerror or type(exc).__name__}"


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _check_result_file(path: str | None) -> None:
    """Refuse, before the step runs, a result file that could never be written."""
    if path and "://" not in path:
        local = Path(path).expanduser()
        if local.is_dir():
            raise ConfigError(f"--result-file: {path} is a folder; expected a file to write the result JSON to")
        parent = next((p for p in local.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"--result-file: {parent} is a file, so {path} cannot be created")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    step = next((a for a in argv if not a.startswith("-")), None)
    only = step if step in STEPS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    logs.setup()
    try:
        overrides = _collect_overrides(args)
        config_file = args.config
        if not config_file and (config_file := default_config(args.step, command.config_cls, overrides)):
            log.info("llmops %s: settings from the packaged policy %s (--config names another)", args.step,
                     config_file)
        config = load(command.config_cls, config_file, overrides)
        _check_result_file(args.result_file)
        result = command.run(config)  # which first checks the config's paths (Command.run)
        status = 0
    except ConfigError as exc:
        log.error("llmops %s: configuration error: %s", args.step, _one_line(str(exc)))
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        # a path the settings name that the step could not read or write (a folder given for a file,
        # a file in the way of a folder, no permission): the settings' fault, not the step's
        log.debug("llmops %s: path error", args.step, exc_info=True)
        log.error("llmops %s: configuration error: %s", args.step, _one_line(_path_error(exc)))
        return 2
    except StepFailed as exc:
        log.error("llmops %s: %s", args.step, exc)
        result = exc.result
        status = 1
    if args.result_file:
        from llmops_tasks.core.data import write_json

        write_json(args.result_file, result)
    if command.render is not None and status == 0 and not getattr(config, "json", False):
        print(command.render(result))
    else:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
