"""The process commands: ``up``, ``broker``, ``node``, ``http``, and ``check``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import zmq

from zkv import protocol
from zkv.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    _fail,
    _UsageError,
    config_path,
)
from zkv.config import ClusterConfig, load_config
from zkv.errors import (
    ConfigError,
    FolderLocked,
    StorageCorrupted,
)

log = logging.getLogger(__name__)


def _server_config(path: Path) -> ClusterConfig:
    """The config a server process runs from, refused if it is reachable without keys.

    Without a ``security`` section zkv's links are neither encrypted nor authenticated, so
    an endpoint another machine could reach is refused, unless the file says
    ``allow_insecure_remote: true``: then each start warns, once per endpoint. With one,
    every ZeroMQ link runs CURVE and only the HTTP gateway's address counts, unless it
    serves HTTPS (``http.tls``) and asks for bearer tokens (``http.tokens``).
    """
    config = load_config(path)
    exposed = config.exposed_endpoints()
    if exposed and not config.allow_insecure_remote:
        where, endpoint = exposed[0]
        if config.security is None:
            how = (
                "add a security section (see config/secure.yaml) and create its keys with "
                f"`zkv keygen --config {path}`"
            )
        else:
            raise ConfigError(
                f"{path}: {where} is {endpoint}, not a loopback address, and the gateway "
                "would serve it without TLS or without bearer tokens: set http.tls (its "
                "certificate and key files) and http.tokens (`zkv token --name NAME --role "
                "read` makes one), or listen on 127.0.0.1 (or ::1), or put "
                "`allow_insecure_remote: true` at the top of the file to run on a trusted "
                "network"
            )
        raise ConfigError(
            f"{path}: {where} is {endpoint}, not a loopback address, and nothing on it is "
            f"encrypted or authenticated: bind to 127.0.0.1 (or ::1), or {how}, or put "
            "`allow_insecure_remote: true` at the top of the file to run on a trusted network"
        )
    for where, endpoint in exposed:
        log.warning(
            "%s is %s, off loopback, without encryption or authentication "
            "(allow_insecure_remote: true): keep this network trusted",
            where,
            endpoint,
        )
    return config


def _up(args: argparse.Namespace) -> int:
    from zkv.launcher import Launcher
    from zkv.runtime import configure_logging

    configure_logging("up", args.log_level)
    path = config_path(args.config)
    return Launcher(_server_config(path), path, args.log_level, args.foreground_logs).run()


def _broker(args: argparse.Namespace) -> int:
    from zkv.broker.server import Broker
    from zkv.runtime import configure_logging, on_reload_signal, on_stop_signals

    configure_logging("broker", args.log_level)
    broker = Broker(
        _server_config(config_path(args.config)), name=args.name, ready_file=args.ready_file
    )
    on_stop_signals(broker.stop)
    on_reload_signal(broker.request_reload)
    return _serve(broker.run, "broker")


def _node(args: argparse.Namespace) -> int:
    from zkv.node.server import Node
    from zkv.runtime import configure_logging, on_reload_signal, on_stop_signals

    configure_logging(args.name, args.log_level)
    node = Node(_server_config(config_path(args.config)), args.name, ready_file=args.ready_file)
    on_stop_signals(node.stop)
    on_reload_signal(node.request_reload)
    return _serve(node.run, f"node {args.name}")


def _http(args: argparse.Namespace) -> int:
    """``zkv http``: the gateway, over HTTPS with ``http.tls``, asking for ``http.tokens``.

    SIGHUP reads the config file again: its tokens replace the old ones and the TLS
    certificate chain is loaded again for new connections (open ones stay); a file that
    cannot be used is logged and the old settings stay.
    """
    import asyncio
    import contextlib
    import signal

    from zkv.http import serve
    from zkv.http.auth import Tokens, reload_chain, server_context
    from zkv.runtime import configure_logging, write_ready_file
    from zkv.security import CurveKeys

    configure_logging("http", args.log_level)
    path = config_path(args.config)
    config = _server_config(path)
    host = config.http.host
    # a secured cluster: the gateway talks to the broker as client http.client
    curve = None if config.security is None else CurveKeys.for_client(config, config.http.client)
    context = None
    if config.http.tls is not None:
        try:
            context = server_context(config.http.tls)
        except ConfigError as exc:  # one line, exit 2
            raise ConfigError(f"{path}: {exc}") from exc
    tokens = Tokens(config.http.tokens)
    scheme = "http" if context is None else "https"

    def ready(port: int) -> None:
        if args.ready_file is not None:
            write_ready_file(
                args.ready_file, {"listen": f"{host}:{port}", "url": f"{scheme}://{host}:{port}"}
            )

    def reload() -> None:
        try:
            new = _server_config(path)
            if context is not None and new.http.tls is not None:
                reload_chain(context, new.http.tls)
        except (ConfigError, OSError) as exc:
            log.error("reload of %s failed, the old settings stay: %s", path, exc)
            return
        tokens.replace(new.http.tokens)
        log.info("reloaded %s: %d tokens", path, len(new.http.tokens))
        if (new.http.tls is None) != (context is None) or new.http.listen != config.http.listen:
            log.warning(
                "http.listen and turning http.tls on or off take effect at the next start; "
                "still serving %s at %s",
                scheme,
                config.http.listen,
            )

    async def main() -> None:
        task = asyncio.ensure_future(
            serve(
                ",".join(b.clients for b in config.broker_list()),
                host,
                config.http.port,
                timeout_s=config.defaults.timeout_s,
                consistency=config.defaults.consistency,
                max_request_bytes=config.limits.max_request_bytes,
                max_keys_per_request=config.limits.max_keys_per_request,
                max_reply_bytes=protocol.max_reply_frame_bytes(config.limits),
                curve=curve,
                ssl_context=context,
                tokens=tokens,
                ready=ready,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGHUP, reload)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as exc:
        print(
            f"zkv: http gateway cannot listen at {config.http.listen}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _serve(run: Callable[[], None], what: str) -> int:
    try:
        run()
    except zmq.ZMQError as exc:
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return 1
    except FolderLocked as exc:  # another process uses the data folder: the operator's to fix
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageCorrupted as exc:
        print(f"zkv: {what} cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"zkv: {what} stopped: storage error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from zkv.storage.lock import folder_holder, lock_folder
    from zkv.storage.recovery import check_directory

    directory = Path(args.data)
    if not directory.is_dir():
        return _fail(f"{directory}: no such folder", EXIT_USAGE)
    if args.repair:
        try:
            lock = lock_folder(directory)  # no node may start (or write) while we cut
        except FolderLocked as exc:
            return _fail(
                f"cannot repair {directory}: it is in use by a live zkv process "
                f"({_pid(exc.pid)}); stop it first",
                EXIT_USAGE,
            )
        with lock:
            ok, lines = check_directory(directory, repair=True)
    else:
        holder = folder_holder(directory)
        if holder is not None:
            print(
                f"zkv: note: a live zkv process ({_pid(holder)}) holds {directory} and may "
                "write to it meanwhile, so this result may be stale",
                file=sys.stderr,
            )
        ok, lines = check_directory(directory)
    for line in lines:
        print(line)
    if ok:
        return EXIT_OK
    if args.repair:
        print(
            f"zkv: {args.data} is still not fit to start from: records are missing that no "
            "cut brings back; restore the missing files, or move the folder aside so the "
            "node starts empty and resyncs from its shard",
            file=sys.stderr,
        )
    else:
        print(
            f"zkv: {args.data} is damaged; `zkv check --data {args.data} --repair` cuts the "
            "log at the first bad record and sets bad snapshots aside (losing what follows)",
            file=sys.stderr,
        )
    return 1


def _pid(pid: int | None) -> str:
    return f"pid {pid}" if pid else "pid unknown"


def _keygen(args: argparse.Namespace) -> int:
    from zkv.security import generate_config_keys, generate_keys

    if args.config is not None:
        if args.out is not None or args.names:
            raise _UsageError(
                "keygen takes either --config FILE (every key the file's security section "
                "names) or --out DIR NAME..., not both"
            )
        pairs = generate_config_keys(load_config(args.config))
    elif args.out is None or not args.names:
        raise _UsageError(
            "keygen needs --config FILE (every key the file's security section names) or "
            "--out DIR NAME..."
        )
    else:
        pairs = generate_keys(args.out, args.names)
    for pair in pairs:
        if pair.created:
            print(f"created {pair.public} and {pair.secret} (mode 0600)")
        else:
            print(f"kept {pair.public} and {pair.secret}: they exist already")
    return EXIT_OK
