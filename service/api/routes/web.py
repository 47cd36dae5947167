"""The web view: one static page at ``/`` (and ``/jobs/{id}``) whose script reads the JSON API.

No build step and nothing from outside: the HTML, JavaScript and CSS in ``service/web`` are
served as they are. The page holds no data itself, so it needs no key; its script sends the
user's key with every API request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.problems import not_found

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
INDEX = WEB_DIR / "index.html"
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


@router.get("/web/{asset}")
def web_asset(asset: str) -> FileResponse:
    """The page's script and style sheet; nothing else from the folder is served."""
    path = WEB_DIR / asset
    if path.suffix not in ASSET_TYPES or path.parent != WEB_DIR or not path.is_file():
        raise not_found("web asset", asset)
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=NO_CACHE)
