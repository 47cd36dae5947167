"""Keyset pagination, newest first: the cursor is the (created_at, id) of the last item shown.

Unlike an offset, a cursor stays correct while rows are added: a page never repeats or skips a
row that existed when the first page was read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Query
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.api.problems import ProblemError
from service.schemas import RESOURCE_ID_PATTERN

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")]
CursorQuery = Annotated[
    str | None, Query(description="The next_cursor of the previous page.", max_length=500)
]


class Paged(Protocol):
    id: Any
    created_at: Any


class OwnedPaged(Paged, Protocol):
    owner_id: Any


RowT = TypeVar("RowT", bound=Paged)
OwnedRowT = TypeVar("OwnedRowT", bound=OwnedPaged)
PublicT = TypeVar("PublicT")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, row_id = json.loads(base64.urlsafe_b64decode(padded))
        created_at = datetime.fromisoformat(created_text)
        if (
            created_at.tzinfo is None
            or not isinstance(row_id, str)
            or not re.fullmatch(RESOURCE_ID_PATTERN, row_id)
        ):
            raise ValueError("bad cursor fields")
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError) as error:
        raise unknown_cursor() from error
    return created_at, row_id


def unknown_cursor() -> ProblemError:
    """The 422 for a cursor this service did not issue."""
    return ProblemError(
        422,
        "The cursor is not one this service issued; pass the next_cursor of a previous page.",
        type_slug="validation",
    )


def paginate(
    session: Session,
    statement: Select[RowT],
    created_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[str],
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[RowT], str | None]:
    """One page of ``statement`` (newest first) and the cursor of the next, None at the end."""
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        statement = statement.where(
            or_(
                created_column < created_at,
                and_(created_column == created_at, id_column < row_id),
            )
        )
    statement = statement.order_by(created_column.desc(), id_column.desc()).limit(limit + 1)
    rows = list(session.scalars(statement))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(last.created_at, last.id)


def owned_page(
    session: Session,
    model: type[OwnedRowT],
    owner_id: str,
    limit: int,
    cursor: str | None,
    public: Callable[[OwnedRowT], PublicT],
) -> tuple[list[PublicT], str | None]:
    """One page of the owner's rows of ``model`` (newest first) as ``public`` describes them, and
    the cursor of the next page, None at the end."""
    statement = select(model).where(model.owner_id == owner_id)
    rows, next_cursor = paginate(session, statement, model.created_at, model.id, limit, cursor)
    return [public(row) for row in rows], next_cursor
