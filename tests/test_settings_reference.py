"""README "Configuration" is generated from ``Settings``: a setting added without its row, a
default changed or a meaning edited in one place only fails here until ``make docs`` is run."""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config import Settings
from gateway.settings_reference import (
    END,
    START,
    ReferenceBlockError,
    main,
    render_block,
    render_default,
    render_table,
    replace_block,
    variable_name,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _rows() -> dict[str, tuple[str, str]]:
    """Variable → (default cell, meaning cell) of the rendered table."""
    rows = {}
    for line in render_table().splitlines()[2:]:
        variable, default, meaning = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        rows[variable.strip("`")] = (default, meaning)
    return rows


def test_the_readme_table_is_the_one_settings_renders() -> None:
    current = README.read_text(encoding="utf-8")
    expected = replace_block(current, render_block())
    diff = "\n".join(
        difflib.unified_diff(
            current.splitlines(), expected.splitlines(), "README.md", "generated", lineterm=""
        )
    )
    assert current == expected, (
        "README.md's configuration table differs from gateway.config.Settings: "
        f"run `make docs` (and edit meanings in the field docstrings, not the README)\n{diff}"
    )


def test_the_table_keeps_its_place_in_the_configuration_section() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert START in section and END in section
    assert "GATEWAY_TEST_DATABASE_URL" in section.split(END, 1)[1]  # the prose after it stays


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, (
        f"write a docstring under each of these fields in gateway/config.py: {missing}"
    )


def test_every_setting_has_exactly_one_row() -> None:
    variables = [line.split(" | ", 1)[0] for line in render_table().splitlines()[2:]]
    assert variables == [f"| `GATEWAY_{name.upper()}`" for name in Settings.model_fields]


@pytest.mark.parametrize(
    ("variable", "default"),
    [
        ("GATEWAY_RECONCILER_INTERVAL_SECONDS", "`15`"),
        ("GATEWAY_DATABASE_PGBOUNCER", "`false`"),
        ("GATEWAY_DATABASE_DIRECT_STATEMENTS", "`true`"),
        ("GATEWAY_MAX_REQUEST_BODY_BYTES", "`16777216`"),
        ("GATEWAY_SUCCESS_STATUS_WORDS", '`["completed","done","succeeded"]`'),
        ("GATEWAY_FOCUS_PUBLISHER", "`xAI`"),
        ("GATEWAY_DATABASE_URL", "unset"),
        ("GATEWAY_ADMIN_PORT", "unset"),
        ("GATEWAY_KEY_PEPPER", "empty"),
        ("GATEWAY_JWT_ALGORITHMS", "empty"),
        ("GATEWAY_OUTBOX_DIR", "`$TMPDIR/video-gateway-outbox`"),
    ],
)
def test_defaults_are_rendered_as_an_operator_types_them(variable: str, default: str) -> None:
    assert _rows()[variable][0] == default


def test_every_rendered_default_reads_back_as_the_real_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Typed into the environment as rendered, each shown default gives the field its default."""
    shown = {}
    for name, field in Settings.model_fields.items():
        default = render_default(field)
        extra = field.json_schema_extra
        if isinstance(extra, dict) and "default_doc" in extra:
            continue  # a human word, not a value
        if default == "unset":
            assert field.default is None, name
            continue
        shown[name] = "" if default == "empty" else default.removeprefix("`").removesuffix("`")
    for name in Settings.model_fields:
        monkeypatch.delenv(variable_name(name), raising=False)
    for name, value in shown.items():
        monkeypatch.setenv(variable_name(name), value)
    read = Settings(_env_file=None)
    for name in shown:
        assert getattr(read, name) == Settings.model_fields[name].default, variable_name(name)
    assert read.reconciler_interval_seconds == 15.0
    assert read.database_pgbouncer is False


def test_default_doc_is_only_for_defaults_that_cannot_be_shown() -> None:
    overridden = {
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and "default_doc" in field.json_schema_extra
    }
    assert "outbox_dir" in overridden
    shown_as_words = {n for n in overridden if Settings.model_fields[n].default is not None}
    assert not shown_as_words, f"show these defaults, not a default_doc: {shown_as_words}"


def test_a_secret_default_is_never_printed() -> None:
    class WithSecrets(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_", use_attribute_docstrings=True)

        token: SecretStr = SecretStr("hunter2-but-longer")
        """A token."""
        empty: SecretStr = SecretStr("")
        """Nothing yet."""
        where: str | None = Field(default=None, json_schema_extra={"default_doc": "``/tmp``"})
        """Somewhere | else."""

    table = render_table(WithSecrets)
    assert "hunter2" not in table
    assert "| `X_TOKEN` | set (not shown) | A token. |" in table
    assert "| `X_EMPTY` | empty | Nothing yet. |" in table
    assert "| `X_WHERE` | `/tmp` | Somewhere \\| else. |" in table  # a pipe cannot split a cell


def test_replace_block_keeps_the_text_around_it() -> None:
    document = f"before\n{START}\nstale\n{END}\nafter\n"
    assert replace_block(document, "NEW") == "before\nNEW\nafter\n"
    for broken in ("no markers", f"{START} {START} {END}", f"{END} then {START}"):
        with pytest.raises(ReferenceBlockError):
            replace_block(broken, "NEW")


def test_the_check_command_says_to_run_make_docs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{START}\n| old |\n{END}\n", encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8").startswith(f"# x\n\n{START}\n")


def test_nothing_in_the_gateway_imports_the_reference() -> None:
    """Documentation tooling stays out of the request path (and out of every process's imports)."""
    importers = []
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [f"{node.module}.{alias.name}" for alias in node.names]
                modules.append(node.module or "")
            else:
                continue
            if any(module.startswith("gateway.settings_reference") for module in modules):
                importers.append(str(path.relative_to(ROOT)))
    assert not importers
