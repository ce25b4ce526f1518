"""Teams (tenants) and the API keys that authenticate them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.core.clock import utcnow
from gateway.db.base import Base, BigIntPK, UTCDateTime


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cost_center: Mapped[str | None] = mapped_column(String(64))
    monthly_budget_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    """Budget per calendar month (UTC), micro-USD, >= 0. NULL: the configured default policy."""
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    soft_limit_percent: Mapped[int | None] = mapped_column(Integer)
    """Percentage of the budget (1-100) past which an alert is raised; NULL: none."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A gateway-issued key. Only its HMAC is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Public key id; also the lookup part embedded in the key (``gwk_<id>_<secret>``)."""
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    """Hex HMAC-SHA256 of the whole key under the server-side pepper."""
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
