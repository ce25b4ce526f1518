"""Database URLs as operators paste them (PRODUCT §12): ``postgresql://``, ``postgres://`` and
``postgresql+asyncpg://``, with the libpq query parameters every managed Postgres prints
(``sslmode``, ``sslrootcert``, ``application_name``, ``connect_timeout``, ``options``),
translated into what asyncpg takes; ``sqlite://`` for the demo. Anything else is refused with
a message that says what is accepted, before a connection is tried."""

from __future__ import annotations

import shlex
import ssl
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_LIBPQ_PARAMETERS = ("sslmode", "sslrootcert", "application_name", "connect_timeout", "options")


class DatabaseUrlError(ValueError):
    """``GATEWAY_DATABASE_URL`` cannot be used as given (the message says why and what works)."""


@dataclass(frozen=True)
class DatabaseTarget:
    url: str
    """For SQLAlchemy: the async driver, no libpq parameter left in the query."""
    connect_args: dict[str, Any] = field(default_factory=dict)
    """For asyncpg's ``connect()``: ``ssl``, ``server_settings``, ``timeout``."""


def database_target(url: str) -> DatabaseTarget:
    """``url`` parsed, its scheme given an async driver and its libpq parameters translated;
    ``DatabaseUrlError`` saying what is wrong and what is accepted otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            "the database URL is not a URL: expected postgresql://USER:PASSWORD@HOST:PORT/DB "
            "(or sqlite:///PATH for the embedded database)"
        ) from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in _ASYNC_DRIVERS.values():
        raise DatabaseUrlError(
            f"unsupported database URL scheme {parsed.drivername!r}: use postgresql://, "
            "postgres:// or sqlite://"
        )
    parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() != "postgresql":
        return DatabaseTarget(parsed.render_as_string(hide_password=False))
    query = dict(parsed.query)
    libpq = {name: _single(name, query.pop(name)) for name in _LIBPQ_PARAMETERS if name in query}
    unknown = sorted(set(query) - {"prepared_statement_cache_size"})
    if unknown:
        raise DatabaseUrlError(
            f"unsupported database URL parameter(s) {', '.join(unknown)}: the gateway accepts "
            f"{', '.join(_LIBPQ_PARAMETERS)}"
        )
    cleaned: URL = parsed.set(query=query)
    return DatabaseTarget(cleaned.render_as_string(hide_password=False), _connect_args(libpq))


def normalize_database_url(url: str) -> str:
    """The URL SQLAlchemy is given (see ``database_target``)."""
    return database_target(url).url


def is_sqlite(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "sqlite"
    except ArgumentError:
        return False  # not a URL at all: database_target says so


def _single(name: str, value: str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        raise DatabaseUrlError(f"the database URL gives {name} more than once")
    return value


def _connect_args(libpq: dict[str, str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if "sslmode" in libpq or "sslrootcert" in libpq:
        args["ssl"] = _ssl(libpq.get("sslmode", "prefer"), libpq.get("sslrootcert"))
    settings: dict[str, str] = {}
    if "application_name" in libpq:
        settings["application_name"] = libpq["application_name"]
    if "options" in libpq:
        settings.update(_server_options(libpq["options"]))
    if settings:
        args["server_settings"] = settings
    if "connect_timeout" in libpq:
        try:
            timeout = float(libpq["connect_timeout"])
        except ValueError:
            timeout = -1.0
        if timeout <= 0:
            raise DatabaseUrlError(
                f"connect_timeout={libpq['connect_timeout']!r} in the database URL: give a "
                "positive number of seconds"
            )
        args["timeout"] = timeout
    return args


def _ssl(mode: str, root_certificate: str | None) -> ssl.SSLContext | str | bool:
    """libpq's meaning of each ``sslmode``: ``verify-ca`` and ``verify-full`` check the server's
    certificate against ``sslrootcert`` (else the system's CAs), ``verify-full`` its host name
    too; ``require`` with an ``sslrootcert`` verifies the CA, as libpq does."""
    if mode not in _SSL_MODES:
        raise DatabaseUrlError(
            f"sslmode={mode!r} in the database URL: use one of {', '.join(_SSL_MODES)}"
        )
    if mode == "disable":
        return False
    if mode in ("allow", "prefer") or (mode == "require" and root_certificate is None):
        return mode
    try:
        context = ssl.create_default_context(cafile=root_certificate)
    except (OSError, ssl.SSLError) as exc:
        raise DatabaseUrlError(f"sslrootcert={root_certificate!r} cannot be read: {exc}") from None
    context.check_hostname = mode == "verify-full"
    return context


def _server_options(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c name=value`` or ``--name=value``, repeated) as server settings."""
    settings: dict[str, str] = {}
    words = shlex.split(options)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            setting, index = words[index + 1], index + 2
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            setting, index = word[2:], index + 1
        else:
            raise DatabaseUrlError(
                f"options={options!r} in the database URL: only '-c name=value' settings are "
                "accepted"
            )
        name, equals, value = setting.partition("=")
        if not equals or not name:
            raise DatabaseUrlError(
                f"options={options!r} in the database URL: '{setting}' is not name=value"
            )
        settings[name.replace("-", "_")] = value
    return settings
