"""Commands run to their end as a test runs them: output captured as text, the exit code left
for the test to assert (``check=False``) unless ``check=True``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

GATEWAY = [sys.executable, "-m", "gateway"]


def environment_without_gateway(**extra: str) -> dict[str, str]:
    """This process's environment without any ``GATEWAY_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(extra)
    return env


def run(
    command: Sequence[str], *, timeout: float = 60, check: bool = False, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``command``; ``options`` go to ``subprocess.run`` (``env``, ``cwd``)."""
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=check, **options
    )


def run_gateway(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS``, as ``run`` runs a command."""
    return run([*GATEWAY, *args], **options)
