"""``gateway budgets grant|list``: one-off budget increases for a month, at any level."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.cli.teams import positive_usd_option, usd_or_none
from gateway.core.clock import utcnow
from gateway.core.periods import month_bounds, period_of
from gateway.core.usd import format_usd
from gateway.errors import GatewayError
from gateway.ledger.quotas import PeriodBalance
from gateway.services import teams as team_changes
from gateway.services.teams import LevelGrant


def _month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        month_bounds(value)
    except GatewayError:
        raise click.BadParameter(f"{value!r} is not a month: give YYYY-MM, e.g. 2026-11") from None
    return value


def grant_to_dict(level: LevelGrant) -> dict[str, object]:
    row = level.grant
    return {
        "id": row.id,
        "team": level.team,
        "scope": level.scope,
        "project": level.project,
        "key_id": row.api_key_id,
        "period": row.period,
        "amount_usd": format_usd(row.amount_micro_usd),
        "reason": row.reason,
        "granted_by": row.granted_by,
        "created_at": row.created_at.isoformat(),
    }


def _balance_to_dict(level: LevelGrant, balance: PeriodBalance) -> dict[str, object]:
    return {
        "scope": level.scope,
        "name": level.name,
        "period": balance.period,
        "budget_usd": usd_or_none(balance.budget),
        "granted_usd": format_usd(balance.granted),
        "captured_usd": format_usd(balance.captured),
        "held_usd": format_usd(balance.held),
        "remaining_usd": usd_or_none(balance.remaining),
    }


@click.group("budgets")
def budgets_group() -> None:
    """One-off budget grants to a team, a project or a key, for one month."""


@budgets_group.command("grant")
@click.option("--team", "team_name", required=True)
@click.option("--project", help="Grant this project of the team (not the team itself).")
@click.option("--key", "key_id", metavar="KEY_ID", help="Grant this key of the team.")
@click.option(
    "--amount-usd",
    required=True,
    callback=positive_usd_option,
    help="Added to the level's budget for the month only.",
)
@click.option("--period", callback=_month, help="YYYY-MM (UTC); default: this month.")
@click.option("--reason", required=True, help="Why (kept with the grant and in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print the grant and the balance as JSON.")
def grant(
    team_name: str,
    project: str | None,
    key_id: str | None,
    amount_usd: int,
    period: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Give a team, one of its projects (--project) or one of its keys (--key) more budget
    for one month."""
    if project is not None and key_id is not None:
        raise click.UsageError("--project and --key are mutually exclusive: grant one level")
    if not reason.strip():
        raise click.BadParameter("must say why", param_hint="'--reason'")
    settings = load_settings()

    async def _grant(session: AsyncSession) -> tuple[LevelGrant, PeriodBalance]:
        return await team_changes.grant_budget(
            session,
            team_name,
            amount_micro_usd=amount_usd,
            reason=reason,
            actor=Actor.cli(),
            policy=settings.default_budget_policy,
            period=period,
            project=project,
            key_id=key_id,
        )

    level, balance = run_in_session(settings, _grant)
    if as_json:
        echo_json({**grant_to_dict(level), "balance": _balance_to_dict(level, balance)})
        return
    where = "" if level.scope == "team" else f" of team {level.team}"
    click.echo(
        f"granted {format_usd(level.grant.amount_micro_usd)} USD to {level.scope} "
        f"{level.name}{where} for {balance.period}: {format_usd(balance.granted)} USD granted "
        f"in all, {usd_or_none(balance.remaining)} USD remaining"
    )


@budgets_group.command("list")
@click.option("--team", "team_name", required=True)
@click.option("--period", callback=_month, help="YYYY-MM (UTC); default: this month.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_grants(team_name: str, period: str | None, as_json: bool) -> None:
    """List a team's grants for a month (every level), oldest first."""
    settings = load_settings()
    month = period or period_of(utcnow())

    async def _list(session: AsyncSession) -> list[LevelGrant]:
        return await team_changes.list_grants(session, team_name, month)

    data = [grant_to_dict(g) for g in run_in_session(settings, _list)]
    if as_json:
        echo_json(data)
        return
    print_table(
        [
            Column("ID", "right"),
            Column("PERIOD"),
            Column("LEVEL"),
            Column("NAME"),
            Column("AMOUNT USD", "right"),
            Column("REASON"),
            Column("BY"),
            Column("AT"),
        ],
        (
            [
                row["id"],
                row["period"],
                row["scope"],
                row["project"] or row["key_id"] or row["team"],
                row["amount_usd"],
                row["reason"],
                row["granted_by"],
                row["created_at"],
            ]
            for row in data
        ),
    )
