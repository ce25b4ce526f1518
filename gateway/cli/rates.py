"""``gateway rates set|list``: rate card versions (added, never edited)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import click
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor
from gateway.catalog.spec import load_catalog
from gateway.cli._common import echo_json, load_settings, run_in_session
from gateway.cli._output import Column, print_table
from gateway.core.usd import format_usd, parse_usd
from gateway.ledger import rates
from gateway.ledger.models import RateCardRow


def rate_card_to_dict(row: RateCardRow) -> dict[str, object]:
    return {
        "model": row.model,
        "version": row.version,
        "effective_from": row.effective_from.isoformat(),
        "image_fee_usd": format_usd(row.image_fee_micro_usd),
        "per_second_usd": {k: format_usd(v) for k, v in sorted(row.per_second_micro_usd.items())},
    }


@click.group("rates")
def rates_group() -> None:
    """Rate card versions: what each second of video costs, and since when."""


@rates_group.command("set")
@click.option("--model", default="grok-imagine-video-1-5", show_default=True)
@click.option("--version", "version", required=True, help="Name of the new version, e.g. 2027-01.")
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
@click.option("--image-fee-usd", required=True, help="Fee per source image, e.g. 0.05.")
@click.option(
    "--per-second-usd",
    "per_second",
    multiple=True,
    required=True,
    metavar="RESOLUTION=USD",
    help="Rate per second of video, once per resolution: --per-second-usd 720p=0.168",
)
@click.option(
    "--effective-from",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="When the version takes effect (UTC unless an offset is given; default: now).",
)
def set_rates(
    model: str,
    version: str,
    image_fee_usd: str,
    per_second: tuple[str, ...],
    effective_from: datetime | None,
    as_json: bool,
) -> None:
    """Add a rate card version. Jobs already submitted keep the version they were priced by."""
    try:
        image_fee = parse_usd(image_fee_usd)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--image-fee-usd'") from None
    rates_by_resolution: dict[str, int] = {}
    for item in per_second:
        resolution, sep, amount = item.partition("=")
        try:
            if not sep or not resolution.strip():
                raise ValueError(f"expected RESOLUTION=USD, got {item!r}")
            if resolution.strip() in rates_by_resolution:
                raise ValueError(f"{resolution.strip()} is given twice")
            rates_by_resolution[resolution.strip()] = parse_usd(amount)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--per-second-usd'") from None
    if effective_from is not None and effective_from.tzinfo is None:
        effective_from = effective_from.replace(tzinfo=UTC)
    settings = load_settings()
    catalog = load_catalog(settings.catalog_path)

    async def _add(session: AsyncSession) -> RateCardRow:
        return await rates.add_rate_card(
            session,
            catalog,
            model=model,
            version=version,
            image_fee_micro_usd=image_fee,
            per_second_micro_usd=rates_by_resolution,
            actor=Actor.cli(),
            effective_from=effective_from,
        )

    row = run_in_session(settings, _add)
    if as_json:
        echo_json(rate_card_to_dict(row))
        return
    click.echo(
        f"added {row.model} rate card {row.version}, effective {row.effective_from.isoformat()}"
    )


@rates_group.command("list")
@click.option("--model", help="Only this model.")
@click.option("--json", "as_json", is_flag=True)
def list_rates(model: str | None, as_json: bool) -> None:
    """List rate card versions, oldest first."""
    settings = load_settings()

    async def _list(session: AsyncSession) -> Sequence[RateCardRow]:
        return await rates.list_rate_cards(session, model)

    rows = [rate_card_to_dict(r) for r in run_in_session(settings, _list)]
    if as_json:
        echo_json(rows)
        return
    resolutions = sorted({r for row in rows for r in _per_second(row)})
    print_table(
        [
            Column("MODEL"),
            Column("VERSION"),
            Column("EFFECTIVE FROM"),
            Column("IMAGE FEE USD", "right"),
            *(Column(f"{r} USD/S", "right") for r in resolutions),
        ],
        (
            [
                row["model"],
                row["version"],
                row["effective_from"],
                row["image_fee_usd"],
                *(_per_second(row).get(r) for r in resolutions),
            ]
            for row in rows
        ),
    )


def _per_second(row: dict[str, object]) -> dict[str, str]:
    rates_usd = row["per_second_usd"]
    assert isinstance(rates_usd, dict)
    return rates_usd
