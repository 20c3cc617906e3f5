"""The HTTP front door: signing jobs for upstreams that speak neither AMQP nor Redis.

* ``POST /v1/jobs/sign``, ``POST /v1/jobs/sign-batch`` -- enqueue one job and answer 202 with
  its URL (``Location``); with ``?wait=S``, wait up to S seconds (at most
  ``TENANTKEYS_FRONT_DOOR_MAX_WAIT_SECONDS``) and answer 200 with the result if it came.
* ``GET /v1/jobs/{job_id}`` -- the job's state, then its result or its coded error.

A producer sends a bearer token whose SHA-256 is in ``TENANTKEYS_PRODUCER_SCOPES_FILE``, and
may sign only for the tenants listed there. Without that file the front door is off and every
route answers 404 ``TK-FRONT-DOOR-OFF``: off is a setting, not an outage, so a 503 (retry
later) would be wrong and would page whoever watches 5xx rates.

The body is read here, not by FastAPI: its ``Content-Length`` is checked before reading and its
size again while it streams, so an oversized request is refused (413) without being held. A
job's failure is the job's data, not the request's: ``GET`` answers 200 with ``state`` FAILURE
and the error. No payload and no token is ever logged.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from tenantkeys import jobs
from tenantkeys.api.auth import unauthorized
from tenantkeys.api.errors import ApiError, error_responses
from tenantkeys.api.front_door import TASKS, FrontDoor, RequestShapeError
from tenantkeys.api.health import services
from tenantkeys.api.job_models import (
    JOB_ID_PATTERN,
    JobView,
    request_body,
    sign_batch_request_schema,
    sign_request_schema,
)
from tenantkeys.api.models import ErrorResponse
from tenantkeys.errors import ErrorCode, InvalidRequest, TenantKeysError
from tenantkeys.jobs.scopes import Producer
from tenantkeys.queue.producer import JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

producer_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="producerAuth",
    description="A producer's token, whose SHA-256 is listed in "
    "TENANTKEYS_PRODUCER_SCOPES_FILE with the tenants it may sign for.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(producer_bearer)]
#: Bodies up to this size are checked on the event loop: a few microseconds, less than the
#: hop to a worker thread; larger ones (a batch) are checked in the thread pool.
_INLINE_PARSE_BYTES = 16_384
#: Polling the result backend while a request waits: quick at first, then every 100 ms.
_FIRST_POLL, _LAST_POLL = 0.002, 0.1
_LOCATION: Final = {
    "Location": {"description": "The job's URL (GET it)", "schema": {"type": "string"}}
}
_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "The job finished within ?wait= (its result)"},
    202: {"model": JobView, "description": "The job is queued (or running)", "headers": _LOCATION},
    **error_responses(400, 401, 403, 404, 409, 422, 503),
    413: {"model": ErrorResponse, "description": "Body, payload or batch too large"},
}
_WAIT_DOC = (
    "Seconds to wait for the result before answering 202 (at most "
    "TENANTKEYS_FRONT_DOOR_MAX_WAIT_SECONDS; longer asks are cut to it). 0: answer at once."
)
Wait = Annotated[float, Query(ge=0, le=300, description=_WAIT_DOC)]


def _door(request: Request) -> FrontDoor:
    door = services(request).front_door()
    if door is None:
        raise InvalidRequest(
            "the HTTP front door is off: set TENANTKEYS_PRODUCER_SCOPES_FILE to the producers "
            "and their tenants to turn it on",
            code=ErrorCode.FRONT_DOOR_OFF,
        )
    return door


def _producer(door: FrontDoor, credentials: HTTPAuthorizationCredentials | None) -> Producer:
    producer = door.producer_of(credentials.credentials if credentials else None)
    if producer is None:
        raise unauthorized(
            credentials,
            "a producer's bearer token is required (one listed in TENANTKEYS_PRODUCER_SCOPES_FILE)",
        )
    return producer


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes: by its Content-Length, then as it streams."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body, or one longer than it said
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"the request body is larger than {limit} bytes (TENANTKEYS_FRONT_DOOR_MAX_BODY_BYTES); "
        "send smaller batches",
        code=ErrorCode.PAYLOAD_TOO_LARGE,
    )


async def _submit(
    request: Request, path: str, credentials: HTTPAuthorizationCredentials | None, wait: float
) -> JSONResponse:
    door = _door(request)
    producer = _producer(door, credentials)
    body = await _read_body(request, door.settings.front_door_max_body_bytes)
    try:
        if len(body) <= _INLINE_PARSE_BYTES:
            job = door.parse(TASKS[path], body)
        else:  # decoding a large batch is CPU work: off the event loop
            job = await run_in_threadpool(door.parse, TASKS[path], body)
    except RequestShapeError as exc:
        raise ApiError(422, str(exc.code), exc.message) from None
    door.check_scope(producer, job)  # counted and refused before anything is queued
    new = await run_in_threadpool(door.submit, producer, job)
    return await _answer(door, job.job_id, wait, new=new)


async def _answer(door: FrontDoor, job_id: str, wait: float, *, new: bool) -> JSONResponse:
    budget = min(wait, door.settings.front_door_max_wait_seconds)
    if new and budget <= 0:
        state = JobState("PENDING")  # just published: nothing to read yet
    else:
        state = await _wait(door, job_id, budget)
    if state.done:
        return JSONResponse(_view(job_id, state), status_code=200)
    url = _url(job_id)
    return JSONResponse(_view(job_id, state), status_code=202, headers={"Location": url})


async def _wait(door: FrontDoor, job_id: str, budget: float) -> JobState:
    """The job's state once done, or when ``budget`` seconds are spent; the loop stays free."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    interval = _FIRST_POLL
    while True:
        state = await run_in_threadpool(door.state, job_id)
        remaining = deadline - loop.time()
        if state.done or remaining <= 0:
            return state
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 1.5, _LAST_POLL)


