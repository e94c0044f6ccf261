"""Command line: serve the API, mint a usersig, check a config.

python -m service --host HOST --port PORT --config FILE   (serve is the default)
python -m service usersig --config FILE [--sdkappid N] [--identifier ID] [--expire SECONDS]
python -m service check-config --config FILE [--connect]
python -m service curl-example --config FILE [--port PORT] [--require-free-port]
python -m service export --config FILE [--sdkappid N] > groups.jsonl
python -m service import --config FILE [--input FILE] [--dry-run] [--on-conflict skip|overwrite|fail]
python -m service migrate --from URL --sdkappid N --identifier ADMIN --secret-key-env NAME [--to CONFIG]
python -m service upgrade --config FILE [--dry-run]
python -m service downgrade --config FILE [--dry-run]
python -m service --version
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

from service.api.auth import mint_usersig
from service.config import App, ConfigError, Settings, load_config
from service.moving.exits import EXIT_CODES_HELP, MAX_LINE_BYTES
from service.ops.build import describe
from service.ops.lifecycle import exit_zero_after_graceful_shutdown
from service.ops.logs import setup_logging
from service.storage.store import EMBEDDED_URL

if TYPE_CHECKING:
    from service.app import CommandFirst
    from service.storage.store import Store

CONFIG_ENV: Final = "SERVICE_CONFIG"
# --metrics-port reaches uvicorn's worker processes through these, as the config path does.
METRICS_HOST_ENV: Final = "SERVICE_METRICS_HOST"
METRICS_PORT_ENV: Final = "SERVICE_METRICS_PORT"
SUBCOMMANDS: Final = (
    "serve",
    "usersig",
    "check-config",
    "curl-example",
    "export",
    "import",
    "migrate",
    "upgrade",
    "downgrade",
)
# Set by `serve` when Redis did not answer its start-up format check: each worker then
# checks the storage format itself once Redis answers, and exits if it must not serve.
CHECK_FORMAT_ENV: Final = "SERVICE_CHECK_FORMAT_IN_WORKER"


def app_from_env() -> CommandFirst:
    """uvicorn's factory: each worker process loads the config named in the environment."""
    from service.app import create_app
    from service.http.protocol import HttpLimits, LimitedHttpToolsProtocol

    settings = load_config(os.environ[CONFIG_ENV])
    setup_logging(settings.config.log_level, settings.config.log_format)
    config = settings.config
    LimitedHttpToolsProtocol.configure(
        HttpLimits(
            max_header_bytes=config.max_header_bytes,
            max_url_bytes=config.max_url_bytes,
            header_timeout=config.header_timeout,
            body_timeout=config.body_timeout,
            keepalive_timeout=config.keepalive_timeout,
            send_timeout=config.send_timeout,
            max_connections=config.max_connections,
            max_pipelined=config.max_pipelined,
        )
    )
    check_format = os.environ.get(CHECK_FORMAT_ENV) == "1"
    metrics_port = os.environ.get(METRICS_PORT_ENV)
    if metrics_port:
        return create_app(
            settings,
            metrics_address=(os.environ[METRICS_HOST_ENV], int(metrics_port)),
            check_storage_format=check_format,
        )
    return create_app(settings, check_storage_format=check_format)


def _positive_seconds(text: str) -> int:
    """--expire: a usersig that is expired at birth is never what was meant."""
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{seconds} s: a usersig must be valid for at least 1 s")
    return seconds


def _check_tls_files(cert: str, key: str) -> None:
    """uvicorn would end in a traceback on a missing or wrong file; say which and why."""
    import ssl

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its key ({exc.reason})"
        ) from None


def _pick_app(settings: Settings, sdkappid: int | None) -> App:
    if sdkappid is None:
        return next(iter(settings.apps.values()))
    if sdkappid not in settings.apps:
        raise ConfigError(f"sdkappid {sdkappid} is not in the config")
    return settings.apps[sdkappid]


