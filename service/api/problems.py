"""Every error leaves the service as an RFC 9457 problem detail, mapped here and only here.

Errors a user can cause, the engine's (:class:`llfc_core.errors.LLFCError`) and the service's
domain's (:class:`service.errors.ServiceError`), become 4xx with their sentence through the one
table :data:`ERROR_TYPES`; request validation becomes 422 naming the field; anything else is a 500
whose details stay in the logs, so no traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llfc_core import errors as engine_errors
from service import errors as service_errors
from service.storage import UploadTooLargeError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="llfc"'}

UserError = engine_errors.LLFCError | service_errors.ServiceError

ERROR_TYPES: dict[type[Exception], tuple[int, str]] = {
    engine_errors.ArchitectureError: (422, "invalid-arch"),
    engine_errors.CheckpointMismatchError: (422, "checkpoint-mismatch"),
    engine_errors.CheckpointFormatError: (422, "unreadable-checkpoint"),
    engine_errors.KeyMapError: (422, "invalid-key-map"),
    engine_errors.IncompatiblePairError: (422, "incompatible-pair"),
    engine_errors.DatasetError: (422, "invalid-dataset"),
    engine_errors.InvalidParameterError: (422, "invalid-parameter"),
    engine_errors.JobTooLargeError: (422, "job-too-large"),
    engine_errors.SymmetryProofError: (422, "symmetry-proof-failed"),
    engine_errors.CancelledError: (409, "cancelled"),
    service_errors.UnauthorizedError: (401, "unauthorized"),
    service_errors.NotFoundError: (404, "not-found"),
    service_errors.InUseError: (409, "in-use"),
    service_errors.AlreadyFinishedError: (409, "already-finished"),
    service_errors.KeyMapConflictError: (409, "key-map-conflict"),
    service_errors.InvalidIdempotencyKeyError: (422, "validation"),
    service_errors.IdempotencyKeyReusedError: (422, "idempotency-key-reused"),
    service_errors.TooManyQueuedJobsError: (429, "too-many-queued-jobs"),
    service_errors.StorageQuotaError: (507, "storage-quota-exceeded"),
    service_errors.ServiceBusyError: (503, "busy"),
    service_errors.StorageError: (503, "storage-unavailable"),
}
"""Status and problem type (``/problems/<slug>``) of every error a user can cause; a subclass
not listed takes its nearest listed base's, an unlisted engine error 422 invalid-request."""


class ProblemDetail(BaseModel):
    """The body of every error response (RFC 9457); some problems add fields (``errors``...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI reference naming the kind of problem.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="A sentence saying what went wrong and what to do.")


PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read (e.g. it is not UTF-8 text).",
    401: "No API key, or one that is not valid; the answer says how to send one.",
    404: "No such resource of the caller (another owner's looks the same).",
    409: "The request conflicts with the resource's state.",
    413: "Larger than LLFC_MAX_UPLOAD_BYTES.",
    415: "The body is not multipart/form-data.",
    422: "The request is well-formed but invalid; 'detail' says which field and why.",
    429: "The owner has too many queued jobs (LLFC_MAX_QUEUED_JOBS_PER_OWNER); retry later.",
    503: "Names what is not reachable.",
    507: "The owner's stored bytes would pass LLFC_MAX_STORED_BYTES_PER_OWNER.",
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``statuses`` as problem details.

    ``descriptions`` overrides the generic text, keyed ``s409="..."`` by status.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": descriptions.get(
                f"s{status}", PROBLEM_DESCRIPTIONS.get(status, HTTPStatus(status).phrase)
            ),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": ProblemDetail.model_json_schema()}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "The scheme to authenticate with: Bearer.",
                    "schema": {"type": "string"},
                }
            }
        responses[status] = response
    return responses


class ProblemError(Exception):
    """An error the service itself raises, carried to the client as a problem detail."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_slug: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type_slug = type_slug
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    detail: str,
    *,
    type_slug: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{type_slug}" if type_slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def user_error_response(error: UserError) -> JSONResponse:
    """The problem detail of an engine or domain error, as :data:`ERROR_TYPES` maps it, with the
    fields and headers that kind of error carries."""
    status, slug = 422, "invalid-request"
    for error_type in type(error).__mro__:
        if error_type in ERROR_TYPES:
            status, slug = ERROR_TYPES[error_type]
            break
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(error, service_errors.ServiceError):
        extra = dict(error.fields)
    if isinstance(error, engine_errors.CheckpointMismatchError):
        extra = {
            "missing": error.missing,
            "unexpected": error.unexpected,
            "mis_shaped": error.mis_shaped,
            "suggested_key_map": error.suggested_key_map,
        }
    elif isinstance(error, service_errors.TooManyQueuedJobsError):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, service_errors.UnauthorizedError):
        headers.update(UNAUTHORIZED_HEADERS)
    return problem_response(status, error.message, type_slug=slug, headers=headers, extra=extra)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


