"""A tour of the zkv client API.

Start the cluster first (`zkv up`), then run `python examples/basic.py`.
"""

from __future__ import annotations

import sys
import time

import zkv


def main(endpoint: str = "tcp://127.0.0.1:7400") -> None:
    with zkv.Client(endpoint, timeout_s=3.0) as kv:
        kv.put("example:user:1", {"name": "Ada", "langs": ["en", "fr"]})
        print("get:", kv.get("example:user:1"))
        print("missing with default:", kv.get("example:nobody", default="(none)"))

        kv["example:counter"] = 1
        print("cas 1 -> 2:", kv.cas("example:counter", 1, 2), "now", kv["example:counter"])
        print("cas 1 -> 3:", kv.cas("example:counter", 1, 3), "still", kv["example:counter"])

        kv.delete("example:lock")
        kv.create("example:lock", "holder-1", ttl=1.0)
        try:
            kv.create("example:lock", "holder-2")
        except zkv.KeyExists as exc:
            print("create refused:", exc)
        print("lock ttl:", round(kv.ttl("example:lock") or 0, 2), "s")
        time.sleep(1.1)
        print("after expiry:", kv.get("example:lock"))

        # keys with the same {tag} share a shard
        kv.mput({"{example:cart:7}:apples": 3, "{example:cart:7}:pears": 5})
        print("mget:", kv.mget(["{example:cart:7}:apples", "{example:cart:7}:pears", "x"]))
        print("keys:", sorted(kv.keys("{example:")))

        try:
            kv.put("example:big", "x" * 2_000_000)
        except zkv.ValueTooLarge as exc:
            print("refused:", exc)

        for node in kv.cluster_status()["nodes"]:
            print(
                f"node {node['name']}: shard {node['shard']}, {node['keys']} keys, "
                f"{'up' if node['alive'] else 'DOWN'}"
            )


if __name__ == "__main__":
    main(*sys.argv[1:2])
