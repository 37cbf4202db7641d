"""The zkv clients: ``Client`` (blocking, a MutableMapping) and ``AsyncClient`` (asyncio),
two faces of one sans-IO ``ClientCore``; ``pipeline()`` on either batches operations."""

from zkv.client._async import AsyncClient
from zkv.client._pipeline import AsyncPipeline, Pipeline
from zkv.client._sync import Client

__all__ = ["AsyncClient", "AsyncPipeline", "Client", "Pipeline"]
