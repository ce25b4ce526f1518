"""``X-Gateway-Tags: project=atlas,user=dana``: cost-allocation tags within a team.

Bounded and validated (a chargeback grouped by a key must not explode into garbage rows):
at most 10 tags; keys are 1-32 lowercase letters, digits, ``_ . -`` starting with a letter;
values are 1-64 characters of letters, digits and ``_ . : @ / + -``. Tags are stored with the
job and its ledger entries and never forwarded upstream.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest

HEADER = "X-Gateway-Tags"
MAX_TAGS = 10
_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,63}")


def parse_tags(header: str | None) -> dict[str, str] | None:
    if header is None or not header.strip():
        return None
    if len(header) > 1024:
        raise _invalid("is longer than 1024 characters")
    tags: dict[str, str] = {}
    for item in header.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise _invalid(f"item {item.strip()[:40]!r} is not key=value")
        if not _KEY.fullmatch(key):
            raise _invalid(
                f"key {key[:40]!r} must be 1-32 lowercase letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        if not _VALUE.fullmatch(value):
            raise _invalid(f"value of {key!r} must be 1-64 letters, digits or _.:@/+-")
        if key in tags:
            raise _invalid(f"key {key!r} appears twice")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise _invalid(f"has more than {MAX_TAGS} tags")
    return tags


def canonical(tags: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def _invalid(problem: str) -> InvalidRequest:
    return InvalidRequest(f"{HEADER} {problem}", code="invalid_tags", param=HEADER)
