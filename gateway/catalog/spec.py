"""The model catalog as data: parameter rules and rate card per model.

A model is a JSON entry (``models.json``, or the file named by ``GATEWAY_CATALOG_PATH``),
validated into these types at startup, so a second model is a data change, not new code.
A catalog that contradicts itself (pricing on an unknown parameter, a resolution without a
rate) refuses to load.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.pricing import RateCard


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    required: bool = False


class StringRule(_Rule):
    kind: Literal["string"]
    min_length: int = Field(default=0, ge=0)
    max_length: int = Field(ge=1)


class NumberRule(_Rule):
    """A JSON number (never a bool or a string) within [minimum, maximum]."""

    kind: Literal["number"]
    minimum: Decimal
    maximum: Decimal
    default: Decimal | None = None
    max_decimal_places: int | None = Field(default=None, ge=0)


class IntegerRule(_Rule):
    kind: Literal["integer"]
    minimum: int
    maximum: int
    default: int | None = None


class BooleanRule(_Rule):
    kind: Literal["boolean"]
    default: bool | None = None


class EnumRule(_Rule):
    kind: Literal["enum"]
    values: tuple[str, ...] = Field(min_length=1)
    default: str | None = None

    @model_validator(mode="after")
    def _default_is_a_value(self) -> EnumRule:
        if self.default is not None and self.default not in self.values:
            raise ValueError(f"default {self.default!r} is not one of {self.values}")
        return self


class ImageRule(_Rule):
    """A source image: http(s) URL, base64 data URI of an allowed type, or an upload id."""

    kind: Literal["image"]
    max_bytes: int = Field(ge=1)
    max_url_length: int = Field(default=2048, ge=16)
    data_uri_types: tuple[str, ...]
    upload_ref_pattern: str | None = None

    @field_validator("upload_ref_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


# Money in the catalog is integer micro-USD; 0.05 or even 50000.0 is refused, not coerced.
MicroUSD = Annotated[int, Field(strict=True, ge=0)]

ParamRule = Annotated[
    StringRule | NumberRule | IntegerRule | BooleanRule | EnumRule | ImageRule,
    Field(discriminator="kind"),
]


class RateCardSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1, max_length=64)
    effective_from: datetime
    image_fee_micro_usd: MicroUSD
    per_second_micro_usd: dict[str, MicroUSD]

    def to_rate_card(self) -> RateCard:
        return RateCard(
            version=self.version,
            effective_from=self.effective_from,
            image_fee_micro_usd=self.image_fee_micro_usd,
            per_second_micro_usd=dict(self.per_second_micro_usd),
        )


class PricingSpec(BaseModel):
    """Which parameters carry the billable units, and the default rate card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration_param: str
    resolution_param: str
    image_param: str | None = None
    rate_card: RateCardSpec


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    description: str = ""
    params: dict[str, ParamRule]
    pricing: PricingSpec

    @model_validator(mode="after")
    def _pricing_is_consistent(self) -> ModelSpec:
        if "model" in self.params:
            raise ValueError("'model' is implicit and cannot be declared as a parameter")
        pricing = self.pricing
        duration = self.params.get(pricing.duration_param)
        if not isinstance(duration, NumberRule | IntegerRule):
            raise ValueError(f"{self.id}: duration_param must name a number parameter")
        if duration.default is None and not duration.required:
            raise ValueError(f"{self.id}: the duration parameter needs a default or required")
        resolution = self.params.get(pricing.resolution_param)
        if not isinstance(resolution, EnumRule):
            raise ValueError(f"{self.id}: resolution_param must name an enum parameter")
        if resolution.default is None and not resolution.required:
            raise ValueError(f"{self.id}: the resolution parameter needs a default or required")
        missing = set(resolution.values) - set(pricing.rate_card.per_second_micro_usd)
        if missing:
            raise ValueError(f"{self.id}: rate card has no per-second rate for {sorted(missing)}")
        if pricing.image_param is not None and not isinstance(
            self.params.get(pricing.image_param), ImageRule
        ):
            raise ValueError(f"{self.id}: image_param must name an image parameter")
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        ids = [m.id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError("model ids in the catalog must be unique")
        return self

    def get(self, model_id: str) -> ModelSpec | None:
        for spec in self.models:
            if spec.id == model_id:
                return spec
        return None

    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]


def load_catalog(path: Path | None = None) -> Catalog:
    """The operator's catalog file if given, else the built-in one."""
    if path is None:
        text = resources.files("gateway.catalog").joinpath("models.json").read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    return Catalog.model_validate(json.loads(text, parse_float=Decimal))
