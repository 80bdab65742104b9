"""``python -m tether.daemon``: run the daemon until SIGTERM or autostop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from tether.daemon import eventloop
from tether.daemon.auth import ROOTS_ENV, is_loopback, read_token_file
from tether.daemon.protocol import sweep_stale_shm
from tether.daemon.server import Daemon, make_app
from tether.daemon.store import write_atomic
from tether.daemon.tls import server_context
from tether.errors import ConfigError
from tether.home import USER_UMASK_ENV, private_dir
from tether.logging import configure_logging
from tether.protocol.serving import IDLE_TIMEOUT, Runner
from tether.protocol.shm import keep_freed_memory
from tether.specs import check_memory_limit, parse_bytes

log = structlog.get_logger("tether.daemon")

DAEMON_MALLOC_KEEP = 256 * 1024 * 1024
"""keep_freed_memory's limit for the daemon: it keeps at most a quarter (64 MiB) of freed heap for reuse."""


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tether.daemon", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--token-file", type=Path, help="file holding the bearer token or sha256:<hex> (kept hashed)")
    ap.add_argument("--access-file", type=Path, help="JSON grants: per-principal token hashes and service levels")
    ap.add_argument("--allowed-roots", type=Path, nargs="+", help="deploy only code under these directories")
    ap.add_argument("--tls-cert", type=Path)
    ap.add_argument("--tls-key", type=Path)
    ap.add_argument("--autostop-mins", type=float)
    ap.add_argument("--memory-limit", help="memory limit of every worker, e.g. 256MB")
    ap.add_argument("--max-body", default="2GB", help="largest request body")
    ap.add_argument("--unix-socket", type=Path, help="also serve on this unix socket (same-host clients)")
    ap.add_argument("--ready-file", type=Path, help="written with {port, pid} once serving")
    ap.add_argument("--max-connections", type=int, help="connections held at once (default: from the open-file "
                                                        "limit, at most 4096; $TETHER_MAX_CONNECTIONS)")
    ap.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT,
                    help="seconds a connection may take to send a request head, also between requests")
    args = ap.parse_args(argv)
    try:
        args.memory_limit = check_memory_limit(parse_bytes(args.memory_limit))
    except (ValueError, ConfigError) as exc:
        ap.error(f"--memory-limit: {exc}")
    return args


async def serve(args: argparse.Namespace) -> None:
    token_hash = read_token_file(args.token_file) if args.token_file else None
    if token_hash is None and not is_loopback(args.host):
        raise SystemExit(f"refusing to bind {args.host} without auth: pass --token-file (or bind 127.0.0.1)")
    daemon = Daemon(args.state_dir, token_hash=token_hash, memory_limit=args.memory_limit,
                    autostop_mins=args.autostop_mins, max_body=parse_bytes(args.max_body) or 2 * 1024**3,
                    access_file=args.access_file, allowed_roots=args.allowed_roots)
    daemon.host = args.host
    if token_hash is None:
        log.warning("auth_disabled", host=args.host, detail="no --token-file: any local program can run code "
                    "as this user through this daemon; requests from web pages (foreign Host or Origin) are refused")
    sweep_stale_shm()  # only now: the call journal adopted the result files of the calls it restored
    keep_freed_memory(DAEMON_MALLOC_KEEP)  # big TCP bodies arrive in 256 KB pieces: reuse their pages
    ssl_ctx = None
    if args.tls_cert:
        ssl_ctx = server_context(args.tls_cert, args.tls_key or args.tls_cert)
    runner = Runner(make_app(daemon), access_log=None, handle_signals=False, read_bufsize=4 * 1024 * 1024,
                    max_connections=args.max_connections, idle_timeout=args.idle_timeout)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_ctx, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.unix_socket:
        args.unix_socket.unlink(missing_ok=True)
        await web.UnixSite(runner, str(args.unix_socket), ssl_context=ssl_ctx).start()
        args.unix_socket.chmod(0o600)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop_event.set)
    # services restored lazily per env; start the default env's worker now when it has services
    if daemon.manifest.names():
        for env in {s.env.name for s in daemon.manifest.services.values()} | set(daemon.manifest.objects.values()):
            asyncio.ensure_future(daemon.worker_for(next(n for n in daemon.manifest.names()
                                                         if daemon.manifest.env_of(n) == env)))
    if args.ready_file:
        write_atomic(args.ready_file, json.dumps({"port": port, "pid": os.getpid(), "host": args.host}).encode(),
                     what="the ready file")
    print(f"tether daemon serving on {args.host}:{port}", file=sys.stderr, flush=True)
    watcher = asyncio.ensure_future(daemon.idle_watch())
    await daemon.stop_event.wait()
    watcher.cancel()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    # everything the daemon creates (state dir, manifest, objects, journal, sockets, ready file) is its user's
    # alone from creation; workers put the caller's umask back for the code they run (see worker.main)
    os.environ[USER_UMASK_ENV] = oct(os.umask(0o077))
    if args.allowed_roots:  # workers check what each import reached (see auth.check_imported)
        os.environ[ROOTS_ENV] = os.pathsep.join(str(r.resolve()) for r in args.allowed_roots)
    configure_logging()
    private_dir(args.state_dir)
    eventloop.run(serve(args))


if __name__ == "__main__":
    main()