def _url(job_id: str) -> str:
    return f"{router.prefix}/{job_id}"


def _view(job_id: str, state: JobState) -> dict[str, Any]:
    """The job as the front door shows it: checked against :class:`JobView`."""
    shown: dict[str, Any] = {"job_id": job_id, "state": state.status, "url": _url(job_id)}
    if state.status == "SUCCESS":
        try:
            shown["result"] = jobs.unwrap(state.result)
        except TenantKeysError as rejected:  # an error envelope stored as SUCCESS (older form)
            shown.update(state="FAILURE", error=rejected.to_dict())
    elif state.status == "FAILURE":
        detail = jobs.failure_detail(state.result)
        error = (
            jobs.error_from(detail)
            if detail is not None
            else TenantKeysError(f"job {job_id} failed in the worker; see the worker log")
        )
        shown["error"] = error.to_dict()
        if detail is not None and detail.get("dead_letter"):
            shown["error"]["dead_letter"] = str(detail["dead_letter"])
    checked = JobView.model_validate(shown).model_dump(mode="json")
    return {name: value for name, value in checked.items() if value is not None}


@router.post(
    "/sign",
    status_code=202,
    response_model=JobView,
    responses=_SUBMIT_RESPONSES,
    openapi_extra=request_body(sign_request_schema()),
    summary="Enqueue one signing job (202 with its URL; 200 if it finished within ?wait=)",
)
async def sign(request: Request, credentials: Credentials, wait: Wait = 0) -> JSONResponse:
    """The body is a ``tenantkeys.sign`` job's arguments (the published contract) and an
    optional ``job_id``. The same id with the same body names the same job (enqueued once)."""
    return await _submit(request, "sign", credentials, wait)


@router.post(
    "/sign-batch",
    status_code=202,
    response_model=JobView,
    responses=_SUBMIT_RESPONSES,
    openapi_extra=request_body(sign_batch_request_schema()),
    summary="Enqueue one batch job: one signature (or error) per item, in order",
)
async def sign_batch(request: Request, credentials: Credentials, wait: Wait = 0) -> JSONResponse:
    """The body is a ``tenantkeys.sign_batch`` job's arguments and an optional ``job_id``.

    Every item is checked before anything is queued: one bad item refuses the request."""
    return await _submit(request, "sign-batch", credentials, wait)


@router.get(
    "/{job_id}",
    response_model=JobView,
    responses={**error_responses(401, 404, 503)},
    summary="A job's state; its result or its coded error once it is done",
)
async def show(
    request: Request,
    credentials: Credentials,
    job_id: Annotated[str, Path(json_schema_extra={"pattern": JOB_ID_PATTERN})],
) -> JSONResponse:
    """404 ``TK-JOB-NOT-FOUND`` for an id this producer did not submit, or whose result has
    expired (``TENANTKEYS_RESULT_EXPIRES_SECONDS``)."""
    door = _door(request)
    producer = _producer(door, credentials)
    if not await run_in_threadpool(door.owns, producer, job_id):
        raise InvalidRequest(
            f"no job {job_id[:128]!r} of producer {producer.name!r}: unknown, another "
            "producer's, or its result expired",
            code=ErrorCode.JOB_NOT_FOUND,
        )
    state = await run_in_threadpool(door.state, job_id)
    return JSONResponse(_view(job_id, state))
