"""``llmops``: one subcommand per pipeline step.

The same command runs in a GPU pod, in a local subprocess started by Airflow, in a test and by
hand. A step's module is imported only when its subcommand runs (or asks for ``--help``), and
step modules import their heavy libraries (torch, transformers, trl, great_expectations, mlflow)
inside functions, so ``llmops --help`` stays instant.

Each step takes ``--config FILE`` (a YAML recipe), ``--set key=value`` overrides, and one flag per
config field; precedence is defaults < YAML < flags/--set. The step's result (small JSON: URIs,
metrics, decisions) is printed and, with ``--result-file`` or ``$LLMOPS_RESULT_FILE``, written to
a file: a pod sets it to ``/airflow/xcom/return.json``.

Exit codes: 0 success, 1 the step ran and said no (invalid data, gate rejected, ...), 2 bad
usage or configuration.
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
from typing import Any

from llmops_tasks import __version__
from llmops_tasks.core import logs
from llmops_tasks.core.command import Command
from llmops_tasks.core.config import ConfigError, deep_merge, load, parse_overrides
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
    "env": ("llmops_tasks.local.embedded", "print the embedded deployment's variables as shell exports"),
    "demo": ("llmops_tasks.local.demo", "run the llm_retraining DAG end to end on the embedded defaults"),
    "up": ("llmops_tasks.local.services", "start Airflow and MLflow as services on loopback for the embedded home"),
}


def _commands(module_name: str) -> Command | dict[str, Command]:
    return importlib.import_module(module_name).command()


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML recipe; its keys are the settings below")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting (repeatable); wins over the recipe; a dotted key reaches into a section "
        "(--set trainer.learning_rate=3e-4)",
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


def _add_command(subparsers, name: str, command: Command) -> None:
    parser = subparsers.add_parser(
        name, help=command.help, description=command.help,
    )
    _add_config_flags(parser, command.config_cls)
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
            _add_command(subparsers, name, commands)
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
            fields[name] = parse_overrides(value)
    return deep_merge(fields, parse_overrides(args.overrides))


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
        config = load(command.config_cls, args.config, _collect_overrides(args))
        result = command.run(config)
        status = 0
    except ConfigError as exc:
        log.error("llmops %s: configuration error: %s", args.step, exc)
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
