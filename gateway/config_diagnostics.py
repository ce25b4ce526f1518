"""What is wrong with a configuration, in the operator's terms: the ``GATEWAY_*`` variable,
the value given and the rule it breaks; and which ``GATEWAY_*`` variables are not settings
at all (a misspelling would otherwise silently keep the default)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from gateway.config import Settings

PREFIX = "GATEWAY_"
# Variables of the same prefix read by something other than Settings (the test suite's).
_NOT_SETTINGS = ("GATEWAY_TEST_",)


def variable(field: str) -> str:
    return PREFIX + field.upper()


def known_variables() -> frozenset[str]:
    return frozenset(variable(name) for name in Settings.model_fields)


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``GATEWAY_X='value': rule`` (or the cross-setting rule, which
    names its own variables)."""
    lines = []
    for error in exc.errors(include_url=False):
        location = error.get("loc") or ()
        message = str(error.get("msg", "invalid"))
        if not location:  # a model validator: its message names the variables
            lines.append(message.removeprefix("Value error, "))
            continue
        name = variable(str(location[0]))
        given = error.get("input")
        shown = "(secret)" if _is_secret(str(location[0])) else repr(given)
        lines.append(f"{name}={shown}: {_rule(message)}")
    return lines


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and "SecretStr" in repr(info.annotation)


def _rule(message: str) -> str:
    text = message.removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


def unknown_variables(
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, str | None]]:
    """``GATEWAY_*`` variables that name no setting, each with the closest setting's name."""
    env = os.environ if environ is None else environ
    known = known_variables()
    return [
        (name, _closest(name, known))
        for name in sorted(env)
        if name.startswith(PREFIX) and name not in known and not name.startswith(_NOT_SETTINGS)
    ]


def _closest(name: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return matches[0] if matches else None
