"""Rate card versions written through the real domain code (``add_rate_card`` with the
built-in catalog), for the catalog's model unless told otherwise."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.catalog.spec import load_catalog
from gateway.ledger.rates import add_rate_card
from tests.support.api import MODEL


async def add_rates(
    session: AsyncSession,
    version: str,
    per_second_micro_usd: dict[str, int],
    *,
    actor: Actor,
    image_fee_micro_usd: int = 40_000,
    effective_from: datetime | None = None,
    model: str = MODEL,
) -> None:
    await add_rate_card(
        session,
        load_catalog(),
        model=model,
        version=version,
        image_fee_micro_usd=image_fee_micro_usd,
        per_second_micro_usd=per_second_micro_usd,
        actor=actor,
        effective_from=effective_from,
    )
