"""Outcome and fault markers read from the prompt.

Markers live in the prompt because it is the one field that passes through the gateway untouched,
so an end-to-end test can steer the upstream without any side channel:

``#sim:http500``   the submit answers 500; no job is created
``#sim:http429``   the submit answers 429 with ``Retry-After``; no job is created
``#sim:hang``      the submit is left unanswered for ``hang_seconds``, then answers 504; no job
``#sim:slow=S``    the submit is delayed S seconds, then proceeds as the other markers say
``#sim:fail``      the job fails before any video is produced (not billed)
``#sim:moderated`` the video is produced, then blocked by moderation (billed)
``#sim:duration=N`` the job reports N seconds produced instead of the requested duration

Matching is by substring. A numeric argument is a plain decimal (``5``, ``2.5``) of at most
6 integer and 6 fractional digits; a marker whose number does not fit is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum


class Fault(Enum):
    """How the submit itself misbehaves instead of creating a job."""

    HTTP500 = "#sim:http500"
    HTTP429 = "#sim:http429"
    HANG = "#sim:hang"


class Outcome(Enum):
    """How a created job ends."""

    SUCCESS = "success"
    FAIL = "fail"
    MODERATED = "moderated"

    @property
    def billed(self) -> bool:
        """Only a produced video is billed, even if moderation then blocked it (seed rules)."""
        return self is not Outcome.FAIL


# A bounded number so the figures stay finite as JSON floats and cheap as Decimals.
_NUMBER = r"(\d{1,6}(?:\.\d{1,6})?)(?!\d)(?!\.\d)"
_SLOW = re.compile(r"#sim:slow=" + _NUMBER)
_DURATION = re.compile(r"#sim:duration=" + _NUMBER)


@dataclass(frozen=True, slots=True)
class Markers:
    """Everything the prompt asks of the simulator."""

    fault: Fault | None
    slow_seconds: Decimal | None
    outcome: Outcome
    reported_seconds: Decimal | None


def parse_markers(prompt: str) -> Markers:
    """Read the markers; faults take precedence in the order 500, 429, hang."""
    return Markers(
        fault=_fault(prompt),
        slow_seconds=_number(_SLOW, prompt),
        outcome=_outcome(prompt),
        reported_seconds=_number(_DURATION, prompt),
    )


def _fault(prompt: str) -> Fault | None:
    """First fault marker present, in declaration order."""
    if "#sim:" not in prompt:  # fast path: the common prompt carries no marker at all
        return None
    for fault in Fault:
        if fault.value in prompt:
            return fault
    return None


def _outcome(prompt: str) -> Outcome:
    """Failure wins over moderation: a job that produced nothing cannot have been moderated."""
    if "#sim:fail" in prompt:
        return Outcome.FAIL
    if "#sim:moderated" in prompt:
        return Outcome.MODERATED
    return Outcome.SUCCESS


def _number(pattern: re.Pattern[str], prompt: str) -> Decimal | None:
    """The first well-formed numeric argument of a marker, if any."""
    match = pattern.search(prompt)
    return Decimal(match.group(1)) if match else None
