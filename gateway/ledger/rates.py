"""Rate card versions: which prices were in force when, and adding a new version.

Versions are rows with an effective time; a job is priced by the version in force at its
submit and records that version, so adding a version never touches earlier jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit import service as audit
from gateway.audit.service import Actor
from gateway.catalog.spec import Catalog, EnumRule
from gateway.core.clock import utcnow
from gateway.core.pricing import RateCard
from gateway.core.usd import MAX_MICRO_USD, format_usd
from gateway.db.session import dialect_name
from gateway.errors import Conflict, InvalidRequest, ServiceUnavailable
from gateway.ledger.models import RateCardRow


def _to_rate_card(row: RateCardRow) -> RateCard:
    return RateCard(
        version=row.version,
        effective_from=row.effective_from,
        image_fee_micro_usd=row.image_fee_micro_usd,
        per_second_micro_usd=dict(row.per_second_micro_usd),
    )


async def rate_card_in_force(session: AsyncSession, model: str, at: datetime) -> RateCard:
    stmt = (
        select(RateCardRow)
        .where(RateCardRow.model == model, RateCardRow.effective_from <= at)
        .order_by(RateCardRow.effective_from.desc(), RateCardRow.id.desc())
        .limit(1)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise ServiceUnavailable(
            f"no rate card is in force for {model}; the request was not forwarded",
            code="rate_card_missing",
        )
    return _to_rate_card(row)


async def rate_card_version(session: AsyncSession, model: str, version: str) -> RateCard:
    stmt = select(RateCardRow).where(RateCardRow.model == model, RateCardRow.version == version)
    return _to_rate_card((await session.execute(stmt)).scalar_one())


async def list_rate_cards(session: AsyncSession, model: str | None = None) -> Sequence[RateCardRow]:
    stmt = select(RateCardRow).order_by(RateCardRow.model, RateCardRow.effective_from)
    if model is not None:
        stmt = stmt.where(RateCardRow.model == model)
    return (await session.execute(stmt)).scalars().all()


def _check_rate_card(
    catalog: Catalog,
    model: str,
    version: str,
    image_fee_micro_usd: int,
    per_second_micro_usd: dict[str, int],
) -> None:
    """Refuse (400) a card for a model the catalog lacks, one that leaves a resolution
    unpriced or prices one the model does not have, a negative or absurd amount, or a version
    name out of bounds."""
    spec = catalog.get(model)
    if spec is None:
        raise InvalidRequest(f"model {model!r} is not in the catalog", code="unknown_model")
    resolution_rule = spec.params[spec.pricing.resolution_param]
    assert isinstance(resolution_rule, EnumRule)
    unknown = set(per_second_micro_usd) - set(resolution_rule.values)
    if unknown:
        raise InvalidRequest(
            f"{model} has no resolution {', '.join(sorted(unknown))}: it accepts "
            f"{', '.join(sorted(resolution_rule.values))}",
            code="unknown_resolution",
            param="per_second",
        )
    missing = set(resolution_rule.values) - set(per_second_micro_usd)
    if missing:
        raise InvalidRequest(
            f"a per-second rate is required for {', '.join(sorted(missing))}",
            code="missing_parameter",
            param="per_second",
        )
    amounts = [image_fee_micro_usd, *per_second_micro_usd.values()]
    if any(not 0 <= amount <= MAX_MICRO_USD for amount in amounts):
        raise InvalidRequest("rates must be non-negative amounts", code="out_of_range")
    if not 1 <= len(version) <= 64:
        raise InvalidRequest("version must be 1-64 characters", code="invalid_length")


async def add_rate_card(
    session: AsyncSession,
    catalog: Catalog,
    *,
    model: str,
    version: str,
    image_fee_micro_usd: int,
    per_second_micro_usd: dict[str, int],
    actor: Actor,
    effective_from: datetime | None = None,
) -> RateCardRow:
    """Add a version. It must price every resolution the model accepts."""
    _check_rate_card(catalog, model, version, image_fee_micro_usd, per_second_micro_usd)
    existing = await session.execute(
        select(RateCardRow.id).where(RateCardRow.model == model, RateCardRow.version == version)
    )
    if existing.first() is not None:
        raise Conflict(
            f"{model} already has a rate card version {version!r}", code="version_exists"
        )
    now = utcnow()
    row = RateCardRow(
        model=model,
        version=version,
        effective_from=effective_from or now,
        image_fee_micro_usd=image_fee_micro_usd,
        per_second_micro_usd=dict(per_second_micro_usd),
        created_at=now,
    )
    session.add(row)
    await session.flush()
    await audit.record(
        session,
        actor,
        "rate_card.create",
        "rate_card",
        f"{model}/{version}",
        after={
            "model": model,
            "version": version,
            "effective_from": row.effective_from.isoformat(),
            "image_fee_usd": format_usd(image_fee_micro_usd),
            "per_second_usd": {k: format_usd(v) for k, v in sorted(per_second_micro_usd.items())},
        },
    )
    return row


async def register_catalog_rate_cards(session: AsyncSession, catalog: Catalog) -> None:
    """Make sure each catalog model's rate card version exists (new models are data)."""
    insert = postgresql.insert if dialect_name(session) == "postgresql" else sqlite.insert
    now = utcnow()
    for spec in catalog.models:
        card = spec.pricing.rate_card
        await session.execute(
            insert(RateCardRow)
            .values(
                model=spec.id,
                version=card.version,
                effective_from=card.effective_from,
                image_fee_micro_usd=card.image_fee_micro_usd,
                per_second_micro_usd=dict(card.per_second_micro_usd),
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["model", "version"])
        )
