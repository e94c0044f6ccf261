"""The TOML config (docs/API.md §7) as typed settings; anything wrong stops the service at start.

Unknown keys, a duplicate sdkappid, a missing secret or a bad group mode each raise
`ConfigError` with a message naming the problem and where it is.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

from service.storage import urls
from service.storage.transports.acks import Ack

GroupMode = Literal["registered", "implicit"]
LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The config cannot run; the message says what to fix."""


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class ClientKey(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A Key end users may change, by at most `min`..`max` per call (the signed change:
    an Increase of v is +v, a Decrease of v is -v). A bare Key name means -1..1."""

    key: str
    min: Annotated[int, msgspec.Meta(ge=INT64_MIN, le=0)] = -1
    max: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] = 1


class AppConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    sdkappid: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    admins: list[str]
    secret_key: str | None = None
    secret_key_env: str | None = None
    # During a key rotation: the key being retired, still accepted until removed.
    previous_secret_key: str | None = None
    previous_secret_key_env: str | None = None
    groups: GroupMode = "registered"
    rate_limit: Annotated[int, msgspec.Meta(ge=0)] = 0
    # End users: any identifier with a valid usersig of the app may read counters and
    # Increase or Decrease the `client_keys` (docs/API.md, "End users"). Off by default.
    end_users: bool = False
    # Each a Key name (changed by -1..1 per call) or {key, min, max}.
    client_keys: list[str | ClientKey] = msgspec.field(default_factory=list)
    # get_appid_group_list calls per second: the platform allows one (docs/API.md §2).
    list_rate_limit: Annotated[int, msgspec.Meta(ge=0)] = 1


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    apps: list[AppConfig]
    # No default: a config that forgets it must not silently keep every counter in memory,
    # lost at each restart. The in-memory store is asked for by name: "memory://".
    redis_url: str | None = None
    redis_timeout: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    redis_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # When an update is acknowledged (README, "Durability"): "primary", once the master
    # applied it (a failover in the next moment may lose it); "replicas", once every
    # replica the master reports holds it too (a WAIT per batch), at most `ack_timeout`
    # later, else 10002 with Applied "maybe".
    ack: Literal["primary", "replicas"] = "primary"
    ack_timeout: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.5
    # And on disk: acknowledged only once it is fsynced to the AOF of the master (and of
    # every replica `ack = "replicas"` waits for), by WAITAOF: Redis 7.2+ or Valkey, with
    # appendonly yes. On a Redis that cannot, every call is refused, not acknowledged.
    ack_fsync: bool = False

    def ack_policy(self) -> Ack | None:
        """What a write waits for beyond the master's apply; None: nothing."""
        if self.ack == "primary" and not self.ack_fsync:
            return None
        return Ack(replicas=self.ack == "replicas", fsync=self.ack_fsync, wait=self.ack_timeout)

    # How long an Idempotency-Key's record is kept (its replay window), in seconds: each
    # costs Redis 290 to 810 bytes for that long (README, "How it stores counters"). From a
    # minute (a retry loop's horizon) to 7 days (a client's longest offline retry queue).
    idempotency_ttl: Annotated[int, msgspec.Meta(ge=60, le=604800)] = 86400
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 65536
    usersig_cache_size: Annotated[int, msgspec.Meta(ge=1)] = 65536
    usersig_cache_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 2**20
    log_level: LogLevel = "info"
    log_format: Literal["json", "text"] = "json"
    # /demo: a live counter page with a "like" button for end users (service/live/demo.py).
    # It embeds an end user's usersig: for a dev setup only.
    demo: bool = False
    # Its page loads and group creations per second, across replicas, counted apart from
    # the app's rate_limit: anyone who can reach the page can load it.
    demo_rate_limit: Annotated[int, msgspec.Meta(ge=1)] = 5
    # The HTTP edge (service/http/protocol.py): what one client may cost a worker.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16384
    max_url_bytes: Annotated[int, msgspec.Meta(ge=256)] = 8192
    header_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Above the idle timeout of the load balancers in front (ingress-nginx and AWS ALB keep
    # an idle upstream connection 60 s): closing first would race a request they send on
    # it, which comes back as a 502 (nginx does not retry a POST). README, Limits.
    keepalive_timeout: Annotated[float, msgspec.Meta(gt=0)] = 75.0
    send_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 16384  # 10,000 watchers fit one worker
    max_pipelined: Annotated[int, msgspec.Meta(ge=1)] = 32
    # Watchers (watch_group_counter) and the notices every change publishes for them.
    live_counters: bool = True
    # get_appid_group_list (service/api/listing.py): one call's walk of the keys stops at
    # whichever comes first, with a partial page whose Next resumes; and a worker walks
    # an app's keys at most this many times at once (60007 beyond).
    list_walk_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    list_walk_scans: Annotated[int, msgspec.Meta(ge=1)] = 1000
    list_walks_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 1
    # What watchers may cost a worker (README, Limits). The kernel's send buffer of a
    # watch socket, fixed: left to itself the kernel grows it to tcp_wmem's maximum
    # (4 MiB) for a client that does not read, before the service's own cut-off sees a byte.
    watch_send_buffer_bytes: Annotated[int, msgspec.Meta(ge=8192, le=2**22)] = 65536
    # Watches starting a group's feed (a group the worker does not watch yet: a
    # subscription and a snapshot read each), per worker and per end user; beyond them
    # a watch is refused at once, told to retry. Watches of a group already there are free.
    max_watch_joins: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_watch_joins_per_end_user: Annotated[int, msgspec.Meta(ge=1)] = 4
    # Streams one end user (sdkappid and identifier) may hold open on a worker.
    max_watchers_per_end_user: Annotated[int, msgspec.Meta(ge=1)] = 16


class App(msgspec.Struct, frozen=True):
    """A configured app with its secret resolved."""

    sdkappid: int
    secret_key: str
    admins: frozenset[str]
    implicit_groups: bool
    rate_limit: int
    previous_secret_key: str | None = None
    end_users: bool = False
    # Key -> (min, max): the signed change an end user may make to it in one call.
    client_keys: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    list_rate_limit: int = 1


class Settings(msgspec.Struct, frozen=True):
    config: Config
    apps: dict[int, App]
    redis_url: str


# What a secret key left as the README's or a template's placeholder looks like: never a key
# anyone chose, and a service that starts with one serves usersigs anyone can mint.
_PLACEHOLDER: Final = re.compile(
    r"\.{2,}|…|<[^>]*>|\{\{.*\}\}|x{3,}|\*+|(change|replace|fill)[-_ ]?(me|this|it)"
    r"|(your|my|the|app)?[-_ ]?secret([-_ ]?key)?([-_ ]?here)?|todo|fixme|placeholder",
    re.IGNORECASE,
)


def _resolve_secret(
    app: AppConfig, index: int, environ: Mapping[str, str], *, previous: bool = False
) -> str | None:
    """The app's secret key, or with `previous` its retiring key (None when not set)."""
    where = f"apps[{index}] (sdkappid {app.sdkappid})"
    name = "previous_secret_key" if previous else "secret_key"
    value, env_name = (
        (app.previous_secret_key, app.previous_secret_key_env)
        if previous
        else (app.secret_key, app.secret_key_env)
    )
    if value is not None and env_name is not None:
        raise ConfigError(f"{where}: set {name} or {name}_env, not both")
    if env_name is not None:
        secret = environ.get(env_name, "")
        if not secret:
            raise ConfigError(
                f"{where}: {name}_env names {env_name!r}, which is not set or empty in the environment"
            )
        return secret
    if previous:
        if value == "":
            raise ConfigError(f"{where}: previous_secret_key is empty")
        return value
    if not value:
        raise ConfigError(f"{where}: missing secret_key (or secret_key_env)")
    if _PLACEHOLDER.fullmatch(value.strip()):
        raise ConfigError(
            f"{where}: secret_key {value!r} is a placeholder: put the app's secret key from the "
            "platform's console here, or better, in the environment (secret_key_env)"
        )
    return value


_UNKNOWN_FIELD: Final = re.compile(
    r"Object contains unknown field `(?P<field>[^`]+)`(?: - at `(?P<path>[^`]+)`)?"
)
_BAD_ENUM: Final = re.compile(r"Invalid enum value .* - at `(?P<path>[^`]+)`")


def _struct_at(path: str) -> type[msgspec.Struct]:
    """The config Struct a msgspec error path points into: `$`, `$.apps[N]` or one of its
    `client_keys` entries."""
    if ".client_keys[" in path:
        return ClientKey
    return AppConfig if path.startswith("$.apps") else Config


def _explain(error: msgspec.ValidationError, at: str = "") -> str:
    """msgspec's message, plus what would have been accepted: a misspelt key's likely
    intended name, an enum's allowed values. People fix a config faster from a list
    than from the word "invalid". `at`: where the value checked sits in the whole (an
    app checked on its own reports `$...` paths that mean `$.apps[N]...`)."""
    message = str(error)
    if at:
        message = message.replace("at `$", f"at `{at}") if " - at `$" in message else f"{message} - at `{at}`"
    if match := _UNKNOWN_FIELD.match(message):
        names = [field.encode_name for field in msgspec.structs.fields(_struct_at(match["path"] or "$"))]
        close = difflib.get_close_matches(match["field"], names, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(names)}"
        return f"{message}; {hint}"
    if match := _BAD_ENUM.match(message):
        name = match["path"].rsplit(".", 1)[-1]
        fields = {
            field.encode_name: field.type for field in msgspec.structs.fields(_struct_at(match["path"]))
        }
        allowed = get_args(fields.get(name))
        if allowed:
            return f"{message}; allowed: {', '.join(repr(value) for value in allowed)}"
    return message


def _client_keys(app: AppConfig, index: int) -> dict[str, tuple[int, int]]:
    where = f"apps[{index}] (sdkappid {app.sdkappid})"
    if app.client_keys and not app.end_users:
        raise ConfigError(f"{where}: client_keys is for end users: set end_users = true too")
    bounds: dict[str, tuple[int, int]] = {}
    for entry in app.client_keys:
        key, low, high = (entry, -1, 1) if isinstance(entry, str) else (entry.key, entry.min, entry.max)
        if not 0 < len(key.encode()) <= 128:
            raise ConfigError(f"{where}: client_keys: {key!r} is not a Key (1 to 128 bytes of UTF-8)")
        if key in bounds:
            raise ConfigError(f"{where}: client_keys names a Key twice")
        bounds[key] = (low, high)
    return bounds


def _decode(text: str) -> Config:
    """The config, its top level and each app checked apart, so that one run reports every
    mistake a type check finds (msgspec stops at the first of one value it converts)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc
    mistakes: list[str] = []
    raw_apps = raw.get("apps", [])
    top: dict[str, Any] = {name: value for name, value in raw.items() if name != "apps"}
    try:
        msgspec.convert({**top, "apps": []}, Config)
    except msgspec.ValidationError as exc:
        mistakes.append(_explain(exc))
    if isinstance(raw_apps, list):
        for index, raw_app in enumerate(raw_apps):
            try:
                msgspec.convert(raw_app, AppConfig)
            except msgspec.ValidationError as exc:
                mistakes.append(_explain(exc, at=f"$.apps[{index}]"))
    if mistakes:
        raise ConfigError(_listed(mistakes))
    try:
        return msgspec.convert({**raw, "apps": raw_apps}, Config)
    except msgspec.ValidationError as exc:  # what only the whole shows (apps not a list)
        raise ConfigError(_explain(exc)) from exc


def _listed(mistakes: list[str]) -> str:
    if len(mistakes) == 1:
        return mistakes[0]
    return f"{len(mistakes)} mistakes:\n" + "\n".join(f"  - {mistake}" for mistake in mistakes)


def _app(app: AppConfig, index: int, env: Mapping[str, str], apps: dict[int, App]) -> App:
    if app.sdkappid in apps:
        raise ConfigError(f"apps[{index}]: duplicate sdkappid {app.sdkappid}")
    if not app.admins or not all(app.admins):
        raise ConfigError(
            f"apps[{index}] (sdkappid {app.sdkappid}): admins must list at least one non-empty identifier"
        )
    client_keys = _client_keys(app, index)
    return App(
        sdkappid=app.sdkappid,
        secret_key=_resolve_secret(app, index, env) or "",
        previous_secret_key=_resolve_secret(app, index, env, previous=True),
        admins=frozenset(app.admins),
        implicit_groups=app.groups == "implicit",
        rate_limit=app.rate_limit,
        end_users=app.end_users,
        client_keys=client_keys,
        list_rate_limit=app.list_rate_limit,
    )


def parse_config(text: str, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, or a ConfigError naming every mistake found (one run, all of them)."""
    env = os.environ if environ is None else environ
    config = _decode(text)
    mistakes: list[str] = []
    if not config.apps:
        mistakes.append("no [[apps]] configured")
    apps: dict[int, App] = {}
    for index, app in enumerate(config.apps):
        try:
            apps[app.sdkappid] = _app(app, index, env, apps)
        except ConfigError as exc:
            mistakes.append(str(exc))
    redis_url = env.get("REDIS_URL") or config.redis_url
    if not redis_url:
        mistakes.append(
            "redis_url is not set (nor REDIS_URL): point it at a Redis, e.g. "
            'redis_url = "redis://host:6379/0", or say redis_url = "memory://" for the '
            "in-memory store, which keeps nothing across restarts"
        )
    else:
        try:
            parsed = urls.parse(redis_url)
        except ValueError as exc:
            mistakes.append(str(exc))
        else:
            if parsed.embedded and config.ack == "replicas":
                mistakes.append(
                    'ack = "replicas" needs a Redis with replicas; the in-memory store has none '
                    '(say ack = "primary", or point redis_url at a Redis)'
                )
            if parsed.embedded and config.ack_fsync:
                mistakes.append(
                    "ack_fsync needs a Redis with an AOF on disk; the in-memory store keeps nothing "
                    "(say ack_fsync = false, or point redis_url at a Redis)"
                )
    if mistakes:
        raise ConfigError(_listed(mistakes))
    assert redis_url is not None
    return Settings(config=config, apps=apps, redis_url=redis_url)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    try:
        return parse_config(text, environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
