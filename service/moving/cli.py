"""The command lines that move counters: export, import, migrate (README, "Moving counters").

Exit codes: `exits.Exit` (0 done; 1 some lines or groups rejected; 2 could not run, or
not to the end; 3 a conflict stopped an import; 130 interrupted).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from service.config import ConfigError, Settings, load_config
from service.errors import ServiceError
from service.moving.exits import Exit
from service.moving.migrate import MigrationError, Source, migrate
from service.moving.transfer import (
    ImportReport,
    OnConflict,
    Progress,
    bounded_lines,
    export_app,
    import_lines,
)
from service.storage.format import StorageFormatError, check_format
from service.storage.store import EMBEDDED_URL, Store, open_store


def _store(settings: Settings, what: str) -> Store:
    if settings.redis_url == EMBEDDED_URL:
        # The embedded store lives inside the serving process and ends with it: a new
        # process would see an empty one.
        raise ConfigError(
            f"redis_url is memory://, the embedded store inside a serving process: there is nothing "
            f"to {what} from another process. Point redis_url (or REDIS_URL) at a Redis"
        )
    return open_store(settings.redis_url, timeout=max(settings.config.redis_timeout, 5.0))


async def export_apps(store: Store, sdkappids: list[int], out: IO[bytes], err: IO[str]) -> int:
    progress = Progress("groups exported", err)
    total = 0
    try:
        for sdkappid in sdkappids:
            total += await export_app(store, sdkappid, out, progress)
    finally:
        progress.close()
        out.flush()
    return total


def export_command(settings: Settings, sdkappid: int | None) -> int:
    if sdkappid is not None and sdkappid not in settings.apps:
        raise ConfigError(f"sdkappid {sdkappid} is not in the config")
    sdkappids = [sdkappid] if sdkappid is not None else sorted(settings.apps)
    store = _store(settings, "export")

    async def run() -> int:
        try:
            await check_format(store)
            return await export_apps(store, sdkappids, sys.stdout.buffer, sys.stderr)
        finally:
            await store.close()

    try:
        written = asyncio.run(run())
    except ServiceError as exc:
        print(f"export stopped: {exc.info}", file=sys.stderr)
        return Exit.COULD_NOT_RUN
    except StorageFormatError as exc:
        print(f"export could not run: {exc}", file=sys.stderr)
        return Exit.COULD_NOT_RUN
    print(f"exported {written} groups", file=sys.stderr)
    return Exit.DONE


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from bounded_lines(sys.stdin.buffer)
        return
    with open(path, "rb") as handle:
        yield from bounded_lines(handle)


def _readable(path: str) -> str | None:
    """Why the input cannot be read, before anything runs; None when it can."""
    if path == "-":
        return None
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"--input {path}: {exc.strerror or exc}"


async def import_into(
    store: Store, settings: Settings, lines: Iterator[bytes], on_conflict: OnConflict, dry_run: bool
) -> ImportReport:
    # Groups written in this release's format into data of another would be half of each.
    await check_format(store)
    progress = Progress("groups imported", sys.stderr)
    try:
        return await import_lines(
            store,
            settings.apps,
            lines,
            on_conflict=on_conflict,
            dry_run=dry_run,
            on_reject=sys.stderr,
            progress=progress,
        )
    finally:
        progress.close()


def _report(report: ImportReport, dry_run: bool) -> int:
    print(("dry run: " if dry_run else "imported: ") + report.summary(dry_run), file=sys.stderr)
    return report.exit_code()


def import_command(settings: Settings, path: str, on_conflict: OnConflict, dry_run: bool) -> int:
    store = _store(settings, "import")
    unreadable = _readable(path)
    if unreadable is not None:
        print(f"import could not run: {unreadable}", file=sys.stderr)
        return Exit.COULD_NOT_RUN

    async def run() -> ImportReport:
        try:
            return await import_into(store, settings, _lines(path), on_conflict, dry_run)
        finally:
            await store.close()

    return _run_import(run, dry_run)


def _run_import(run: Callable[[], Coroutine[Any, Any, ImportReport]], dry_run: bool) -> int:
    try:
        report = asyncio.run(run())
    except StorageFormatError as exc:
        print(f"import could not run: {exc}", file=sys.stderr)
        return Exit.COULD_NOT_RUN
    except ServiceError as exc:
        print(f"import could not run: {exc.info}", file=sys.stderr)
        return Exit.COULD_NOT_RUN
    return _report(report, dry_run)


def _source_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"--from {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--from {url!r} is not an http:// or https:// URL")
    return url


def migrate_command(
    source_url: str,
    sdkappid: int,
    identifier: str,
    secret_key_env: str,
    *,
    out: str | None,
    to_config: str | None,
    on_conflict: OnConflict,
    rate: float,
    list_rate: float,
    retries: int,
    backoff: float,
    call_timeout: float = 30.0,
) -> int:
    secret_key = os.environ.get(secret_key_env, "")
    if not secret_key:
        raise ConfigError(f"--secret-key-env names {secret_key_env!r}, which is not set or empty")
    if rate <= 0 or list_rate <= 0:
        raise ConfigError("--rate and --list-rate must be above 0")
    if call_timeout <= 0:
        raise ConfigError("--call-timeout must be above 0")
    target = load_config(to_config) if to_config is not None else None
    if target is not None and sdkappid not in target.apps:
        raise ConfigError(f"{to_config}: sdkappid {sdkappid} is not in the config")
    out_path = Path(out or f"migrate-{sdkappid}.jsonl")
    source = Source(
        _source_url(source_url),
        sdkappid,
        identifier,
        secret_key,
        rate=rate,
        list_rate=list_rate,
        retries=retries,
        backoff=backoff,
        timeout=call_timeout,
        log=sys.stderr,
    )
    progress = Progress("groups fetched", sys.stderr)
    try:
        checkpoint = asyncio.run(migrate(source, out_path, progress))
    except MigrationError as exc:
        hint = "rerun the same command to resume" if exc.rerun_helps else "fix them, then rerun to resume"
        print(f"migration stopped: {exc}\n{hint}", file=sys.stderr)
        return Exit.COULD_NOT_RUN
    except KeyboardInterrupt:
        # Everything up to the last checkpoint is on disk; what came after is redone.
        print("\nmigration interrupted; rerun the same command to resume", file=sys.stderr)
        return Exit.INTERRUPTED
    finally:
        progress.close()
    lines = checkpoint.groups_done - checkpoint.vanished - checkpoint.skipped
    print(
        f"migrated: {checkpoint.listed} groups listed, {lines} written to {out_path} "
        f"({checkpoint.vanished} destroyed meanwhile, {checkpoint.skipped} skipped: their replies "
        f"were not the contract's), {source.retried} calls retried",
        file=sys.stderr,
    )
    if checkpoint.total_count is not None and checkpoint.listed < checkpoint.total_count:
        print(
            f"warning: the source counts {checkpoint.total_count} groups but listed {checkpoint.listed} "
            "by type: groups of types it does not filter by, or created meanwhile, are not included",
            file=sys.stderr,
        )
    skipped = Exit.REJECTS if checkpoint.skipped else Exit.DONE
    if target is None:
        return skipped
    store = _store(target, "import")

    async def run() -> ImportReport:
        try:
            return await import_into(store, target, _lines(str(out_path)), on_conflict, dry_run=False)
        finally:
            await store.close()

    return _run_import(run, dry_run=False) or skipped
