"""Configuration of the built-in upstream simulator.

The fields mirror the ``gateway simulator`` command-line flags one for one (a stable interface:
scripts outside the repo start the simulator with them), so the CLI, the demo and the tests all
describe a simulator the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StatusWord = Literal["completed", "succeeded"]
"""The word a successful job reports; real upstreams disagree, so the gateway must accept both."""

_STATUS_WORDS: frozenset[str] = frozenset({"completed", "succeeded"})


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves; immutable so one app cannot be reconfigured under a test."""

    api_key: str | None = None
    """The only accepted key; ``None`` accepts any non-empty key (handy for the demo)."""

    latency: float = 0.0
    """Seconds a job stays non-terminal; 0 makes it terminal at its first poll."""

    status_words: StatusWord = "completed"
    """Status word used for a successful job."""

    retry_after_seconds: int = 1
    """``Retry-After`` value sent with ``#sim:http429``."""

    hang_seconds: float = 3600.0
    """How long ``#sim:hang`` keeps a submit unanswered (the client should give up first)."""

    def __post_init__(self) -> None:
        """Reject nonsense early: a bad value would otherwise surface as odd job timings."""
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be None (accept any key) or a non-empty string")
        if not self.latency >= 0:  # also rejects NaN
            raise ValueError(f"latency must be >= 0, got {self.latency!r}")
        if self.status_words not in _STATUS_WORDS:
            raise ValueError(f"status_words must be one of {sorted(_STATUS_WORDS)}")
        if self.retry_after_seconds < 0:
            raise ValueError("retry_after_seconds must be >= 0")
        if not self.hang_seconds >= 0:
            raise ValueError("hang_seconds must be >= 0")
