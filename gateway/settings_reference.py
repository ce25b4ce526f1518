"""The configuration reference: README "Configuration"'s table, rendered from ``Settings``.

Each row is one field of :class:`gateway.config.Settings`: the environment variable, its
default as an operator would type it, and the field's docstring as its meaning. The README
holds the rendered table between two marker comments; ``make docs`` rewrites it and a test
fails while it differs, so a setting cannot be added or changed without its row::

    .venv/bin/python -m gateway.settings_reference                    # print the table
    .venv/bin/python -m gateway.settings_reference --write README.md  # rewrite the block
    .venv/bin/python -m gateway.settings_reference --check README.md  # exit 1 if it differs

Documentation tooling only: nothing in the gateway imports this module.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from gateway.config import Settings

START = "<!-- settings-reference:start -->"
END = "<!-- settings-reference:end -->"
GENERATED_NOTE = (
    "<!-- Generated from the field docstrings in gateway/config.py: edit those, then run "
    "`make docs`. -->"
)
HEADER = "| variable | default | meaning |\n|---|---|---|"

_RST_LITERAL = re.compile(r"``(.+?)``")


class ReferenceBlockError(ValueError):
    """The document does not hold exactly one start marker followed by one end marker."""


def variable_name(name: str, settings_class: type[BaseSettings] = Settings) -> str:
    """``GATEWAY_`` plus the field's name in capitals: what the operator sets."""
    prefix = settings_class.model_config.get("env_prefix", "")
    return f"{prefix}{name}".upper()


def markdown(text: str) -> str:
    """A docstring as one Markdown table cell: RST ``literals`` become `code`, the lines one
    line, and a ``|`` cannot end the cell early."""
    text = _RST_LITERAL.sub(r"`\1`", text)
    return " ".join(text.split()).replace("|", "\\|")


def _default_doc(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    if isinstance(extra, dict):
        doc = extra.get("default_doc")
        if doc is not None:
            return str(doc)
    return None


def render_value(value: Any) -> str:
    """A default as it is typed in the environment (pydantic-settings reads it back as the same
    value): ``true``/``false``, numbers without a trailing ``.0``, JSON lists for collections
    (sorted for sets), ``unset`` for None and ``empty`` for an empty string or secret. A
    secret's value is never shown."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "empty" if not value.get_secret_value() else "set (not shown)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, int | float):
        return f"`{value!r}`"
    if isinstance(value, frozenset | set):
        return f"`{json.dumps(sorted(value), separators=(',', ':'))}`"
    if isinstance(value, list | tuple):
        return f"`{json.dumps(list(value), separators=(',', ':'))}`"
    if isinstance(value, str | Path):
        text = str(value)
        return f"`{text}`" if text else "empty"
    raise TypeError(
        f"no rendering for a default of type {type(value).__name__}: teach "
        "gateway.settings_reference.render_value, or give the field "
        'json_schema_extra={"default_doc": "..."}'
    )


def render_default(field: FieldInfo) -> str:
    """The default cell: the field's ``default_doc`` where the real default cannot be shown
    (it is computed at run time), else the default itself."""
    doc = _default_doc(field)
    if doc is not None:
        return markdown(doc)
    default = field.get_default(call_default_factory=True, validated_data={})
    if default is PydanticUndefined:
        return "required"
    return render_value(default).replace("|", "\\|")  # a pipe cannot end the cell early


def render_meaning(name: str, field: FieldInfo) -> str:
    if not field.description:
        raise ValueError(
            f"Settings.{name} has no docstring: write its meaning below the field "
            "(it is the README's configuration reference)"
        )
    return markdown(field.description)


def render_table(settings_class: type[BaseSettings] = Settings) -> str:
    """The whole table, one row per field in declaration order."""
    rows = [
        f"| `{variable_name(name, settings_class)}` | {render_default(field)} | "
        f"{render_meaning(name, field)} |"
        for name, field in settings_class.model_fields.items()
    ]
    return "\n".join([HEADER, *rows])


def render_block(settings_class: type[BaseSettings] = Settings) -> str:
    """The markers and what stands between them (blank lines keep the table a block of its
    own in every Markdown renderer)."""
    return f"{START}\n{GENERATED_NOTE}\n\n{render_table(settings_class)}\n\n{END}"


def replace_block(document: str, block: str) -> str:
    """``document`` with its marked block replaced by ``block``; the text around it kept."""
    if document.count(START) != 1 or document.count(END) != 1:
        raise ReferenceBlockError(f"expected exactly one {START!r} and one {END!r} in the document")
    head, rest = document.split(START)
    if END not in rest:
        raise ReferenceBlockError(f"{END!r} comes before {START!r}")
    _, tail = rest.split(END)
    return f"{head}{block}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.settings_reference",
        description="Render the GATEWAY_* configuration reference from gateway.config.Settings.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", type=Path, help="rewrite FILE's block")
    action.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE's differs")
    args = parser.parse_args(argv)
    target: Path | None = args.write or args.check
    if target is None:
        sys.stdout.write(render_table() + "\n")
        return 0
    current = target.read_text(encoding="utf-8")
    updated = replace_block(current, render_block())
    if args.check:
        if updated != current:
            sys.stderr.write(f"{target}: the configuration table is out of date: run `make docs`\n")
            return 1
        return 0
    if updated != current:
        target.write_text(updated, encoding="utf-8")
        sys.stdout.write(f"{target}: configuration table rewritten\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
