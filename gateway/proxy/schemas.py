"""Response bodies the gateway itself defines (the proxied ones are the upstream's)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from gateway.core.usd import format_usd
from gateway.ledger.forecast import month_end_forecast
from gateway.services.proxy import ScopeBalance


def _usd(micro_usd: int | None) -> str | None:
    return format_usd(micro_usd) if micro_usd is not None else None


class UsageScopeOut(BaseModel):
    """One budget level that applies to the caller, for the current period. Amounts are USD
    decimal strings with 6 places; ``budget_usd`` and ``remaining_usd`` are null when the
    level has no budget of its own (the wider levels' still apply)."""

    scope: Literal["team", "project", "key"]
    name: str = Field(description="The team's or project's name, or the key's id")
    period: str = Field(description="Calendar month, UTC: YYYY-MM", examples=["2026-11"])
    budget_usd: str | None = Field(examples=["500.000000"])
    granted_usd: str = Field(
        description="One-off grants for this period, on top of the budget", examples=["0.000000"]
    )
    captured_usd: str = Field(examples=["12.340000"])
    held_usd: str = Field(examples=["1.730000"])
    remaining_usd: str | None = Field(
        description="budget + granted - captured - held (never below 0)", examples=["485.930000"]
    )
    forecast_usd: str = Field(
        description="Month-end spend at the period's run rate: captured so far × month length "
        "÷ time elapsed (at least one day), never below captured + held",
        examples=["36.200000"],
    )

    @classmethod
    def of(cls, level: ScopeBalance, now: datetime) -> UsageScopeOut:
        balance = level.balance
        forecast = month_end_forecast(
            balance.captured, balance.held, period=balance.period, now=now
        )
        return cls(
            scope=level.scope,
            name=level.name,
            period=balance.period,
            budget_usd=_usd(balance.budget),
            granted_usd=format_usd(balance.granted),
            captured_usd=format_usd(balance.captured),
            held_usd=format_usd(balance.held),
            remaining_usd=_usd(balance.remaining),
            forecast_usd=format_usd(forecast),
        )


class UsageOut(BaseModel):
    """``GET /v1/usage``: the team's figures (amounts are USD decimal strings with 6 places;
    budget and remaining are null when the team's budget is unlimited), and ``scopes``: every
    budget level that applies to the caller, widest first (the team; the project the key is
    bound to; the key itself, for a gateway key)."""

    team: str
    period: str = Field(description="Calendar month, UTC: YYYY-MM", examples=["2026-11"])
    budget_usd: str | None = Field(examples=["500.000000"])
    captured_usd: str = Field(examples=["12.340000"])
    held_usd: str = Field(examples=["1.730000"])
    remaining_usd: str | None = Field(examples=["485.930000"])
    scopes: list[UsageScopeOut]
