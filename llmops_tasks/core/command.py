"""What a step module gives the CLI: its config dataclass and the function that runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Command:
    """A runnable step: its config dataclass and the function that runs it."""

    config_cls: type
    run: Callable[[Any], dict]
    help: str
    # Human-readable rendering of the result; the JSON is printed instead when the config says json.
    render: Callable[[dict], str] | None = None
