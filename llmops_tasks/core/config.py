"""Step configuration: one dataclass per step, loaded as defaults < YAML recipe < CLI overrides.

Every field carries its help text in ``metadata["help"]``; the CLI and the docs are generated
from it. Unknown keys are an error (a stale recipe must not be silently ignored), and each config
validates itself in ``__post_init__`` with a message that says what was expected. A path setting
says so (``field(path="input")``, see :data:`PATH_KINDS`): :func:`build` makes a local value
absolute against the current folder, whether it came from a recipe, a flag or a DAG, and
:func:`check_paths` refuses one that names what is not there before the step starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmops_tasks.core import settings

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


# What a path setting names (``field(path=...)``); :func:`build` makes each local one absolute and
# :func:`check_paths` says which are missing, so a step never sees a path relative to a folder it
# does not run in (a pod, Great Expectations' stores) and results and XComs hold absolute paths.
PATH_KINDS = {
    "input": "a file or folder the step reads; a local one must exist",
    "output": "a folder the step writes (created when missing)",
    "model": "a model folder or a hub id; a value that names a local path must exist",
    "config": "a YAML recipe or policy: a path, or the file name of a packaged one",
}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://, gs://, file://, models:/, runs:/


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          path: str | None = None, keywords: tuple[str, ...] = ()):
    """A dataclass field whose help text is mandatory.

    ``path`` marks a path setting (a key of :data:`PATH_KINDS`); ``keywords`` are the words it also
    takes that are not paths (``auto``, ``production``), left as they are.
    """
    if path is not None and path not in PATH_KINDS:
        raise ValueError(f"field(path=...): expected one of {list(PATH_KINDS)}, got {path!r}")
    kwargs: dict[str, Any] = {"metadata": {"help": help, "path": path, "keywords": tuple(keywords)}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


_NULLS = ("null", "none", "~")


def _parse_scalar(text: str) -> Any:
    """A YAML reading of a command-line value, for settings that are lists or mappings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """Turn ``["a=1", "b.c=x"]`` into a nested dict; dotted keys address nested sections.

    Values stay text: each is converted to its setting's type in :func:`build`, so a free-text
    setting receives exactly what was typed (``--set comment="approved: yes"``). ``flag`` names
    the option the pairs came from in messages (``--trainer`` for a section's own flag).
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        key = key.strip()
        parts = key.split(".")
        if "=" not in pair or not all(part.strip() for part in parts):
            raise ConfigError(f"{flag} expects key=value, got {pair!r}")
        node = result
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{flag} {pair!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node[parts[-1]] = raw
    return result


def parse_json_overrides(texts: list[str] | None) -> dict[str, Any]:
    """Each ``--set-json`` argument, a JSON object of settings (nested for sections), merged in order.

    What a program that builds the settings passes (the DAG, from the trigger form's filled-in
    fields): typed values, no quoting rules, and a setting it leaves out is left to the recipe.
    """
    merged: dict[str, Any] = {}
    for text in texts or []:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--set-json expects a JSON object, got {text[:80]!r} ({exc})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--set-json expects a JSON object, got {type(value).__name__}: {text[:80]!r}")
        merged = deep_merge(merged, value)
    return merged


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``; nested mappings merge key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Coerce YAML/CLI values to the annotated type, or say what was expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NULLS)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _parse_scalar(value) if value.lstrip().startswith("[") else [
                v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or (dataclasses.is_dataclass(annotation) and isinstance(value, str)):
        value = _parse_scalar(value) if isinstance(value, str) else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} settings, got {value!r}")
        return build(annotation, value, where=where)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def build(cls: type[C], values: dict[str, Any], *, where: str = "config",
          sources: dict[str, str] | None = None) -> C:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys, coercing types and making local
    paths absolute (:func:`resolve_path`).

    ``where`` names where the values came from in messages; ``sources`` may name it per key (a
    recipe's key or a flag's), so a bad flag is not blamed on the recipe.
    """
    sources = sources or {}
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    # A config may say where keys of older recipes went (``MOVED``: old key -> new place).
    moved = getattr(cls, "MOVED", {})
    hint = "; ".join(f"{key} is now {moved[key]}" for key in unknown if key in moved)
    if unknown:
        raise ConfigError(
            f"{sources.get(unknown[0], where)}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            + (f"moved: {hint}; " if hint else "")
            + f"known settings are: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        origin = sources.get(name, where)
        label = f"{origin}.{name}" if origin else name
        kwargs[name] = coerce(value, hints[name], label)
        kind = known[name].metadata.get("path")
        if kind and isinstance(kwargs[name], str):
            try:
                kwargs[name] = resolve_path(kwargs[name], kind, known[name].metadata.get("keywords", ()))
            except FileNotFoundError as exc:  # a recipe or policy named by a path that is not there
                raise ConfigError(f"{label}: {exc}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field was not given
        raise ConfigError(f"{where}: {exc}") from exc


def is_uri(value: str) -> bool:
    """``s3://...``, ``file://...``, ``models:/...``: a location no local folder is resolved against."""
    return bool(_SCHEME.match(value.strip()))


def _names_local_path(value: str) -> bool:
    """Whether a model setting names a local path rather than a hub id (``name`` or ``org/name``)."""
    path = Path(value).expanduser()
    return value.startswith((".", "/", "~")) or len(path.parts) > 2 or path.exists()


def resolve_path(value: str, kind: str, keywords: tuple[str, ...] = ()) -> str:
    """A path setting's value as the step should see it, whatever folder it runs in: a local path
    absolute (relative to the current folder), a packaged recipe or policy by its file name
    (``kind="config"``); an empty value, a keyword, a URI or a hub id as given (stripped)."""
    text = value.strip()
    if not text or text in keywords or is_uri(text):
        return text
    if kind == "config":
        return settings.config_file(text)
    if kind == "model" and not _names_local_path(text):
        return text
    return os.path.abspath(os.path.expanduser(text))


def check_paths(config: Any) -> None:
    """Refuse a config whose local path settings name what is not there: an input that does not
    exist, a local model folder that does not, an output folder that is a file. One
    :class:`ConfigError` naming each such setting, before the step does any work."""
    problems = _path_problems(config, "")
    if problems:
        raise ConfigError("; ".join(problems))


def _path_problems(config: Any, prefix: str) -> list[str]:
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        name = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += _path_problems(value, name + ".")
            continue
        kind = f.metadata.get("path")
        if not kind or not isinstance(value, str):
            continue
        text = value.strip()
        if not text or text in f.metadata.get("keywords", ()) or is_uri(text):
            continue
        local = Path(text).expanduser()
        flag = "--" + f.name.replace("_", "-")
        if kind in ("input", "config") and not local.exists():
            problems.append(f"{name} ({flag}): no such file or folder: {text}")
        elif kind == "model" and _names_local_path(text) and not local.is_dir():
            what = "is not a folder" if local.exists() else "no such folder"
            problems.append(f"{name} ({flag}): {what}: {text} (a model is a folder written by save_pretrained, "
                            "or a hub id such as org/name)")
        elif kind == "output" and local.exists() and not local.is_dir():
            problems.append(f"{name} ({flag}): {text} is a file; expected a folder to write into")
    return problems


def load(cls: type[C], config_file: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> C:
    """defaults < YAML recipe < CLI/Param overrides."""
    values: dict[str, Any] = {}
    where = cls.__name__
    if config_file:
        try:  # a packaged recipe or policy may be named by its file name alone
            config_file = settings.config_file(str(config_file))
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        values = load_yaml(config_file)
        where = str(config_file)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    merged = deep_merge(values, extra)
    # a value given over the recipe is named as the setting's, not as the recipe's
    return build(cls, merged, where=where, sources={key: cls.__name__ for key in extra})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Any) -> str:
    """Content hash of a resolved config, recorded as lineage on the run and the model version."""
    payload = json.dumps(to_dict(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def describe(cls: type) -> list[tuple[str, str, Any]]:
    """(name, help, default) for each field; used for CLI help and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, f.metadata.get("help", ""), default))
    return rows
