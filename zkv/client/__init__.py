"""The zkv clients: ``Client`` (blocking, a MutableMapping) over the sans-IO ``ClientCore``."""

from zkv.client._sync import Client

__all__ = ["Client"]
