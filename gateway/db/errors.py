"""Telling a database outage from a bug, by what the failure means.

An outage (the server is down, restarting, failing over, refusing connections, out of
resources, or cancelled our statement) is answered 503 ``ledger_unavailable``: the gateway
fails closed and the client may retry. Anything else (a constraint broken, a missing table)
is a bug, and a bug is a 500 that pages someone. Classified by SQLSTATE where the server
sent one, else by where it failed:

    raised while connecting (no statement) ........ outage, whatever the SQLSTATE: 55000
                                                    "not accepting connections", 28000/28P01
                                                    refused credentials, 3D000 no database
    08xxx connection exception .................... outage
    53xxx insufficient resources .................. outage (53300 too many clients, disk full)
    57P01-05 operator intervention ................ outage (admin or crash shutdown; 57P03
                                                    starting up, shutting down, in recovery;
                                                    database dropped; idle session timeout)
    57014 query cancelled ......................... outage (statement_timeout, or an
                                                    operator's pg_cancel_backend)
    25006 read-only transaction ................... outage (connected to a standby or a
                                                    demoted primary after a failover)
    40001 serialization failure, 40P01 deadlock ... outage (rolled back whole: "conflict with
                                                    recovery" on a standby; safe to retry)
    55P03 lock not available ...................... outage (lock_timeout)
    58xxx system error (I/O) ...................... outage
    a dropped or invalidated connection ........... outage
    the pool's checkout timeout ................... outage (every connection busy)
    OSError / TimeoutError (refused, reset) ....... outage
    anything else ................................. a bug (500)
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_OUTAGE_SQLSTATE_PREFIXES = (
    "08",
    "53",
    "57P",
    "57014",
    "25006",
    "40001",
    "40P01",
    "55P03",
    "58",
    "3D",
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE the server sent with ``exc``, if any (through SQLAlchemy's wrappers)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            return sqlstate
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be used right now (not a bug in a query)."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        if exc.statement is None:  # raised by connect(): no database to talk to
            return True
        sqlstate = sqlstate_of(exc) or ""
        return sqlstate.startswith(_OUTAGE_SQLSTATE_PREFIXES)
    return isinstance(exc, OSError | ConnectionError | TimeoutError)
