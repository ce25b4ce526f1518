"""Response bodies the gateway itself defines (the proxied ones are the upstream's)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UsageOut(BaseModel):
    """``GET /v1/usage``: amounts are USD decimal strings with 6 places; budget and remaining
    are null when the team's budget is unlimited."""

    team: str
    period: str = Field(description="Calendar month, UTC: YYYY-MM", examples=["2026-11"])
    budget_usd: str | None = Field(examples=["500.000000"])
    captured_usd: str = Field(examples=["12.340000"])
    held_usd: str = Field(examples=["1.730000"])
    remaining_usd: str | None = Field(examples=["485.930000"])
