"""The kit's options (Locust command line and LOADTEST_* environment), their checked form
(`Settings`), and the signed query string of every call (`Signer`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any, Final

OPERATIONS: Final = ("set", "increase", "decrease", "get", "delete")
DEFAULT_MIX: Final = "set=1,increase=4,decrease=2,get=2,delete=1"
COMMAND_PATH: Final = "/v4/group_open_http_svc/"
MAX_KEYS_PER_GROUP: Final = 20
SECRET_ENV: Final = "LOADTEST_SECRET_KEY"  # noqa: S105 (a variable name)


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("group counter load test (secret key: LOADTEST_SECRET_KEY)")
    group.add_argument(
        "--sdkappid", type=int, env_var="LOADTEST_SDKAPPID", default=1400000000, help="the app to call"
    )
    group.add_argument(
        "--identifier",
        env_var="LOADTEST_IDENTIFIER",
        default="administrator",
        help="an admin identifier of the app; the usersig is made for it",
    )
    group.add_argument(
        "--mix",
        env_var="LOADTEST_MIX",
        default=DEFAULT_MIX,
        help=f"weights of {', '.join(OPERATIONS)} (default {DEFAULT_MIX})",
    )
    group.add_argument(
        "--counter-groups",
        type=int,
        env_var="LOADTEST_GROUPS",
        default=4,
        help="groups owned by each user",
    )
    group.add_argument(
        "--counter-keys",
        type=int,
        env_var="LOADTEST_KEYS",
        default=8,
        help=f"keys per group (1..{MAX_KEYS_PER_GROUP})",
    )
    group.add_argument(
        "--group-mode",
        choices=["registered", "implicit"],
        env_var="LOADTEST_GROUP_MODE",
        default="registered",
        help="registered: create_group every group first; implicit: the app's groups are implicit",
    )
    group.add_argument(
        "--run-id",
        env_var="LOADTEST_RUN_ID",
        default="",
        help="a label in every GroupId (default: random)",
    )
    group.add_argument(
        "--summary-file",
        env_var="LOADTEST_SUMMARY_FILE",
        default="",
        help="write the text summary here (default: print it)",
    )
    group.add_argument(
        "--keep-groups",
        action="store_true",
        env_var="LOADTEST_KEEP_GROUPS",
        default=False,
        help="do not destroy the groups after the verdict",
    )
    group.add_argument(
        "--watchers-per-group",
        type=int,
        env_var="LOADTEST_WATCHERS",
        default=1,
        help="SSE watchers (watch_group_counter) of each group; 0: none",
    )
    group.add_argument(
        "--verdict-timeout",
        type=float,
        env_var="LOADTEST_VERDICT_TIMEOUT",
        default=120.0,
        help="seconds the master waits for the workers' verdicts",
    )


def parse_mix(text: str) -> dict[str, int]:
    weights = dict.fromkeys(OPERATIONS, 0)
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in weights or not weight.strip().isdigit():
            raise ValueError(f"--mix: {part!r} is not <operation>=<weight> with operation in {OPERATIONS}")
        weights[name] = int(weight)
    if not any(weights.values()):
        raise ValueError("--mix: every weight is 0")
    return weights


@dataclass(frozen=True)
class Settings:
    sdkappid: int
    identifier: str
    secret_key: str
    mix: dict[str, int]
    groups: int
    keys: int
    registered: bool
    run_id: str
    keep_groups: bool
    watchers: int = 1

    @classmethod
    def from_options(cls, options: Any) -> Settings:
        secret_key = os.environ.get(SECRET_ENV, "")
        if not secret_key:
            raise ValueError(f"{SECRET_ENV} is not set: the app's secret key comes from the environment")
        if not 1 <= options.counter_keys <= MAX_KEYS_PER_GROUP:
            raise ValueError(f"--counter-keys must be 1..{MAX_KEYS_PER_GROUP}")
        if options.counter_groups < 1:
            raise ValueError("--counter-groups must be at least 1")
        run_id = options.run_id or _DEFAULT_RUN_ID
        if not (len(run_id) <= 12 and all(33 <= ord(c) <= 126 for c in run_id)):
            raise ValueError("--run-id: at most 12 printable ASCII characters, no spaces")
        return cls(
            sdkappid=options.sdkappid,
            identifier=options.identifier,
            secret_key=secret_key,
            mix=parse_mix(options.mix),
            groups=options.counter_groups,
            keys=options.counter_keys,
            registered=options.group_mode == "registered",
            run_id=run_id,
            keep_groups=options.keep_groups,
            watchers=max(0, int(getattr(options, "watchers_per_group", 1))),
        )


_DEFAULT_RUN_ID: Final = secrets.token_hex(3)


# ---------------------------------------------------------------------------- signing


def mint_usersig(sdkappid: int, secret_key: str, identifier: str, expire: int = 7 * 86400) -> str:
    """A TLSSigAPIv2 usersig, as the official tls-sig-api-v2 generators make one."""
    now = int(time.time())
    content = f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{now}\nTLS.expire:{expire}\n"
    sig = base64.b64encode(hmac.new(secret_key.encode(), content.encode(), hashlib.sha256).digest())
    document = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": sig.decode(),
    }
    compressed = zlib.compress(json.dumps(document, separators=(",", ":")).encode())
    return base64.b64encode(compressed).translate(bytes.maketrans(b"+/=", b"*-_")).decode()


class Signer:
    """Builds the query string of every call; one usersig per process (minting is not free)."""

    def __init__(self, settings: Settings) -> None:
        self._fixed = {
            "sdkappid": str(settings.sdkappid),
            "identifier": settings.identifier,
            "usersig": mint_usersig(settings.sdkappid, settings.secret_key, settings.identifier),
        }

    def path(self, command: str) -> str:
        params = {**self._fixed, "random": str(random.randrange(2**32)), "contenttype": "json"}
        return COMMAND_PATH + command + "?" + urllib.parse.urlencode(params)
