"""The built-in upstream simulator: a fake of the paid video API for tests, the demo and benchmarks.

Plain Starlette (no FastAPI) so that benchmarks measure the gateway, not the fake.

Routes
------
``POST /v1/videos/generations``  submit a job (auth, validation, fault markers) -> job id
``GET /v1/jobs/{job_id}``        poll; the status is a pure function of time since submit
``GET /_simulator/usage``        the simulator's own bill; ``?format=csv`` for CSV
``GET /_simulator/requests``     every request seen on the two API routes (header names only)
``POST /_simulator/reset``       forget jobs and requests (204)

The ``/_simulator/*`` routes need no key: they are a test harness, not part of the upstream API.

Prompt markers (see :mod:`.markers`)
------------------------------------
``#sim:http500``     the submit answers 500; no job
``#sim:http429``     the submit answers 429 with ``Retry-After``; no job
``#sim:hang``        the submit answers 504 only after ``hang_seconds``; no job
``#sim:slow=S``      the submit is delayed S seconds first, then proceeds
``#sim:fail``        the job fails before producing video (not billed)
``#sim:moderated``   produced, then blocked: ``failed`` + ``content_moderated`` (billed)
``#sim:duration=N``  the job reports, and is billed for, N seconds instead of the requested ones

``Idempotency-Key`` on submit is honoured like a real API would: a key seen with an accepted
job answers that same job again (nothing new created or billed); with another body, 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import check_key
from .config import SimulatorConfig
from .markers import Fault, parse_markers
from .responses import error_response, json_bytes_response, json_response, render_json
from .state import RequestRecord, SimulatorState
from .validation import Rejection, parse_submission
from .views import job_body, usage_csv, usage_payload


def create_simulator_app(
    config: SimulatorConfig, *, clock: Callable[[], float] = time.time
) -> Starlette:
    """Build a simulator; ``app.state.simulator`` exposes its state to in-process tests.

    ``clock`` is injectable so tests can walk a job through its lifecycle without sleeping.
    """
    state = SimulatorState(config=config, clock=clock)
    endpoints = _Endpoints(state)
    app = Starlette(
        routes=[
            Route("/v1/videos/generations", endpoints.submit, methods=["POST"]),
            Route("/v1/jobs/{job_id}", endpoints.poll, methods=["GET"]),
            Route("/_simulator/usage", endpoints.usage, methods=["GET"]),
            Route("/_simulator/requests", endpoints.requests, methods=["GET"]),
            Route("/_simulator/reset", endpoints.reset, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.simulator = state
    return app


class _Endpoints:
    """Request handlers bound to one simulator's state (bound methods, so Starlette wraps them)."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.config = state.config

    async def submit(self, request: Request) -> Response:
        """``POST /v1/videos/generations``: auth, validation, faults, then a queued job."""
        record = self._record(request)
        response = await self._submit(request)
        record.status = response.status_code
        return response

    async def poll(self, request: Request) -> Response:
        """``GET /v1/jobs/{job_id}``: the job as of now."""
        record = self._record(request)
        response = self._poll(request)
        record.status = response.status_code
        return response

    async def usage(self, request: Request) -> Response:
        """``GET /_simulator/usage``: what the simulator would have billed, as of now."""
        report_format = request.query_params.get("format", "json")
        rows = self.state.usage_rows()
        if report_format == "csv":
            return Response(usage_csv(rows), media_type="text/csv")
        if report_format == "json":
            return json_response(usage_payload(rows))
        return error_response(
            400, "invalid_request_error", "invalid_parameter", "format must be json or csv"
        )

    async def requests(self, request: Request) -> Response:
        """``GET /_simulator/requests``: the request log, oldest first."""
        return json_response({"requests": [record.as_dict() for record in self.state.requests]})

    async def reset(self, request: Request) -> Response:
        """``POST /_simulator/reset``: start from a clean slate."""
        self.state.reset()
        return Response(status_code=204)

    def _record(self, request: Request) -> RequestRecord:
        """Log the request on arrival, so even one that never gets answered is visible."""
        return self.state.log_request(
            method=request.method,
            path=str(request.scope["path"]),
            request_id=request.headers.get("x-request-id"),
            header_names=(name.decode("latin-1").lower() for name, _ in request.headers.raw),
        )

    async def _submit(self, request: Request) -> Response:
        denied = check_key(request.headers, self.config.api_key)
        if denied is not None:
            return denied
        body = await request.body()
        submission = parse_submission(body)
        if isinstance(submission, Rejection):
            return error_response(
                400,
                "invalid_request_error",
                submission.code,
                submission.message,
                param=submission.param,
            )
        key = request.headers.get("idempotency-key")
        fingerprint = hashlib.sha256(body).hexdigest()
        if key is not None and key in self.state.idempotency:
            # A retry of an accepted submit: the same job again, nothing new created or billed.
            seen_fingerprint, job_id = self.state.idempotency[key]
            if seen_fingerprint != fingerprint:
                return error_response(
                    422,
                    "invalid_request_error",
                    "idempotency_key_reused",
                    "Idempotency-Key already used with another body",
                )
            if job_id is None:
                return error_response(
                    409,
                    "invalid_request_error",
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is in progress",
                )
            return json_response({"job_id": job_id, "status": "queued"})
        if key is not None:
            self.state.idempotency[key] = (fingerprint, None)  # claimed while in progress
        markers = parse_markers(submission.prompt)
        try:
            if markers.slow_seconds is not None:
                await asyncio.sleep(float(markers.slow_seconds))
            if markers.fault is not None:
                return await self._fault(markers.fault)
        except BaseException:
            self._free_key(key)
            raise
        finally:
            if markers.fault is not None:
                self._free_key(key)  # nothing was created: the key may be used again
        job = self.state.create_job(submission, markers)
        if key is not None:
            self.state.idempotency[key] = (fingerprint, job.job_id)
        return json_response({"job_id": job.job_id, "status": "queued"})

    def _free_key(self, key: str | None) -> None:
        if key is not None:
            self.state.idempotency.pop(key, None)

    async def _fault(self, fault: Fault) -> Response:
        """The submit misbehaves as asked; no job is created, so nothing is billed."""
        if fault is Fault.HTTP500:
            return error_response(
                500, "server_error", "internal_error", "simulated upstream failure"
            )
        if fault is Fault.HTTP429:
            return error_response(
                429,
                "rate_limit_error",
                "rate_limited",
                "simulated rate limit: retry later",
                headers={"Retry-After": str(self.config.retry_after_seconds)},
            )
        await asyncio.sleep(self.config.hang_seconds)
        return error_response(504, "timeout_error", "upstream_timeout", "simulated hang elapsed")

    def _poll(self, request: Request) -> Response:
        denied = check_key(request.headers, self.config.api_key)
        if denied is not None:
            return denied
        job = self.state.jobs.get(request.path_params["job_id"])
        if job is None:
            return error_response(404, "not_found_error", "job_not_found", "no such job")
        if job.terminal_body is not None:
            return json_bytes_response(job.terminal_body)
        status = self.state.status_of(job)
        body = render_json(job_body(job, status))
        if status.terminal:
            job.terminal_body = body
        return json_bytes_response(body)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Router errors (unknown path, wrong method) in the same JSON envelope as everything else."""
    status_code = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "http_error")
    error_type = "not_found_error" if status_code == 404 else "invalid_request_error"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return error_response(status_code, error_type, code, f"HTTP {status_code}", headers=headers)
