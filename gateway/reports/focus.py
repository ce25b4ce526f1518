"""FinOps FOCUS 1.2 cost export (CSV), so the video spend can be ingested beside cloud bills.

One row per price line per billed job: the seconds of video at their resolution, and the
image fee as its own row. Streamed from the database (a month of a large ledger is never held
in memory). ``BilledCost`` of all rows sums to the month's chargeback total to the
micro-dollar: each capture is split exactly into image fee and seconds (the remainder).

Columns: every FOCUS 1.2 mandatory column, the conditional ones that apply (consumed
quantity/unit, list and contracted unit prices, SKU ids, the team as sub-account, tags), and
``x_`` columns for gateway specifics (job ids, resolution, duration, rate card version, ...,
the job's project last). The project is also a tag, ``gateway-project``, in ``Tags`` (where
FinOps tools group by tag); it takes the place of a cost-allocation tag of that key.
Corrections to closed months recorded this month carry ``ChargeClass`` ``Correction``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.core.periods import month_bounds
from gateway.core.usd import format_usd
from gateway.jobs.models import Job
from gateway.kit.spreadsheet import safe_cell
from gateway.ledger.models import ClosedPeriod, EntryKind, LedgerEntry, RateCardRow
from gateway.reports.chargeback import require_team
from gateway.reports.corrections import recorded_late
from gateway.tenancy.models import Project, Team

MANDATORY = [
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuer",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "Provider",
    "Publisher",
    "ServiceCategory",
    "ServiceName",
]
CONDITIONAL = [
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedUnitPrice",
    "ListUnitPrice",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
]
CUSTOM = [
    "x_JobId",
    "x_UpstreamJobId",
    "x_Model",
    "x_Resolution",
    "x_DurationSeconds",
    "x_RateCardVersion",
    "x_CostCenter",
    "x_Outcome",
    "x_OriginalPeriod",
    "x_Project",
]
PROJECT_TAG = "gateway-project"
"""The ``Tags`` key of the job's project (jobs of no project have none)."""
COLUMNS = MANDATORY + CONDITIONAL + CUSTOM


@dataclass(frozen=True)
class FocusIdentity:
    """Who bills and who is billed, as FOCUS names them (configurable per deployment)."""

    billing_account_id: str = "video-gateway"
    billing_account_name: str = "Video generation (billing gateway)"
    invoice_issuer: str = "EmpirioLabs"
    provider: str = "EmpirioLabs"
    publisher: str = "xAI"
    service_name: str = "Grok Imagine Video"
    service_category: str = "AI and Machine Learning"


def _iso(moment: datetime) -> str:
    """UTC, to the second: 2026-11-01T00:00:00Z (``moment`` is always UTC here)."""
    return moment.isoformat(timespec="seconds")[:19] + "Z"


def _usd(micro: int) -> str:
    return format_usd(micro)


@dataclass(frozen=True)
class _PriceLines:
    """What every row of one rate card version and resolution repeats, formatted once."""

    video: dict[str, str]
    image: dict[str, str]
    image_fee_micro_usd: int


def _price_lines(card: RateCardRow, resolution: str) -> _PriceLines:
    rate = _usd(card.per_second_micro_usd[resolution])
    fee = _usd(card.image_fee_micro_usd)
    return _PriceLines(
        video={
            "PricingUnit": "Seconds",
            "ConsumedUnit": "Seconds",
            "ListUnitPrice": rate,
            "ContractedUnitPrice": rate,
            "SkuId": f"{card.model}:video:{resolution}",
            "SkuPriceId": f"{card.version}:video:{resolution}",
        },
        image={
            "ChargeDescription": f"{card.model} source image fee",
            "PricingUnit": "Images",
            "ConsumedUnit": "Images",
            "ListUnitPrice": fee,
            "ContractedUnitPrice": fee,
            "SkuId": f"{card.model}:image",
            "SkuPriceId": f"{card.version}:image",
        },
        image_fee_micro_usd=card.image_fee_micro_usd,
    )


