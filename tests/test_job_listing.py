"""The team's jobs newest first with a tag filter (the portal's jobs page): on Postgres the
newest jobs in range are looked at first and, when they do not fill the page, the tag's own
index; whichever answers, the pages are those of the plain filter, in order, without gaps or
repeats across cursors. Fast tier (a small window stands in for the real one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.jobs import repository
from gateway.jobs.models import Job
from tests.support.jobs import pending_job
from tests.support.savepoint import SavepointDatabase
from tests.support.tenants import in_session, make_tenant
from tests.test_ledger import team_quota

pytestmark = pytest.mark.fast

START = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.mark.parametrize("window", [3, 10_000])
def test_tag_pages_are_the_plain_filters_pages_whichever_path_answers(
    db: SavepointDatabase, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository, "_TAG_WINDOW", window)
    team_id = team_quota(db, make_tenant(db).team).team_id
    tagged_at = {2, 3, 11, 17, 18, 28}  # the newest few and some far older than the window

    async def _fill(session: AsyncSession) -> list[str]:
        jobs = []
        for i in range(30):
            tags = {"campaign": "spring" if i in tagged_at else "autumn", "n": str(i)}
            job = pending_job(team_id, 1_000, period="2026-11", at=START + timedelta(hours=i))
            job.tags = tags
            session.add(job)
            jobs.append(job)
        await session.flush()
        return [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]

    newest_first = in_session(db, _fill)

    def pages(tag: tuple[str, str], size: int) -> list[list[str]]:
        found: list[list[str]] = []
        before = None
        while True:

            async def _page(
                session: AsyncSession, after: tuple[datetime, str] | None = before
            ) -> list[Job]:
                rows = await repository.list_team_jobs(
                    session, team_id, limit=size, before=after, tag=tag
                )
                return list(rows)

            rows = in_session(db, _page)
            if not rows:
                return found
            found.append([job.id for job in rows])
            before = (rows[-1].created_at, rows[-1].id)

    by_hour = {i: newest_first[29 - i] for i in range(30)}
    spring = [by_hour[i] for i in sorted(tagged_at, reverse=True)]
    assert pages(("campaign", "spring"), 2) == [spring[0:2], spring[2:4], spring[4:6]]
    assert pages(("campaign", "nosuch"), 2) == []
    autumn = [by_hour[i] for i in range(29, -1, -1) if i not in tagged_at]
    assert [job for page in pages(("campaign", "autumn"), 5) for job in page] == autumn
