"""``zkv watch [PREFIX] [--cursor C]``: a change feed, one JSON line per event.

Each line is the JSON object the HTTP gateway sends as an SSE event's data
(``zkv.http.codec.event_json``): ``kind``, ``key``, ``value``, ``expires_at``, ``shard``,
``seq``, ``epoch`` and ``cursor`` (a ``resync`` has ``shard``, ``reason``, ``snapshot`` and
``cursor``). Pass the last line's ``cursor`` to ``--cursor`` to go on where it stopped.
"""

from __future__ import annotations

import argparse
import json

from zkv.cli._common import EXIT_OK, _connect, _UsageError

__all__ = ["_watch"]


def _watch(args: argparse.Namespace) -> int:
    from zkv.http.codec import event_json

    if args.count is not None and args.count < 1:
        raise _UsageError("--count must be 1 or more")
    if args.wait is not None and not 0 < args.wait <= 60:
        raise _UsageError("--wait must be more than 0 and at most 60 seconds")
    kv = _connect(args)
    feed = kv.watch(
        args.prefix,
        args.cursor,
        values=not args.no_values,
        snapshot=args.snapshot,
        wait=args.wait or 5.0,
    )
    for shown, event in enumerate(feed, 1):
        print(json.dumps(event_json(event), ensure_ascii=False, allow_nan=False), flush=True)
        if args.count is not None and shown >= args.count:
            break
    return EXIT_OK