class _TagsJson(dict[tuple[tuple[str, str], ...], str]):
    """Tags (with the job's project as ``PROJECT_TAG``) as canonical JSON, each distinct set
    encoded once: a month repeats a few sets. Bounded, so tags unique per job (``user=...``)
    cost a little time, never memory."""

    LIMIT = 4096

    def encode(self, tags: dict[str, str] | None, project: str | None = None) -> str:
        if project is not None:
            tags = {**(tags or {}), PROJECT_TAG: project}
        key = tuple(sorted(tags.items())) if tags else ()
        text = self.get(key)
        if text is None:
            if len(self) >= self.LIMIT:
                self.clear()
            text = self[key] = json.dumps(dict(key), separators=(",", ":"))
        return text


async def focus_rows(
    session: AsyncSession,
    month: str,
    identity: FocusIdentity = FocusIdentity(),
    *,
    team: str | None = None,
) -> AsyncIterator[dict[str, str]]:
    """The month's rows, streamed: per capture a video row, and an image row if it had images."""
    start, end = month_bounds(month)
    await require_team(session, team)
    prices = await _price_book(session)
    tags_json = _TagsJson()
    closed = await session.get(ClosedPeriod, month)
    stmt = _captures(month, closed.last_entry_id if closed is not None else None, team)
    billing = _billing_columns(identity, start, end)
    result = await session.stream(stmt)
    async for capture in result:  # one row: the capture entry with its job and team
        price = prices[(capture.model, capture.rate_card_version, capture.resolution)]
        image_micro = capture.image_count * price.image_fee_micro_usd
        seconds = _billed_seconds(capture)
        shared = _job_columns(billing, capture, month, seconds, tags_json)
        yield _video_row(shared, price, capture, seconds, capture.amount_micro_usd - image_micro)
        if capture.image_count:
            yield _image_row(shared, price, capture.image_count, image_micro)


async def focus_row_count(session: AsyncSession, month: str, *, team: str | None = None) -> int:
    """How many rows ``focus_rows`` will yield (for a progress bar): one query."""
    closed = await session.get(ClosedPeriod, month)
    captures = _captures(month, closed.last_entry_id if closed is not None else None, team)
    listed = captures.order_by(None).subquery()
    stmt = select(func.count() + func.count().filter(listed.c.image_count > 0))
    return int((await session.execute(stmt.select_from(listed))).scalar_one())


async def _price_book(session: AsyncSession) -> dict[tuple[str, str, str], _PriceLines]:
    """Every rate card version's price lines, by (model, version, resolution)."""
    cards = (await session.execute(select(RateCardRow))).scalars().all()
    return {
        (card.model, card.version, resolution): _price_lines(card, resolution)
        for card in cards
        for resolution in card.per_second_micro_usd
    }


def _captures(month: str, mark: int | None, team: str | None) -> Select[*tuple[Any, ...]]:
    """The captures to export, oldest first: those of the month's jobs (up to ``mark`` when
    the month is closed) and the corrections to closed months recorded in it."""
    in_month = and_(LedgerEntry.period == month)
    if mark is not None:
        in_month = and_(in_month, LedgerEntry.id <= mark)
    # Columns, not entities: no identity map, and never the job's stored terminal body.
    stmt = (
        select(
            LedgerEntry.period,
            LedgerEntry.amount_micro_usd,
            LedgerEntry.video_ms,
            LedgerEntry.reason,
            LedgerEntry.created_at.label("settled_at"),
            Job.id.label("job_id"),
            Job.upstream_job_id,
            Job.team_id,
            Job.model,
            Job.rate_card_version,
            Job.resolution,
            Job.duration_ms,
            Job.image_count,
            Job.tags,
            Job.created_at,
            Team.name.label("team_name"),
            Team.cost_center,
            Project.name.label("project_name"),
        )
        .select_from(LedgerEntry)
        .join(Job, Job.id == LedgerEntry.job_id)
        .join(Team, Team.id == Job.team_id)
        .outerjoin(Project, Project.id == Job.project_id)
        .outerjoin(ClosedPeriod, ClosedPeriod.period == LedgerEntry.period)
        .where(LedgerEntry.kind == EntryKind.CAPTURE, or_(in_month, recorded_late(month, mark)))
        .order_by(LedgerEntry.id)
        .execution_options(yield_per=2000)
    )
    if team is not None:
        stmt = stmt.where(Team.name == team)
    return stmt


