"""A team's keys from the portal: listing them (never a secret or its hash), and, for a
``manager`` key's session or the admin's, creating and revoking them, through the same
tenancy services as the admin API and the CLI (audited as ``portal:<key id>`` or the admin
token). Refusals are raised before anything changes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.usd import parse_usd
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.services.portal import Viewer
from gateway.tenancy import service as tenancy
from gateway.tenancy.models import Team
from gateway.tenancy.service import IssuedKey, KeyDetails


@dataclass(frozen=True)
class NewKeyForm:
    """The create form's fields as typed (empty: not set)."""

    name: str = ""
    role: str = "member"
    project: str = ""
    monthly_budget_usd: str = ""


def require_manager(viewer: Viewer) -> None:
    if not viewer.can_manage:
        raise PermissionDenied(
            "only a key with the manager role can change the team's keys",
            code="manager_role_required",
        )


async def list_keys(session: AsyncSession, team: Team) -> list[KeyDetails]:
    return await tenancy.list_key_details(session, team.name)


async def create_key(
    session: AsyncSession,
    viewer: Viewer,
    team: Team,
    form: NewKeyForm,
    *,
    pepper: str,
    request_id: str | None = None,
) -> IssuedKey:
    require_manager(viewer)
    name = form.name.strip()
    if len(name) > 128:
        raise InvalidRequest("name must be at most 128 characters", code="invalid_length")
    budget = None
    if form.monthly_budget_usd.strip():
        try:
            budget = parse_usd(form.monthly_budget_usd)
        except ValueError as exc:
            raise InvalidRequest(
                str(exc), code="invalid_value", param="monthly_budget_usd"
            ) from None
    return await tenancy.create_key(
        session,
        team.name,
        pepper=pepper,
        actor=viewer.actor(request_id),
        name=name or None,
        project=form.project.strip() or None,
        role=form.role,
        monthly_budget_micro_usd=budget,
    )


async def revoke_key(
    session: AsyncSession,
    viewer: Viewer,
    team: Team,
    key_id: str,
    *,
    request_id: str | None = None,
) -> None:
    """Revoke one of ``team``'s keys (another team's key is not found: 404)."""
    require_manager(viewer)
    key = await tenancy.require_key(session, key_id[:64])
    if key.team_id != team.id:
        raise NotFound(f"no API key with id {key_id[:64]!r}", code="key_not_found")
    await tenancy.revoke_key(session, key.id, actor=viewer.actor(request_id))
