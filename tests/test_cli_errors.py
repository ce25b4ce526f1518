"""Every way an operator's first hour goes wrong on the command line ends the same way: one
``error:`` line on stderr that says what to do, no traceback, and the documented exit status
(1 operational, 2 usage; README "Command line"). Each command runs as its own process, with
nothing of this process's ``GATEWAY_*`` environment."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection

from gateway.db.engine import create_engine
from gateway.db.migrations import alembic_config, head_revisions
from tests.support.commands import GATEWAY, environment_without_gateway, run_gateway
from tests.support.database import (
    create_postgres_database,
    drop_postgres_database,
    require_postgres,
    server_url,
)

OPERATIONAL, USAGE = 1, 2


@pytest.fixture(scope="module")
def ledger() -> Iterator[str]:
    """A migrated database of this module's own, with one team."""
    require_postgres()
    url = create_postgres_database(migrated=True)
    assert run_gateway("teams", "create", "video-lab", env=env(url)).returncode == 0
    yield url
    drop_postgres_database(url)


@pytest.fixture
def empty_database() -> Iterator[str]:
    require_postgres()
    url = create_postgres_database(migrated=False)
    yield url
    drop_postgres_database(url)


def env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    if database_url is not None:
        extra["GATEWAY_DATABASE_URL"] = database_url
    return environment_without_gateway(**extra)


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single ``error:`` line of a failed command (or click's usage error)."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if code == USAGE:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    else:
        errors = result.stderr.splitlines()
        assert all(line.startswith("error: ") for line in errors), result.stderr
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_an_unset_database_url_is_an_error_and_creates_no_file(tmp_path: Path) -> None:
    result = run_gateway("teams", "list", env=env(), cwd=tmp_path)
    line = one_error(result, OPERATIONAL)
    assert line.startswith("error: GATEWAY_DATABASE_URL is not set: set it to postgresql://")
    assert list(tmp_path.iterdir()) == []  # no ./gateway.db made behind the operator's back


def test_an_unreachable_database_names_it_without_its_password() -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/ledger"
    line = one_error(run_gateway("teams", "list", env=env(url)), OPERATIONAL)
    assert "cannot use the database at postgresql://postgres:***@127.0.0.1:1/ledger" in line
    assert "ConnectionRefusedError" in line and "GATEWAY_DATABASE_URL" in line
    assert "hunter2" not in line


def test_a_database_that_does_not_exist_says_so() -> None:
    require_postgres()
    url = server_url().rsplit("/", 1)[0] + "/gw_no_such_database"
    line = one_error(run_gateway("teams", "list", env=env(url)), OPERATIONAL)
    assert 'database "gw_no_such_database" does not exist' in line


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("garbage", "GATEWAY_DATABASE_URL: the database URL is not a URL: expected postgresql://"),
        ("mysql://u@127.0.0.1/l", "unsupported database URL scheme 'mysql'"),
        ("postgres://u@127.0.0.1/l?sslmode=always", "sslmode='always' in the database URL"),
        ("postgres://u@127.0.0.1/l?target_session_attrs=any", "unsupported database URL param"),
    ],
)
def test_an_unusable_database_url_is_refused_before_connecting(url: str, message: str) -> None:
    assert message in one_error(run_gateway("teams", "list", env=env(url)), OPERATIONAL)


def test_postgres_urls_in_the_forms_operators_paste_work(ledger: str) -> None:
    for scheme in ("postgres://", "postgresql://", "postgresql+asyncpg://"):
        url = scheme + ledger.split("://", 1)[1] + "?application_name=gateway-cli&sslmode=disable"
        listed = run_gateway("teams", "list", "--json", env=env(url))
        assert listed.returncode == 0, listed.stderr
        assert [t["name"] for t in json.loads(listed.stdout)] == ["video-lab"]


