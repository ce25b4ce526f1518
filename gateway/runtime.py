"""What a running gateway holds for its lifetime: settings, catalog, database, upstream client.

Built once in the app's lifespan (``gateway.app``) and handed to routes as a dependency,
instead of module-level globals.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.catalog.spec import Catalog
from gateway.config import Settings
from gateway.upstream.client import UpstreamClient


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    upstream: UpstreamClient
    pepper: str
