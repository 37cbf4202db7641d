"""Per-node storage: the in-memory index (engine), and later the log and snapshots."""