def test_a_schema_not_yet_created_says_run_db_upgrade_and_db_check_gates_on_it(
    empty_database: str,
) -> None:
    line = one_error(run_gateway("teams", "list", env=env(empty_database)), OPERATIONAL)
    assert line == "error: the database has no gateway schema yet: run `gateway db upgrade`"
    checked = run_gateway("db", "check", env=env(empty_database))
    assert one_error(checked, OPERATIONAL) == line
    state = json.loads(run_gateway("db", "current", "--json", env=env(empty_database)).stdout)
    assert state["at_head"] is False and state["revisions"] == []

    assert run_gateway("db", "upgrade", env=env(empty_database)).returncode == 0
    passed = run_gateway("db", "check", env=env(empty_database))
    assert passed.returncode == 0, passed.stderr
    assert "schema is current" in passed.stdout


def test_a_schema_behind_head_names_both_revisions(empty_database: str) -> None:
    (head,) = head_revisions()
    previous = f"{int(head) - 1:04d}"

    async def upgrade_to_previous() -> None:
        engine = create_engine(empty_database)

        def _upgrade(connection: Connection) -> None:
            command.upgrade(alembic_config(connection), previous)

        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
        await engine.dispose()

    asyncio.run(upgrade_to_previous())
    expected = (
        f"error: the database schema is behind (at {previous}, head is {head}): "
        "run `gateway db upgrade`"
    )
    for args in (["teams", "list"], ["report", "closed"], ["db", "check"]):
        assert one_error(run_gateway(*args, env=env(empty_database)), OPERATIONAL) == expected


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    line = one_error(run_gateway("teams", "list", env=env(f"sqlite:///{path}")), OPERATIONAL)
    assert line.startswith(f"error: the SQLite database {path} does not exist: run `gateway db")
    assert not path.exists()
    assert run_gateway("db", "upgrade", env=env(f"sqlite:///{path}")).returncode == 0
    assert run_gateway("teams", "list", env=env(f"sqlite:///{path}")).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-by", "foo"], "Invalid value for '--group-by': 'foo': group by team, cost_c"),
        (["--month", "2026-1"], "Invalid value for '--month': '2026-1' is not a month: give YY"),
        (["--tag", "project"], "Invalid value for '--tag': 'project': give KEY=VALUE"),
        (["--format", "pdf"], "Invalid value for '--format': 'pdf' is not one of"),
    ],
)
def test_chargeback_options_that_cannot_work_are_usage_errors(
    ledger: str, args: list[str], message: str
) -> None:
    argv = ["report", "chargeback", "--month", "2026-11", *args]
    assert message in one_error(run_gateway(*argv, env=env(ledger)), USAGE)


@pytest.mark.parametrize("fmt", ["csv", "json", "html", "focus"])
def test_a_chargeback_of_a_team_that_does_not_exist_is_an_error(ledger: str, fmt: str) -> None:
    argv = ["report", "chargeback", "--month", "2026-11", "--format", fmt, "--team", "nosuch"]
    result = run_gateway(*argv, env=env(ledger))
    assert one_error(result, OPERATIONAL) == "error: no team named 'nosuch'"
    assert result.stdout == ""


