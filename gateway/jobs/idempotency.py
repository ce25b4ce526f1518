"""``Idempotency-Key`` on submit (the IETF httpapi draft's semantics): a retry with the same
key never creates a second job or bills twice.

The key is claimed in the same transaction as the hold, so a retry can never create a second
job or a second hold. Then:

- same key, same body, first answer stored → that answer is replayed (``Idempotent-Replayed``);
- same key, other body → 422 ``idempotency_key_reused``;
- same key while the first request is still in flight → 409 ``idempotency_key_in_use``.

When the upstream refused the first request (nothing was created, nothing billed), the claim is
dropped so the client may retry with the same key. Keys are kept for
``GATEWAY_IDEMPOTENCY_KEY_TTL_HOURS`` (at least 24 h), then purged by the reconciler.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.session import dialect_name
from gateway.errors import Conflict, InvalidRequest, Unprocessable
from gateway.jobs.models import IdempotencyKey

IN_FLIGHT = "in_flight"
COMPLETED = "completed"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# A retry's answer once a job was released without the upstream ever confirming it: the
# upstream may have run it anyway, so a retry must not silently submit a second one.
OUTCOME_UNKNOWN = StoredResponse(
    504,
    json.dumps(
        {
            "error": {
                "type": "upstream_error",
                "code": "upstream_outcome_unknown",
                "param": None,
                "message": "the upstream never confirmed this job; it was not billed. To run it "
                "anyway, submit again with a new Idempotency-Key.",
            }
        }
    ).encode(),
    {"content-type": "application/json"},
)


def request_fingerprint(raw_body: bytes, tags: str = "") -> str:
    """What "the same request" means for a key: the same body bytes and the same tags. Without
    tags it is the body's hash alone, as before tags existed, so stored keys stay valid."""
    if not tags:
        return hashlib.sha256(raw_body).hexdigest()
    return hashlib.sha256(raw_body + b"\n" + tags.encode()).hexdigest()


def check_key(key: str) -> str:
    if not _VALID_KEY.fullmatch(key):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return key


async def claim(
    session: AsyncSession,
    *,
    team_id: int,
    key: str,
    fingerprint: str,
    job_id: str,
    now: datetime,
    ttl: timedelta,
) -> StoredResponse | None:
    """Claim ``key`` for this request; returns a stored answer to replay instead, if any.

    Another request may free the key (its upstream refused it), or take over an expired one,
    between any two of these statements; each attempt therefore reads what is there now and
    tries again if the key vanished, and only gives up (409, retry later) if it keeps
    changing hands."""
    row = {"team_id": team_id, "key": key, "request_hash": fingerprint, "state": IN_FLIGHT}
    row |= {"job_id": job_id, "created_at": now, "expires_at": now + ttl}
    for _ in range(_CLAIM_ATTEMPTS):
        if await _insert_claim(session, row):
            return None
        existing = (
            await session.execute(
                select(
                    IdempotencyKey.request_hash,
                    IdempotencyKey.state,
                    IdempotencyKey.status_code,
                    IdempotencyKey.response_body,
                    IdempotencyKey.response_headers,
                    IdempotencyKey.expires_at,
                ).where(IdempotencyKey.team_id == team_id, IdempotencyKey.key == key)
            )
        ).one_or_none()
        if existing is None:
            continue  # freed since our insert collided with it: claim it now
        if existing.expires_at <= now:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.team_id == team_id,
                    IdempotencyKey.key == key,
                    IdempotencyKey.expires_at <= now,
                )
            )
            continue
        if existing.request_hash != fingerprint:
            raise Unprocessable(
                "this Idempotency-Key was already used with a different request body",
                code="idempotency_key_reused",
                param="Idempotency-Key",
            )
        if existing.state != COMPLETED or existing.status_code is None:
            raise _in_use()
        return StoredResponse(
            status_code=existing.status_code,
            body=existing.response_body or b"",
            headers=dict(existing.response_headers or {}),
        )
    raise _in_use()


_CLAIM_ATTEMPTS = 4


def _in_use() -> Conflict:
    return Conflict(
        "a request with this Idempotency-Key is still being processed; retry later",
        code="idempotency_key_in_use",
        param="Idempotency-Key",
    )


async def _insert_claim(session: AsyncSession, row: dict[str, Any]) -> bool:
    """Insert the claim ``row`` unless the key is taken (then False). A concurrent claim not
    yet committed is waited for: its commit makes this a conflict, its rollback a success."""
    insert = postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
    stmt = insert(IdempotencyKey).values(row).on_conflict_do_nothing().returning(IdempotencyKey.key)
    return (await session.execute(stmt)).first() is not None


async def complete(
    session: AsyncSession, *, team_id: int, key: str, job_id: str, response: StoredResponse
) -> None:
    """Store the first request's answer; only this job's claim (a late answer must never
    overwrite a claim another job made after this one expired or was freed), and only while
    it is still in flight (an answer recorded late, from the outbox, must not overwrite what
    the reconciler resolved meanwhile)."""
    await session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.team_id == team_id,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id == job_id,
            IdempotencyKey.state == IN_FLIGHT,
        )
        .values(
            state=COMPLETED,
            status_code=response.status_code,
            response_body=response.body,
            response_headers=response.headers,
        )
    )


async def forget(session: AsyncSession, *, team_id: int, key: str, job_id: str) -> None:
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.team_id == team_id,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id == job_id,
        )
    )


async def resolve_for_job(
    session: AsyncSession, job_id: str, response: StoredResponse | None
) -> None:
    """The reconciler settled what a crashed or timed-out submit left open: a retry with the
    client's key now replays the upstream's real answer, or (``None``: nothing was created)
    the key is free to be used again."""
    if response is None:
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.job_id == job_id))
        return
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.job_id == job_id)
        .values(
            state=COMPLETED,
            status_code=response.status_code,
            response_body=response.body,
            response_headers=response.headers,
        )
    )


async def purge_expired(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
