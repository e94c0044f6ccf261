"""Redis URLs: the one parser every transport and `check-config` use, and `redacted`.

    memory://                                        the embedded store (fakeredis)
    redis://[user:password@]host[:port][/db]         one Redis
    rediss://...[?ssl_ca_certs=PATH&ssl_cert_reqs=none]   one Redis over TLS
    unix:///path/to/redis.sock[?db=N]                one Redis on a Unix socket
    redis+cluster://[user:password@]host:port[,host:port...]      Redis Cluster (seed nodes)
    rediss+cluster://...[?ssl_ca_certs=PATH&ssl_cert_reqs=none]   Redis Cluster over TLS
    redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/db]

Credentials are percent-decoded (`p%40ss` is `p@ss`), as redis-py's `from_url` does.
An option this service does not know is an error, on every scheme: a typo such as
`ssl_cert_req=none` must not silently leave certificate checks on (or off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

EMBEDDED: Final = "memory"
SINGLE: Final = frozenset({"redis", "rediss", "unix"})
CLUSTER: Final = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL: Final = frozenset({"redis+sentinel"})
SCHEMES: Final = (
    "memory://",
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
)
_TLS_OPTIONS: Final = frozenset({"ssl_ca_certs", "ssl_cert_reqs"})
_CERT_REQS: Final = ("required", "none")


@dataclass(frozen=True)
class RedisUrl:
    """What a redis_url says, checked."""

    scheme: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    unix_path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str = ""  # sentinel: the monitored master's name
    ssl_ca_certs: str | None = None
    verify_certificates: bool = True

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def embedded(self) -> bool:
        return self.scheme == EMBEDDED


def _fail(url: str, why: str) -> ValueError:
    return ValueError(f"redis_url {redacted(url)!r}: {why}")


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise _fail(url, f"empty host in {text!r}")
    if port_text and not (port_text.isascii() and port_text.isdigit()):
        raise _fail(url, f"bad port in {text!r}")
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise _fail(url, f"bad port in {text!r}")
    return host, port


def _options(url: str, query: str, allowed: frozenset[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _fail(url, f"unknown option {name!r} (this scheme takes: {known})")
        options[name] = value
    if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise _fail(url, f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    return options


def _db(url: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise _fail(url, f"db must be a number, not {text!r}")
    return int(text)


def parse(url: str) -> RedisUrl:
    """Parse any redis_url this service accepts; ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or f"{scheme}://" not in SCHEMES:
        raise _fail(url, f"expected one of {', '.join(SCHEMES)}")
    if scheme == EMBEDDED:
        if rest:
            raise _fail(url, "memory:// takes nothing after the scheme")
        return RedisUrl(scheme)
    rest, _, query = rest.partition("?")
    if "#" in query:
        raise _fail(url, "a redis_url has no #fragment")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None if colon else None
        password = unquote(secret) if colon else unquote(user)
    tls_allowed = _TLS_OPTIONS if scheme.startswith("rediss") else frozenset[str]()

    if scheme == "unix":
        options = _options(url, query, frozenset({"db"}))
        if netloc or not path:
            raise _fail(url, "expected unix:///absolute/path/to/redis.sock")
        return RedisUrl(scheme, unix_path="/" + path, db=_db(url, options.get("db", "0")))

    sentinel = scheme in SENTINEL
    hosts = [_host_port(item, 26379 if sentinel else 6379, url) for item in hostlist.split(",") if item]
    if not hosts:
        raise _fail(url, "no host:port given")
    options = _options(url, query, tls_allowed)
    ca_certs = options.get("ssl_ca_certs") or None
    verify = options.get("ssl_cert_reqs", "required") != "none"
    segments = [segment for segment in path.split("/") if segment]
    if scheme in SINGLE:
        if len(hosts) != 1:
            raise _fail(url, "one host only (a cluster is redis+cluster://)")
        if len(segments) > 1:
            raise _fail(url, "expected /<db> after the host")
        db = _db(url, segments[0]) if segments else 0
        return RedisUrl(
            scheme,
            hosts,
            username=username,
            password=password,
            db=db,
            ssl_ca_certs=ca_certs,
            verify_certificates=verify,
        )
    if sentinel:
        if not 1 <= len(segments) <= 2:
            raise _fail(url, "expected /<master-name>[/db] after the sentinels")
        db = _db(url, segments[1]) if len(segments) == 2 else 0
        master = unquote(segments[0])
        return RedisUrl(scheme, hosts, username=username, password=password, db=db, master=master)
    if segments not in ([], ["0"]):
        raise _fail(url, "a cluster has no database to select")
    return RedisUrl(
        scheme, hosts, username=username, password=password, ssl_ca_certs=ca_certs, verify_certificates=verify
    )


def redacted(url: str) -> str:
    """The URL as it may appear in logs and errors: never with a password."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password is None and "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]  # as written: may list several host:port
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
