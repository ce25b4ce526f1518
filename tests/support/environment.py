"""What a test needs from the machine: CI or not, and tools that may be missing. Outside CI a
missing prerequisite skips loudly (``!!!``); in CI (``CI=true``) it fails the run."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str, skipped: str) -> NoReturn:
    """Fail (in CI) or skip: ``message`` says what is missing, ``skipped`` what does not run."""
    if in_ci():
        pytest.fail(f"{message}: CI requires it", pytrace=False)
    pytest.skip(f"!!! {message}: {skipped}")


def require_tool(tool: str, *, install: str, skipped: str) -> str:
    """The path of ``tool``; ``install`` says where it comes from, for the skip message."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed ({install})", skipped)
    return path
