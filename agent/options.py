"""Typed ``options:`` for engines and handlers. A plugin class that sets ``options_model`` to
an ``Options`` subclass has its config options checked at start-up: a key it does not declare
is an error naming the key and the nearest declared one, and a value of the wrong type names
the field. A class without one (``None``) takes any keys, as before.

    class SpeechOptions(Options):
        threshold: float = Field(default=0.5, gt=0, lt=1)

    class SpeechHandler(Handler):
        options_model = SpeechOptions
        ...
        opts = SpeechOptions.of(self.ctx.options)   # typed, defaults filled in
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import ConfigError

O = TypeVar("O", bound="Options")  # noqa: E741 - reads as "options"


class Options(BaseModel):
    """Base of an engine's or handler's options: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def of(cls: type[O], options: Mapping[str, Any]) -> O:
        """``options`` validated (``check_options`` has already named any mistake)."""
        return cls.model_validate(dict(options))


def check_options(model: type[Options] | None, options: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` for an option ``model`` does not declare (naming the nearest one)
    or a value of the wrong type; ``where`` is the config path (``models.ocr.options``)."""
    if model is None:
        return
    known = sorted(model.model_fields)
    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{where}: unknown option {key!r}; {hint}"
                              f"options: {', '.join(known) or 'none'}")
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise ConfigError(f"{where}.{field}: {first['msg']}") from None
