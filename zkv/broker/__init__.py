"""The broker process: routes client requests to the shard that owns each key."""