def _billing_columns(identity: FocusIdentity, start: datetime, end: datetime) -> dict[str, str]:
    """The columns every row of the month repeats: who bills, whom, for which period."""
    return {
        "BillingAccountId": safe_cell(identity.billing_account_id),
        "BillingAccountName": safe_cell(identity.billing_account_name),
        "BillingCurrency": "USD",
        "BillingPeriodStart": _iso(start),
        "BillingPeriodEnd": _iso(end),
        "ChargeCategory": "Usage",
        "InvoiceIssuer": safe_cell(identity.invoice_issuer),
        "Provider": safe_cell(identity.provider),
        "Publisher": safe_cell(identity.publisher),
        "ServiceCategory": safe_cell(identity.service_category),
        "ServiceName": safe_cell(identity.service_name),
    }


def _billed_seconds(capture: Row[Any]) -> str:
    """The seconds billed: those produced (when reported), at most those asked for."""
    produced_ms = capture.video_ms if capture.video_ms is not None else capture.duration_ms
    return f"{Decimal(min(produced_ms, capture.duration_ms)) / 1000:.3f}"


def _job_columns(
    billing: dict[str, str], capture: Row[Any], month: str, seconds: str, tags_json: _TagsJson
) -> dict[str, str]:
    """``billing`` and the columns both rows of one capture share: its job, team and tags."""
    return {
        **billing,
        "ChargeClass": "Correction" if capture.period != month else "",
        "ChargePeriodStart": _iso(capture.created_at),
        "ChargePeriodEnd": _iso(max(capture.settled_at, capture.created_at)),
        "SubAccountId": str(capture.team_id),
        "SubAccountName": safe_cell(capture.team_name),
        "Tags": tags_json.encode(capture.tags, capture.project_name),
        "x_JobId": capture.job_id,
        "x_UpstreamJobId": safe_cell(capture.upstream_job_id or ""),
        "x_Model": capture.model,
        "x_Resolution": capture.resolution,
        "x_DurationSeconds": seconds,
        "x_RateCardVersion": safe_cell(capture.rate_card_version),
        "x_CostCenter": safe_cell(capture.cost_center or ""),
        "x_Outcome": safe_cell(capture.reason or "completed"),
        "x_OriginalPeriod": capture.period,
        "x_Project": safe_cell(capture.project_name or ""),
    }


def _video_row(
    shared: dict[str, str], price: _PriceLines, capture: Row[Any], seconds: str, micro: int
) -> dict[str, str]:
    """The seconds of video: the capture less its image fee."""
    return {
        **shared,
        **price.video,
        **_costs(micro),
        "ChargeDescription": f"{capture.model} video, {seconds} s at {capture.resolution}",
        "PricingQuantity": seconds,
        "ConsumedQuantity": seconds,
    }


def _image_row(
    shared: dict[str, str], price: _PriceLines, image_count: int, micro: int
) -> dict[str, str]:
    """The source image fee, ``micro`` for ``image_count`` images."""
    count = str(image_count)
    return {
        **shared,
        **price.image,
        **_costs(micro),
        "PricingQuantity": count,
        "ConsumedQuantity": count,
    }


def _costs(micro: int) -> dict[str, str]:
    amount = _usd(micro)
    return {
        "BilledCost": amount,
        "EffectiveCost": amount,
        "ListCost": amount,
        "ContractedCost": amount,
    }