def test_a_rate_for_a_resolution_the_model_lacks_is_refused(ledger: str) -> None:
    argv = ["rates", "set", "--version", "2027-01", "--image-fee-usd", "0.05"]
    rates = ["--per-second-usd", "480p=0.1", "--per-second-usd", "720p=0.2"]
    result = run_gateway(*argv, *rates, "--per-second-usd", "1080p=1", env=env(ledger))
    line = one_error(result, OPERATIONAL)
    assert line == "error: grok-imagine-video-1-5 has no resolution 1080p: it accepts 480p, 720p"
    listed = json.loads(run_gateway("rates", "list", "--json", env=env(ledger)).stdout)
    assert "2027-01" not in [card["version"] for card in listed]  # nothing was stored

    bad_amount = run_gateway(*argv, "--per-second-usd", "720p=cheap", env=env(ledger))
    assert "Invalid value for '--per-second-usd'" in one_error(bad_amount, USAGE)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "GATEWAY_RECONCILER_INTERVAL_SECONDS",
            "-1",
            "error: GATEWAY_RECONCILER_INTERVAL_SECONDS='-1': input should be greater than 0",
        ),
        (
            "GATEWAY_LOG_FORMAT",
            "xml",
            "error: GATEWAY_LOG_FORMAT='xml': input should be 'json' or 'text'",
        ),
        (
            "GATEWAY_DATABASE_POOL_SIZE",
            "many",
            "error: GATEWAY_DATABASE_POOL_SIZE='many': input should be a valid integer",
        ),
        (
            "GATEWAY_UNANSWERED_SUBMIT_RELEASE_AFTER_SECONDS",
            "5",
            "error: GATEWAY_UNANSWERED_SUBMIT_RELEASE_AFTER_SECONDS (5) must exceed the longest",
        ),
    ],
)
def test_an_invalid_setting_names_the_variable_the_value_and_the_rule(
    ledger: str, variable: str, value: str, message: str
) -> None:
    result = run_gateway("teams", "list", env=env(ledger, **{variable: value}))
    assert one_error(result, OPERATIONAL).startswith(message)
    assert "pydantic" not in result.stderr and "validation error for Settings" not in result.stderr


def test_a_secret_setting_that_is_invalid_is_not_echoed(ledger: str) -> None:
    result = run_gateway(
        "teams",
        "list",
        env=env(ledger, GATEWAY_ENVIRONMENT="production", GATEWAY_ADMIN_TOKEN="hunter2"),
    )
    line = one_error(result, OPERATIONAL)
    assert "GATEWAY_ADMIN_TOKEN must be set to a real secret" in line
    assert "hunter2" not in result.stderr


def test_a_misspelled_variable_is_warned_about_with_the_right_name(ledger: str) -> None:
    result = run_gateway(
        "teams", "list", env=env(ledger, GATEWAY_RECONCILER_INTERVAL="3", GATEWAY_FOO="1")
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: GATEWAY_FOO is not a gateway setting and is ignored",
        "warning: GATEWAY_RECONCILER_INTERVAL is not a gateway setting and is ignored "
        "(did you mean GATEWAY_RECONCILER_INTERVAL_SECONDS?)",
    ]


def test_usage_errors_exit_2(ledger: str) -> None:
    assert "No such option '--nope'" in one_error(
        run_gateway("teams", "list", "--nope", env=env(ledger)), USAGE
    )
    assert "nothing to change" in one_error(
        run_gateway("teams", "update", "video-lab", env=env(ledger)), USAGE
    )
    negative = run_gateway("teams", "create", "x", "--monthly-budget-usd", "-5", env=env(ledger))
    assert "Invalid value for '--monthly-budget-usd'" in one_error(negative, USAGE)


def test_refused_changes_exit_1(ledger: str) -> None:
    duplicate = run_gateway("teams", "create", "video-lab", env=env(ledger))
    assert "already exists" in one_error(duplicate, OPERATIONAL)
    unknown = run_gateway("keys", "revoke", "nosuchkey", env=env(ledger))
    assert one_error(unknown, OPERATIONAL) == "error: no API key with id 'nosuchkey'"


def test_progress_goes_to_a_terminal_only(ledger: str) -> None:
    argv = ["report", "chargeback", "--month", "2026-11", "--format", "focus"]
    piped = run_gateway(*argv, env=env(ledger))
    assert piped.returncode == 0 and piped.stderr == ""  # no control characters in a log
    assert piped.stdout.startswith("BilledCost,") or "," in piped.stdout.splitlines()[0]

    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [*GATEWAY, *argv],
            env=env(ledger, TERM="xterm", COLUMNS="100"),
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert process.returncode == 0
    assert b"FOCUS 2026-11" in seen  # the bar, drawn on the terminal
    assert process.stdout.splitlines() == piped.stdout.encode().splitlines()  # export unchanged
