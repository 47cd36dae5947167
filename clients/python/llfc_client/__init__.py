"""Python client for the LLFC Align HTTP API.

from llfc_client import Client

with Client() as client:  # LLFC_URL / LLFC_API_KEY, or Client(base_url, api_key)
    a = client.upload_checkpoint("a.safetensors", {"name": "mlp", "widths": [64, 32, 10]})
    ...
    job = client.wait(client.submit_job("analyze", a.id, b.id, "builtin:digits").id)
"""

from llfc_client.client import Client
from llfc_client.errors import (
    ApiError,
    ConnectionFailed,
    InvalidIdError,
    JobTimeout,
    LLFCClientError,
)
from llfc_client.models import (
    Artifact,
    Checkpoint,
    Dataset,
    Job,
    JobProgress,
    LayerMetric,
    Page,
    Progress,
)

__all__ = [
    "ApiError",
    "Artifact",
    "Checkpoint",
    "Client",
    "ConnectionFailed",
    "Dataset",
    "InvalidIdError",
    "Job",
    "JobProgress",
    "JobTimeout",
    "LLFCClientError",
    "LayerMetric",
    "Page",
    "Progress",
]