JSON_BODY_HINT = "send a JSON object with Content-Type: application/json (its fields are in /docs)"


def _body_problem(item: Any) -> str | None:
    """A sentence for a body that is not a JSON object at all, where the field-level message
    ('field 0 is invalid') would point at nothing the caller wrote."""
    if item.get("type") == "json_invalid":
        reason = (item.get("ctx") or {}).get("error", "JSON decode error")
        return f"The request body is not valid JSON ({reason}); {JSON_BODY_HINT}."
    if tuple(item.get("loc", ())) == ("body",) and item.get("type") in (
        "model_attributes_type",
        "dict_type",
        "missing",
    ):
        return f"The request body must be a JSON object; {JSON_BODY_HINT}."
    return None


def validation_response(error: RequestValidationError) -> JSONResponse:
    details = error.errors()
    listed = [{"loc": [str(part) for part in item["loc"]], "msg": item["msg"]} for item in details]
    if details:
        first = details[0]
        sentence = _body_problem(first) or (
            f"The request field '{_location(first['loc'])}' is invalid: {first['msg']}."
        )
        if len(details) > 1:
            sentence += f" ({len(details) - 1} more problem(s) are listed in 'errors'.)"
    else:
        sentence = "The request is invalid."
    return problem_response(422, sentence, type_slug="validation", extra={"errors": listed})


def install_problem_handlers(app: FastAPI) -> None:
    """Register the mappings above on ``app``."""

    async def on_problem(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ProblemError)
        return problem_response(
            error.status,
            error.detail,
            type_slug=error.type_slug,
            headers=error.headers,
            extra=error.extra,
        )

    async def on_user_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, engine_errors.LLFCError | service_errors.ServiceError)
        return user_error_response(error)

    async def on_too_large(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, UploadTooLargeError)
        return problem_response(
            413,
            f"The upload is larger than the limit of {error.max_bytes:,} bytes "
            "(LLFC_MAX_UPLOAD_BYTES).",
            type_slug="too-large",
            headers={"Connection": "close"},
        )

    async def on_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return validation_response(error)

    async def on_http(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        detail = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code)
        if error.status_code == 400 and detail == "There was an error parsing the body":
            detail = f"The request body could not be read as UTF-8 JSON; {JSON_BODY_HINT}."
        elif error.status_code == 404 and detail == "Not Found":
            detail = "No such endpoint; see /docs for the API."
        elif error.status_code == 405 and detail == "Method Not Allowed":
            detail = "This endpoint does not accept that method; see /docs for the API."
        headers = dict(error.headers) if error.headers else None
        return problem_response(error.status_code, str(detail), headers=headers)

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "The service failed unexpectedly; the operators can find the details in its logs.",
            type_slug="internal",
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(engine_errors.LLFCError, on_user_error)
    app.add_exception_handler(service_errors.ServiceError, on_user_error)
    app.add_exception_handler(UploadTooLargeError, on_too_large)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
