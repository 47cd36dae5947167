"""JSON request bodies read by the route itself, after its key check.

FastAPI reads a declared body parameter before it runs any dependency, so a request without a
key could still make the API read and parse a body. Routes that take JSON instead depend on
:func:`json_body`, whose own dependency on the caller's key runs first; the body is then read
under the size cap (``service/api/body_limit.py``), parsed by the bounded parser
(``service/json_input.py``) and validated by the pydantic model. ``json_body_openapi`` keeps the
OpenAPI document describing the body as if it were a declared parameter.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.api.deps import CurrentOwner
from service.api.problems import JSON_BODY_HINT, ProblemError
from service.json_input import JsonInputError, parse_json

ModelT = TypeVar("ModelT", bound=BaseModel)


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a required ``application/json`` body of ``model``.

    The schema is inlined whole: ``openapi_extra`` is merged into the operation as it is, so a
    ``$ref`` into the model's own ``$defs`` would point nowhere in the OpenAPI document.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    inlined = _inline_references(schema, definitions)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inlined}}}}


def _inline_references(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/Name"}`` replaced by that definition."""
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _inline_references(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _inline_references(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_references(item, definitions) for item in node]
    return node


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def read_json_model(request: Request, model: type[ModelT]) -> ModelT:
    """The request body as ``model``: 415 for a declared non-JSON type (before reading), 400
    for bytes that are not UTF-8, 422 for anything that is not a valid JSON object of it.

    A body without Content-Type is read as JSON, as FastAPI's own body parameters do.
    """
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json_media_type(content_type):
        raise ProblemError(
            415,
            f"The request body is {content_type.split(';', 1)[0]!r}, not JSON; {JSON_BODY_HINT}.",
            type_slug="unsupported-media-type",
        )
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProblemError(
            400,
            f"The request body could not be read as UTF-8 JSON; {JSON_BODY_HINT}.",
            type_slug="unreadable-body",
        ) from error
    if not text.strip():
        raise _not_an_object()
    try:
        parsed = parse_json(text)
    except JsonInputError as error:
        raise ProblemError(
            422, f"The request body {error}; {JSON_BODY_HINT}.", type_slug="validation"
        ) from error
    if not isinstance(parsed, dict):
        raise _not_an_object()
    try:
        return model.model_validate(parsed)
    except ValidationError as error:
        # The same 422 a declared body parameter gets, with locations under 'body'.
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        ) from error


def _not_an_object() -> ProblemError:
    return ProblemError(
        422, f"The request body must be a JSON object; {JSON_BODY_HINT}.", type_slug="validation"
    )


def json_body(model: type[ModelT]) -> Callable[[Request, Any], Awaitable[ModelT]]:
    """A dependency giving the body as ``model``, read only once the caller's key is valid."""

    async def dependency(request: Request, _owner: CurrentOwner) -> ModelT:
        return await read_json_model(request, model)

    return dependency
