"""``gateway simulator``: the built-in fake upstream (same API, deterministic outcomes)."""

from __future__ import annotations

import click
import uvicorn

from gateway.observability.logging import configure_logging
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", help="The only key accepted (default: any non-empty key).")
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a job stays running (0: terminal at its first poll).",
)
@click.option(
    "--status-words",
    type=click.Choice(["completed", "succeeded"]),
    default="completed",
    show_default=True,
    help="The word used for a successful job.",
)
@click.option(
    "--retry-after",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Retry-After seconds sent with #sim:http429.",
)
def simulator(
    host: str,
    port: int,
    api_key: str | None,
    latency: float,
    status_words: str,
    retry_after: int,
) -> None:
    """Run the upstream simulator. Outcomes are chosen by markers in the prompt:

    \b
    #sim:fail        fails before any video (not billed)
    #sim:moderated   produced, then blocked by moderation (billed)
    #sim:duration=N  reports N seconds produced
    #sim:http500     the submit answers 500
    #sim:http429     the submit answers 429 with Retry-After
    #sim:hang        the submit never answers in time
    #sim:slow=S      the submit answers after S seconds
    """
    configure_logging("text", "INFO", [api_key] if api_key else [])
    config = SimulatorConfig(
        api_key=api_key,
        latency=latency,
        status_words="succeeded" if status_words == "succeeded" else "completed",
        retry_after_seconds=retry_after,
    )
    uvicorn.run(
        create_simulator_app(config),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        # A #sim:hang submit is held open for an hour: shutdown cuts it off instead of waiting.
        timeout_graceful_shutdown=2,
    )
