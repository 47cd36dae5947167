"""The web view: one static page at ``/`` (and ``/jobs/{id}``) whose script reads the JSON API,
and the API docs at ``/docs``.

No build step and nothing from outside: the HTML, JavaScript and CSS in ``service/web`` are
served as they are, and ``/docs`` runs the Swagger UI files vendored in ``service/static``. The
pages hold no data themselves, so they need no key; the web view's script sends the user's key
with every API request. No page has an inline script: the Content-Security-Policy
(``service/api/security_headers.py``) allows scripts from this origin only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFoundError

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
INDEX = WEB_DIR / "index.html"
DOCS = WEB_DIR / "docs.html"
SWAGGER_UI_DIR = Path(__file__).resolve().parents[2] / "static" / "swagger-ui"
"""swagger-ui-dist 5.35.0, vendored (its README.md says from where and how to update it)."""
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
# Revalidate on every load (FileResponse sends an ETag), so a new version shows at once.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html", headers=NO_CACHE)


@router.get("/")
def jobs_page() -> FileResponse:
    """The jobs table."""
    return _page()


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> FileResponse:
    """One job: status, plots and metric tables (the script reads the id from the path)."""
    return _page()


@router.get("/docs")
def docs_page() -> FileResponse:
    """Swagger UI over /openapi.json, from the vendored files."""
    return FileResponse(DOCS, media_type="text/html", headers=NO_CACHE)


def _asset(folder: Path, asset: str, what: str) -> FileResponse:
    path = folder / asset
    if path.suffix not in ASSET_TYPES or path.parent != folder or not path.is_file():
        raise NotFoundError(what, asset)
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=NO_CACHE)


@router.get("/web/{asset}")
def web_asset(asset: str) -> FileResponse:
    """The pages' scripts and style sheet; nothing else from the folder is served."""
    return _asset(WEB_DIR, asset, "web asset")


@router.get("/static/swagger-ui/{asset}")
def swagger_ui_asset(asset: str) -> FileResponse:
    """Swagger UI's script and style sheet for /docs."""
    return _asset(SWAGGER_UI_DIR, asset, "Swagger UI asset")
