"""When this process last saw the database fail (an outage, not a bug).

Every place that meets a database failure reports it here (the HTTP error handler, the
recording of an upstream answer, the background loops). The reconciler reads it: right after
an outage, answers that replicas could not record yet are still waiting in their outboxes,
and their jobs must not be given up on meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.db.errors import is_database_unavailable


class DatabaseHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_failure: float | None = None

    def observe(self, exc: BaseException) -> bool:
        """Note ``exc`` if it is an outage; True if it was."""
        if is_database_unavailable(exc):
            self._last_failure = self._clock()
            return True
        return False

    def failed_within(self, seconds: float) -> bool:
        """True if an outage was seen in the last ``seconds`` seconds."""
        return self._last_failure is not None and self._clock() - self._last_failure < seconds
