"""Step configuration: one dataclass per step, loaded as defaults < YAML recipe < CLI overrides.

Every field carries its help text in ``metadata["help"]``; the CLI and the docs are generated
from it. Unknown keys are an error (a stale recipe must not be silently ignored), and each config
validates itself in ``__post_init__`` with a message that says what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field whose help text is mandatory."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
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


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=x"]`` into a nested dict; dotted keys address nested sections.

    Values stay text: each is converted to its setting's type in :func:`build`, so a free-text
    setting receives exactly what was typed (``--set comment="approved: yes"``).
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, _, raw = pair.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = raw
    return result


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


def build(cls: type[C], values: dict[str, Any], *, where: str = "config") -> C:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and coercing types."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    # A config may say where keys of older recipes went (``MOVED``: old key -> new place).
    moved = getattr(cls, "MOVED", {})
    hint = "; ".join(f"{key} is now {moved[key]}" for key in unknown if key in moved)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
            + (f"moved: {hint}; " if hint else "")
            + f"known settings are: {', '.join(sorted(known))}"
        )
    kwargs = {name: coerce(value, hints[name], f"{where}.{name}" if where else name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field was not given
        raise ConfigError(f"{where}: {exc}") from exc


def load(cls: type[C], config_file: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> C:
    """defaults < YAML recipe < CLI/Param overrides."""
    values: dict[str, Any] = {}
    where = cls.__name__
    if config_file:
        values = load_yaml(config_file)
        where = str(config_file)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return build(cls, deep_merge(values, extra), where=where)


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
