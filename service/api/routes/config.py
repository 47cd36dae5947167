"""/v1/config: what a client may know about the service before it has a key."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import SettingsDep
from service.schemas import ServiceConfigPublic

router = APIRouter(prefix="/v1/config", tags=["config"])


@router.get("", response_model=ServiceConfigPublic)
def read_config(settings: SettingsDep) -> ServiceConfigPublic:
    """Whether this service asks for an API key (`auth`); answered without one, so the web
    view offers to set a key only where one is needed."""
    return ServiceConfigPublic(auth=settings.auth)