def _warn_if_files_run_out(max_connections: int) -> None:
    """Past the open-file limit accept() fails and new clients get a reset, which no
    metric counts; max_connections refuses them first only when it is the lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = 64  # the listening socket, Redis, logs, metrics files
    if soft != resource.RLIM_INFINITY and max_connections + spare > soft:
        logging.getLogger("service").warning(
            "max_connections = %d is above what the open-file limit (ulimit -n %d) allows a worker; "
            "raise the limit or lower max_connections",
            max_connections,
            soft,
        )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if settings.redis_url == EMBEDDED_URL and args.workers > 1:
        raise ConfigError(
            "the embedded store (memory://) serves one process only; use --workers 1 or a Redis"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        _check_tls_files(args.tls_cert, args.tls_key)
    if args.metrics_port is not None and args.metrics_port == args.port:
        raise ConfigError("--metrics-port must differ from --port")
    setup_logging(settings.config.log_level, settings.config.log_format)
    logging.getLogger("service").info("%s starting", describe())
    _warn_if_files_run_out(settings.config.max_connections)
    refusal = _check_format_before_serving(settings)
    if refusal is not None:
        return refusal
    os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    if args.metrics_port is not None:
        os.environ[METRICS_HOST_ENV] = args.host
        os.environ[METRICS_PORT_ENV] = str(args.metrics_port)
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Workers share their metrics through files here; set before they start.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="group-counter-metrics-")
    exit_zero_after_graceful_shutdown()
    uvicorn.run(
        "service.__main__:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        # uvicorn's httptools protocol with the edge limits of the config (service/http/protocol.py).
        http="service.http.protocol:LimitedHttpToolsProtocol",
        # Nothing here speaks WebSocket; with a WebSocket library installed, uvicorn would
        # otherwise hand any path an upgraded connection.
        ws="none",
        access_log=False,
        # Nothing here reads the client address, so X-Forwarded-* parsing is per-call waste.
        proxy_headers=False,
        log_config=None,
        timeout_graceful_shutdown=args.graceful_timeout,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    return 0


T = TypeVar("T")


def _on_store(
    settings: Settings, work: Callable[[Store], Awaitable[T]], *, timeout: float | None = None
) -> T:
    """`work` on a store of its own, opened and closed around it, in an event loop of its own."""
    import asyncio

    from service.storage.store import open_store

    async def run() -> T:
        store = open_store(
            settings.redis_url, timeout=timeout or settings.config.redis_timeout, max_pending=64
        )
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _check_format_before_serving(settings: Settings) -> int | None:
    """The exit code when the data in Redis is in a format this release must not serve.
    A Redis that does not answer now is no reason to stop: the workers check once it does."""
    import asyncio

    from service.errors import ServiceError
    from service.storage.format import EXIT_WRONG_FORMAT, StorageFormatError, check_format

    if settings.redis_url == EMBEDDED_URL:
        return None  # new and empty at every start

    async def check(store: Store) -> int:
        return await asyncio.wait_for(
            check_format(store), timeout=max(5.0, 3 * settings.config.redis_timeout)
        )

    try:
        _on_store(settings, check)
    except StorageFormatError as exc:
        logging.getLogger("service").critical("refusing to serve: %s", exc)
        return EXIT_WRONG_FORMAT
    except (ServiceError, TimeoutError) as exc:
        logging.getLogger("service").warning(
            "redis did not answer the storage format check (%s); each worker checks once it does", exc
        )
        os.environ[CHECK_FORMAT_ENV] = "1"
    return None


def _upgrade(settings: Settings, dry_run: bool, *, downgrade: bool = False) -> int:

    from service.errors import ServiceError
    from service.storage.downgrade import Downgrade
    from service.storage.format import CURRENT_FORMAT, StorageFormatError, read_format
    from service.storage.upgrade import Upgrade, UpgradeReport, describe_release

    what = "downgrade" if downgrade else "upgrade"
    if settings.redis_url == EMBEDDED_URL:
        raise ConfigError(
            f"redis_url is memory://: the embedded store is new at every start, there is nothing to {what}"
        )
    walk = Downgrade if downgrade else Upgrade

    def progress(report: UpgradeReport) -> None:
        print(
            f"{what}: {report.keys_seen} keys scanned, {report.renamed} groups renamed, "
            f"{report.records_converted} records converted, {len(report.conflicts)} conflicts",
            file=sys.stderr,
            flush=True,
        )

    async def run(store: Store) -> tuple[int | None, UpgradeReport]:
        held = await read_format(store)
        return held, await walk(store, dry_run=dry_run, progress=progress).run()

    try:
        held, report = _on_store(settings, run, timeout=max(settings.config.redis_timeout, 5.0))
    except StorageFormatError as exc:
        print(f"{what} refused: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"{what} stopped: {exc.info}; rerun it: it goes on where it stopped", file=sys.stderr)
        return 1
    print(f"found: {describe_release(held)}")
    if (held == CURRENT_FORMAT and not downgrade) or (held is None and downgrade):
        print(f"the data is in storage format {1 if downgrade else CURRENT_FORMAT} already: nothing to do")
        return 0
    print(report.summary(dry_run, downgrade=downgrade))
    if report.conflicts:
        print("the format marker was not changed: resolve the conflicts above and rerun", file=sys.stderr)
        return 1
    if dry_run:
        print("dry run: nothing was written")
        return 0
    if downgrade:
        print("done: the data is in storage format 1, which release 0.1.0 serves (marker removed)")
    else:
        print(f"done: the data is in storage format {CURRENT_FORMAT} (marker written)")
    return 0


def _usersig(args: argparse.Namespace, settings: Settings) -> int:
    app = _pick_app(settings, args.sdkappid)
    identifier = args.identifier or sorted(app.admins)[0]
    print(mint_usersig(app.sdkappid, app.secret_key, identifier, expire=args.expire))
    return 0


def _port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as uvicorn sets it, so a port in TIME_WAIT counts as free, as it is for uvicorn.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _curl_example(args: argparse.Namespace, settings: Settings) -> int:
    if args.require_free_port and not _port_is_free(args.host, args.port):
        # Printed lines would point at whatever already listens there.
        print(
            f"{args.host}:{args.port} is already in use: stop what listens there or pick another port "
            "(make run PORT=8081)",
            file=sys.stderr,
        )
        return 1
    app = _pick_app(settings, None)
    identifier = sorted(app.admins)[0]
    usersig = mint_usersig(app.sdkappid, app.secret_key, identifier, expire=86400)
    base = f"http://{args.host}:{args.port}/v4/group_open_http_svc"
    query = f"sdkappid={app.sdkappid}&identifier={identifier}&usersig={usersig}&random=1&contenttype=json"
    if settings.config.demo:
        demo = f"http://{args.host}:{args.port}/demo"
        print(f"Live demo (press Create it once, then open it twice and press Like): {demo}")
    print("Ready-to-paste (the usersig is valid for 24 h):")
    # A group of their own: the demo page uses "demo" and the README's walkthrough
    # "walkthrough", so pasting these after either (or before) collides with neither.
    if not app.implicit_groups:
        body = '{"Type":"Public","Name":"quickstart","GroupId":"quickstart"}'
        print(f"curl -s '{base}/create_group?{query}' -d '{body}'")
    print(
        f"curl -s '{base}/update_group_counter?{query}' "
        '-d \'{"GroupId":"quickstart","Mode":"Increase","GroupCounter":[{"Key":"like","Value":1}]}\''
    )
    return 0


def _check_connection(settings: Settings) -> int:
    """check-config --connect: one real script round trip, as the readiness check runs it."""
    import asyncio

    from service.errors import ServiceError
    from service.storage.store import open_store
    from service.storage.urls import redacted

    where = redacted(settings.redis_url)
    if settings.redis_url == EMBEDDED_URL:
        print("redis: the embedded store (memory://), nothing to connect to")
        return 0

    async def probe() -> float:
        store = open_store(
            settings.redis_url,
            timeout=settings.config.redis_timeout,
            max_pending=settings.config.redis_max_pending,
        )
        started = time.perf_counter()
        try:
            await store.probe()
        finally:
            await store.close()
        return time.perf_counter() - started

    try:
        seconds = asyncio.run(probe())
    except ServiceError as exc:
        print(f"redis: {where} did not answer: {exc.info}", file=sys.stderr)
        return 1
    print(f"redis: {where} ran a script in {seconds * 1000:.1f} ms")
    return _check_storage_format(settings)


def _check_storage_format(settings: Settings) -> int:
    """check-config --connect: whether this release may serve the data, without marking it."""

    from service.errors import ServiceError
    from service.storage.format import (
        CURRENT_FORMAT,
        EXIT_WRONG_FORMAT,
        StorageFormatError,
        holds_any_group,
        read_format,
    )

    async def inspect(store: Store) -> tuple[int | None, bool]:
        held = await read_format(store)
        return held, (held is None and await holds_any_group(store))

    try:
        held, legacy = _on_store(settings, inspect)
    except ServiceError as exc:
        print(f"storage: could not read the format marker: {exc.info}", file=sys.stderr)
        return 1
    except StorageFormatError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return EXIT_WRONG_FORMAT
    if held == CURRENT_FORMAT:
        print(f"storage: format {CURRENT_FORMAT}, the one this release serves")
        return 0
    if held is None and not legacy:
        print(f"storage: no groups yet; the service marks it format {CURRENT_FORMAT} when it starts")
        return 0
    what = "groups of release 0.1.0 (format 1, no marker)" if held is None else f"storage format {held}"
    print(
        f"storage: this Redis holds {what}; this release serves format {CURRENT_FORMAT}: "
        + (
            "run `python -m service upgrade --config FILE`"
            if held is None or held < CURRENT_FORMAT
            else "run the newer release that wrote it"
        ),
        file=sys.stderr,
    )
    return EXIT_WRONG_FORMAT


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--version"]:
        print(describe())
        return 0
    if not args_in or args_in[0] not in (*SUBCOMMANDS, "-h", "--help"):
        args_in.insert(0, "serve")

    parser = argparse.ArgumentParser(prog="python -m service")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    serve = sub.add_parser("serve", help="serve the API (the default)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--graceful-timeout", type=float, default=10.0, help="seconds to finish in-flight calls on SIGTERM"
    )
    serve.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port (plain HTTP) instead of the API port"
    )
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    usersig = sub.add_parser("usersig", help="mint a usersig for a configured app")
    usersig.add_argument("--sdkappid", type=int, help="default: the first app in the config")
    usersig.add_argument("--identifier", help="default: the app's first admin (sorted)")
    usersig.add_argument(
        "--expire", type=_positive_seconds, default=180 * 86400, help="seconds, above 0 (default 180 days)"
    )
    check = sub.add_parser("check-config", help="load the config and report problems")
    check.add_argument(
        "--connect", action="store_true", help="also run a script on the configured Redis (REDIS_URL wins)"
    )
    curl = sub.add_parser("curl-example", help="print ready-to-paste curl lines")
    curl.add_argument("--host", default="127.0.0.1")
    curl.add_argument("--port", type=int, default=8080)
    curl.add_argument(
        "--require-free-port", action="store_true", help="print nothing and exit 1 if HOST:PORT is taken"
    )
    export = sub.add_parser("export", help="every group as JSON Lines on stdout")
    export.add_argument("--sdkappid", type=int, help="one app only (default: every app of the config)")
    load = sub.add_parser(
        "import",
        help="create groups and set their counters from JSON Lines",
        epilog=f"a line over {MAX_LINE_BYTES} bytes is rejected unread\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("--input", default="-", help="the JSON Lines file (default: stdin)")
    load.add_argument("--dry-run", action="store_true", help="check every line and report; write nothing")
    conflicts = ("skip", "overwrite", "fail")
    load.add_argument(
        "--on-conflict",
        choices=conflicts,
        default="fail",
        help="when a different group is there (default fail)",
    )
    move = sub.add_parser(
        "migrate",
        help="pull an app's groups off a platform-compatible API",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    move.add_argument(
        "--from", dest="source", required=True, help="the API's base URL, e.g. https://console.tim.qq.com"
    )
    move.add_argument("--sdkappid", type=int, required=True)
    move.add_argument("--identifier", required=True, help="an admin of the app on the source")
    move.add_argument(
        "--secret-key-env", required=True, help="environment variable holding the app's secret key"
    )
    move.add_argument("--to", help="a config to import into when done (default: only write --out)")
    move.add_argument(
        "--out", help="the JSON Lines file (default migrate-<sdkappid>.jsonl); its checkpoint is next to it"
    )
    move.add_argument("--on-conflict", choices=conflicts, default="fail", help="for the import into --to")
    move.add_argument("--rate", type=float, default=200.0, help="calls per second at most (default 200)")
    move.add_argument(
        "--list-rate", type=float, default=1.0, help="get_appid_group_list calls per second (default 1)"
    )
    move.add_argument(
        "--retries", type=int, default=8, help="retries of one call before stopping (default 8)"
    )
    move.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (doubles)")
    move.add_argument(
        "--call-timeout",
        type=float,
        default=30.0,
        help="seconds for one call, the whole reply included, however slowly it comes (default 30)",
    )
    upgrade = sub.add_parser(
        "upgrade", help="bring the data in Redis to this release's storage format (UPGRADING.md)"
    )
    upgrade.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    downgrade = sub.add_parser(
        "downgrade", help="take the data in Redis back to release 0.1.0's format, to roll back (UPGRADING.md)"
    )
    downgrade.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    for command in (serve, usersig, curl, sub.choices["check-config"], export, load, upgrade, downgrade):
        command.add_argument("--config", required=True, help="TOML config file")
    args = parser.parse_args(args_in)

    if args.subcommand == "migrate":
        from service.moving.cli import migrate_command

        try:
            return migrate_command(
                args.source,
                args.sdkappid,
                args.identifier,
                args.secret_key_env,
                out=args.out,
                to_config=args.to,
                on_conflict=args.on_conflict,
                rate=args.rate,
                list_rate=args.list_rate,
                retries=args.retries,
                backoff=args.backoff,
                call_timeout=args.call_timeout,
            )
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2

    try:
        settings = load_config(args.config)
        match args.subcommand:
            case "serve":
                return _serve(args, settings)
            case "usersig":
                return _usersig(args, settings)
            case "curl-example":
                return _curl_example(args, settings)
            case "export":
                from service.moving.cli import export_command

                return export_command(settings, args.sdkappid)
            case "import":
                from service.moving.cli import import_command

                return import_command(settings, args.input, args.on_conflict, args.dry_run)
            case "upgrade":
                return _upgrade(settings, args.dry_run)
            case "downgrade":
                return _upgrade(settings, args.dry_run, downgrade=True)
            case _:
                print(
                    f"{args.config}: OK, {len(settings.apps)} app(s), store {settings.redis_url.split('://')[0]}://"
                )
                return _check_connection(settings) if args.connect else 0
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
