"""Upstream answers the ledger could not take yet, kept until it can.

Once the upstream has accepted a submit, its answer (the job id) is the only link between the
job the upstream will bill and the hold in the ledger. If the database falters at that moment
and the submit's own short retries fail, the answer comes here, and:

- it is written to a local file (fsync'd, then renamed into place) before the client hears
  the answer, so a process that stops before the database returns leaves it for the next one,
  which replays the directory at startup;
- it is retried every ``RETRY_SECONDS`` until the database answers again;
- a poll that finds no job for its id looks here first and records the answer on the spot, so
  the job is visible to its owner as soon as the database answers again.

Recording is idempotent (``gateway.services.recording``: conditional moves only), so an answer
recorded twice (two workers replaying one directory) changes nothing the second time. Each
database has its own subdirectory: a gateway never replays another database's answers.

Limit: the directory is local. A replica whose disk is lost before the database returns (a pod
deleted with its ``emptyDir``) loses its waiting answers; mount a persistent volume at
``GATEWAY_OUTBOX_DIR`` where that matters. Until then the reconciler holds off releasing
unanswered submits for ``GATEWAY_RELEASE_GRACE_AFTER_OUTAGE_SECONDS`` after an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.health import DatabaseHealth
from gateway.db.session import transaction
from gateway.observability.metrics import Metrics
from gateway.services.recording import Released, SubmitAnswer, record_answer

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.25
"""How often waiting answers are retried while the database is away."""
_BUG_BACKOFF_MAX_SECONDS = 60.0
_SUFFIX = ".json"


def database_id(rendered_url_without_password: str) -> str:
    """A stable name for one database (host, port, name, user): its outbox subdirectory."""
    return hashlib.sha256(rendered_url_without_password.encode()).hexdigest()[:16]


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / "video-gateway-outbox"


@dataclass
class _Waiting:
    answer: SubmitAnswer
    attempts: int = 0
    next_attempt: float = 0.0


class AnswerOutbox:
    """Answers waiting for the ledger, in memory and on disk."""

    def __init__(
        self,
        directory: Path,
        sessionmaker: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        health: DatabaseHealth,
    ) -> None:
        self.directory = directory
        self._sessionmaker = sessionmaker
        self._metrics = metrics
        self._health = health
        self._waiting: dict[str, _Waiting] = {}
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def load(self) -> int:
        """Take in what a previous process left (at startup). Returns how many answers."""
        if not self.directory.is_dir():
            return 0
        loaded = 0
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                answer = SubmitAnswer.from_json(path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError):
                logger.exception("unreadable outbox entry kept aside", extra={"path": str(path)})
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".unreadable"))
                continue
            self._waiting.setdefault(answer.job_id, _Waiting(answer))
            loaded += 1
        if loaded:
            logger.warning(
                "replaying upstream answers a previous process could not record",
                extra={"answers": loaded, "directory": str(self.directory)},
            )
        self._set_gauge()
        return loaded

    async def keep(self, answer: SubmitAnswer) -> None:
        """Keep ``answer`` until it is recorded: on disk first (durable), then in memory."""
        try:
            await asyncio.to_thread(self._write, answer)
        except OSError:
            # Still kept in memory and retried while this process lives; only a restart
            # before the database returns would lose it.
            logger.critical(
                "could not write an upstream answer to the outbox directory; kept in memory",
                extra={"gateway_job_id": answer.job_id, "directory": str(self.directory)},
                exc_info=True,
            )
        self._waiting[answer.job_id] = _Waiting(answer, next_attempt=time.monotonic())
        self._set_gauge()
        logger.error(
            "kept the upstream's answer in the outbox until the ledger can record it",
            extra={"gateway_job_id": answer.job_id, "outcome": answer.kind},
        )

    async def flush(self) -> int:
        """Try every answer that is due once; stop at the first outage. Returns how many were
        recorded."""
        recorded = 0
        now = time.monotonic()
        for job_id, waiting in list(self._waiting.items()):
            if waiting.next_attempt > now:
                continue
            outcome = await self._record(job_id)
            if outcome is None:
                break  # the database is still away: no use trying the others now
            recorded += outcome
        return recorded

    async def record_upstream_job(self, upstream_job_id: str, team_id: int) -> bool:
        """A poll found no job for ``upstream_job_id``: if its acceptance is waiting here for
        this team, record it now. True if it was (the caller reads the job again)."""
        for job_id, waiting in list(self._waiting.items()):
            answer = waiting.answer
            if answer.upstream_job_id == upstream_job_id and answer.team_id == team_id:
                return bool(await self._record(job_id, raise_outage=True))
        return False

    async def _record(self, job_id: str, *, raise_outage: bool = False) -> int | None:
        """1 if recorded (or no longer waiting), 0 after a non-outage failure (retried later,
        backing off), None while the database is away."""
        async with self._lock:  # one recording at a time per answer, and per process
            waiting = self._waiting.get(job_id)
            if waiting is None:
                return 1
            try:
                async with transaction(self._sessionmaker) as session:
                    released = await record_answer(session, waiting.answer)
            except Exception as exc:  # kept and retried whatever went wrong: it is money
                if isinstance(exc, SQLAlchemyError | OSError) and self._health.observe(exc):
                    waiting.next_attempt = time.monotonic() + RETRY_SECONDS
                    if raise_outage:
                        raise
                    return None
                waiting.attempts += 1
                delay = min(RETRY_SECONDS * 2**waiting.attempts, _BUG_BACKOFF_MAX_SECONDS)
                waiting.next_attempt = time.monotonic() + delay
                logger.exception(
                    "could not record an upstream answer from the outbox; retrying",
                    extra={"gateway_job_id": job_id, "retry_in_s": delay},
                )
                return 0
            del self._waiting[job_id]
        if isinstance(released, Released):
            self._metrics.record_release()
        await asyncio.to_thread(self._remove, job_id)
        self._set_gauge()
        logger.warning(
            "recorded an upstream answer kept in the outbox",
            extra={"gateway_job_id": job_id, "outcome": waiting.answer.kind},
        )
        return 1

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}{_SUFFIX}"

    def _write(self, answer: SubmitAnswer) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self._path(answer.job_id)
        partial = final.with_name(f".{final.name}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, answer.to_json())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(partial, final)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def _remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(job_id).unlink()

    def _set_gauge(self) -> None:
        self._metrics.outbox_pending.set(len(self._waiting))
