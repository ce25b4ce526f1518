"""Authenticating a gateway API key as a team: the rules (``check_key``), the lookup through
the ORM (``authenticate_key``), and the hint a process keeps of the keys it has confirmed
(``KeysSeen``). The tenant hot path reads the same ``KeyRecord`` in one direct statement
(``gateway.services.callers``) and applies the same ``check_key``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.clock import utcnow
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.tenancy import repository
from gateway.tenancy.keys import hash_key, key_matches, parse_key
from gateway.tenancy.models import ApiKey, Project, Team
from gateway.tenancy.service import Principal, ProjectRef


@dataclass(frozen=True)
class KeyRecord:
    """What authenticating a key reads: the key row's checks and its team, however fetched
    (an ORM query here, one direct statement on the tenant hot path)."""

    key_id: str
    secret_hash: str
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    team_id: int
    team_name: str
    monthly_budget_micro_usd: int | None
    max_concurrent_jobs: int | None
    soft_limit_percent: int | None
    team_disabled_at: datetime | None
    team_max_cost_per_job_micro_usd: int | None = None
    key_role: str = "member"
    key_monthly_budget_micro_usd: int | None = None
    key_max_cost_per_job_micro_usd: int | None = None
    project_id: int | None = None
    project_name: str | None = None
    project_monthly_budget_micro_usd: int | None = None
    project_max_cost_per_job_micro_usd: int | None = None
    project_soft_limit_percent: int | None = None

    @classmethod
    def of(cls, key: ApiKey, team: Team, project: Project | None = None) -> KeyRecord:
        return cls(
            key.id,
            key.secret_hash,
            key.revoked_at,
            key.expires_at,
            key.last_used_at,
            team.id,
            team.name,
            team.monthly_budget_micro_usd,
            team.max_concurrent_jobs,
            team.soft_limit_percent,
            team.disabled_at,
            team.max_cost_per_job_micro_usd,
            key.role,
            key.monthly_budget_micro_usd,
            key.max_cost_per_job_micro_usd,
            project.id if project is not None else None,
            project.name if project is not None else None,
            project.monthly_budget_micro_usd if project is not None else None,
            project.max_cost_per_job_micro_usd if project is not None else None,
            project.soft_limit_percent if project is not None else None,
        )

    def project(self) -> ProjectRef | None:
        if self.project_id is None:
            return None
        assert self.project_name is not None
        return ProjectRef(
            self.project_id,
            self.project_name,
            self.project_monthly_budget_micro_usd,
            self.project_max_cost_per_job_micro_usd,
            self.project_soft_limit_percent,
        )


@dataclass(frozen=True)
class CheckedKey:
    principal: Principal
    touch_last_used_before: datetime | None
    """Set when the key's last-used time is older than this (or unset): write it now."""
    rehashed: str | None = None
    """Set when the key matched under the previous pepper (a rotation under way): its hash
    under the current one, to store in place of ``KeyRecord.secret_hash``."""


def check_key(
    token: str,
    record: KeyRecord | None,
    *,
    pepper: str,
    now: datetime,
    last_used_resolution: float,
    previous_pepper: str | None = None,
) -> CheckedKey:
    """The principal a gateway API key stands for, or ``AuthenticationFailed`` /
    ``PermissionDenied``. ``record`` is what the key's id found (None: nothing). The hash
    comparison runs in constant time, and an unknown id costs the same hashing work.

    During a pepper rotation (``GATEWAY_KEY_PEPPER_PREVIOUS`` set) a key stored under the
    previous pepper is accepted too, and ``rehashed`` carries its hash under the current one."""
    if record is None:
        key_matches(token, "0" * 64, pepper)
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    rehashed = None
    if not key_matches(token, record.secret_hash, pepper):
        if not previous_pepper or not key_matches(token, record.secret_hash, previous_pepper):
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        rehashed = hash_key(token, pepper)
    if record.revoked_at is not None:
        raise AuthenticationFailed("this API key has been revoked", code="api_key_revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthenticationFailed("this API key has expired", code="api_key_expired")
    if record.team_disabled_at is not None:
        raise PermissionDenied("this team is disabled", code="team_disabled")
    stale_before = now - timedelta(seconds=last_used_resolution)
    touch = (
        stale_before if record.last_used_at is None or record.last_used_at < stale_before else None
    )
    principal = Principal(
        team_id=record.team_id,
        team_name=record.team_name,
        key_id=record.key_id,
        monthly_budget_micro_usd=record.monthly_budget_micro_usd,
        max_concurrent_jobs=record.max_concurrent_jobs,
        soft_limit_percent=record.soft_limit_percent,
        max_cost_per_job_micro_usd=record.team_max_cost_per_job_micro_usd,
        project=record.project(),
        key_monthly_budget_micro_usd=record.key_monthly_budget_micro_usd,
        key_max_cost_per_job_micro_usd=record.key_max_cost_per_job_micro_usd,
        key_role=record.key_role,
    )
    return CheckedKey(principal, touch, rehashed)


class KeysSeen:
    """The principal each key was last confirmed as, by this process: a hint that lets a
    submit skip its own key lookup. Never trusted alone: the hold's statement checks the key
    and its team against the database (``ledger.holds.KeyCheck``), and a submit that fails
    that check, or any check before it, looks the key up for real first. Bounded."""

    _LIMIT = 10_000

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, Principal]] = {}

    def saw(self, key_id: str, secret_hash: str, principal: Principal) -> None:
        if len(self._seen) >= self._LIMIT:
            self._seen.clear()
        self._seen[key_id] = (secret_hash, principal)

    def forget(self, key_id: str) -> None:
        self._seen.pop(key_id, None)

    def claimed(self, token: str, pepper: str) -> tuple[str, Principal] | None:
        """The secret hash and principal ``token`` was last confirmed as, if its secret
        matches (in constant time)."""
        parsed = parse_key(token)
        seen = self._seen.get(parsed.key_id) if parsed is not None else None
        if seen is None or not key_matches(token, seen[0], pepper):
            return None
        return seen


async def authenticate_key(
    session: AsyncSession,
    token: str,
    *,
    pepper: str,
    last_used_resolution: float = 60.0,
    previous_pepper: str | None = None,
) -> Principal:
    """The principal a gateway API key stands for (``check_key``'s rules).

    Revocation, expiry and a disabled team are read from the database on every call, so they
    take effect at once on every replica.
    """
    parsed = parse_key(token)
    if parsed is None:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    found = await repository.get_key_with_team(session, parsed.key_id)
    now = utcnow()
    checked = check_key(
        token,
        KeyRecord.of(*found) if found is not None else None,
        pepper=pepper,
        now=now,
        last_used_resolution=last_used_resolution,
        previous_pepper=previous_pepper,
    )
    if checked.rehashed is not None and found is not None:
        await repository.replace_secret_hash(
            session, parsed.key_id, found[0].secret_hash, checked.rehashed
        )
    stale_before = checked.touch_last_used_before
    if stale_before is not None:
        # Written at most once per resolution window: a busy key must not cost a write each time.
        await repository.touch_last_used(session, checked.principal.key_id or "", stale_before, now)
    return checked.principal
