"""The shard node process: one event loop owning one storage engine."""
