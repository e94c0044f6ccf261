"""One function per command: validate the decoded request, run one script, build the reply.

Each returns the encoded reply or raises `ServiceError`. Authentication has already
happened and the body is decoded (`Command.decode`); these see the app and the request.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import string
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeVar

import msgspec

from service.api.call import Call
from service.api.listing import Budget, count_groups, list_page
from service.api.validate import (
    COMMUNITY_PREFIX,
    GENERATED_PREFIX,
    check_custom_group_id,
    check_group_id,
    check_item_count,
    check_keys,
    check_name,
)
from service.config import App
from service.errors import ErrorCode, ServiceError
from service.storage import scripts
from service.storage.keys import changes_channel, group_key, group_list_key, idempotency_key
from service.storage.scripts import ScriptArg, ScriptCall, ScriptReply
from service.storage.store import Store
from service.wire import (
    CreateGroup,
    CreateGroupReply,
    DeleteGroupCounter,
    DestroyGroup,
    GetAppidGroupList,
    GetGroupCounter,
    GroupCounter,
    GroupCounterReply,
    GroupIdItem,
    GroupListReply,
    Reply,
    UpdateGroupCounter,
    encoder,
)

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)

_OK: Final = encoder.encode(Reply())
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_CREATE_ATTEMPTS: Final = 5


_TOO_DEEP: Final = "the body nests deeper than the JSON decoder allows"


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode in one pass; 60003 for a body that is not a JSON object, 10004 for a bad field."""
    try:
        return decoder.decode(body or b"{}")
    except msgspec.ValidationError as exc:
        # msgspec checks types while it parses, so a type error can surface before a
        # syntax error later in the body; docs/API.md checks the body (60003) first.
        _check_json_object(body or b"{}")
        raise ServiceError(ErrorCode.INVALID_PARAMETER, f"invalid parameter: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ServiceError(ErrorCode.BAD_BODY, f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ServiceError(ErrorCode.BAD_BODY, _TOO_DEEP) from exc


def _check_json_object(body: bytes) -> None:
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ServiceError(ErrorCode.BAD_BODY, f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ServiceError(ErrorCode.BAD_BODY, _TOO_DEEP) from exc
    if not isinstance(document, dict):
        raise ServiceError(ErrorCode.BAD_BODY, "the body is not a JSON object")


def _check_implicit_community(app: App, group_id: str) -> None:
    # In implicit mode no group type is stored: the ID prefix is the type.
    if app.implicit_groups and group_id.startswith(COMMUNITY_PREFIX):
        raise ServiceError(
            ErrorCode.NOT_ALLOWED, f"group {group_id!r} is a Community group, which has no counters"
        )


def _raise_for(reply: ScriptReply, group_id: str) -> None:
    code = reply[0]
    if code == 0:
        return
    detail: Any = reply[1] if len(reply) > 1 else None
    match code:
        case ErrorCode.GROUP_NOT_FOUND:
            info = f"group {group_id!r} does not exist"
        case ErrorCode.NOT_ALLOWED:
            info = f"group {group_id!r} is a Community group, which has no counters"
        case ErrorCode.INVALID_PARAMETER if detail is None:
            info = "the Idempotency-Key was first used with a different request"
        case ErrorCode.INVALID_PARAMETER:
            info = f"Key {detail.decode()!r}: the result is outside the int64 range"
        case ErrorCode.TOO_MANY_KEYS:
            info = f"the group would hold {detail!s} keys; at most 20 are allowed"
        case ErrorCode.GROUP_ID_TAKEN:
            info = f"GroupId {group_id!r} is taken"
        case _:
            raise ServiceError(ErrorCode.INTERNAL, "internal error: unexpected store reply", "maybe")
    raise ServiceError(ErrorCode(code), info)


def _fingerprint(command: str, args: Sequence[ScriptArg]) -> str:
    """What an Idempotency-Key promises: the same command with the same arguments."""
    digest = hashlib.blake2b(command.encode(), digest_size=16)
    for arg in args:
        digest.update(b"\0" + (arg if isinstance(arg, bytes) else str(arg).encode()))
    return digest.hexdigest()


def _idempotency(call: Call, command: str, group: str, args: Sequence[ScriptArg]) -> tuple[str, str, str]:
    """KEYS[3], ARGV[3] and ARGV[4] of a script that can record its outcome: the record,
    the fingerprint and a fresh token (the group's epoch if it has none yet, its
    incarnation if this is its first change); without an Idempotency-Key, the group's
    key again, an empty fingerprint and the token."""
    if call.idempotency_key is None:
        # Only unique per group life, never secret: the cheap generator will do.
        return group, "", f"{random.getrandbits(32):08x}"
    record = idempotency_key(group, call.idempotency_key)
    return record, _fingerprint(command, args), secrets.token_hex(8)


async def update_group_counter(call: Call, request: UpdateGroupCounter) -> bytes:
    items = request.group_counter
    keys = check_keys([item.key for item in items])
    group_id = check_group_id(request.group_id)
    check_item_count(len(items), "GroupCounter")
    _check_implicit_community(call.app, group_id)

    mode = request.mode or "Set"
    call.check_end_user_update(mode, [(item.key, item.value) for item in items])
    operation = "set" if mode == "Set" else "add"
    pairs: list[ScriptArg] = []
    for key, item in zip(keys, items, strict=True):
        # A Decrease is an add of the negated Value; -(-2**63) is one past int64,
        # which the script's limb arithmetic handles and a Redis HINCRBY could not.
        # As decimal text, as Redis takes every argument: so combining.py counts its size cheaply.
        pairs += (key, str(-item.value if mode == "Decrease" else item.value))
    group = group_key(call.app.sdkappid, group_id)
    record, fingerprint, token = _idempotency(call, "update_group_counter", group, [operation, *pairs])
    window, limit = call.limit.in_script(group)
    reply = await call.run(
        ScriptCall(
            scripts.UPDATE_COUNTERS,
            [group, window, record],
            [
                call.registered,
                limit,
                fingerprint,
                token,
                call.store.announce,
                changes_channel(group, call.store.db),
                operation,
                str(call.store.record_ttl),
                *pairs,
            ],
        )
    )
    _raise_for(reply, group_id)

    counters = [
        GroupCounter(key=item.key, value=int(value)) for item, value in zip(items, reply[1:], strict=True)
    ]
    return encoder.encode(GroupCounterReply(group_counter=counters))


async def get_group_counter(call: Call, request: GetGroupCounter) -> bytes:
    wanted = request.group_counter_keys or []
    keys = check_keys(wanted)
    group_id = check_group_id(request.group_id)
    check_item_count(len(keys), "GroupCounterKeys")
    _check_implicit_community(call.app, group_id)

    group = group_key(call.app.sdkappid, group_id)
    window, limit = call.limit.in_script(group)
    reply = await call.run(ScriptCall(scripts.GET_COUNTERS, [group, window], [call.registered, limit, *keys]))
    _raise_for(reply, group_id)

    values = reply[1:]
    if keys:
        found = [(key, value) for key, value in zip(wanted, values, strict=True) if value is not None]
        counters = [GroupCounter(key=key, value=int(value)) for key, value in found]
    else:
        pairs = sorted(zip(values[0::2], values[1::2], strict=True))  # byte order of the Keys
        counters = [GroupCounter(key=key.decode(), value=int(value)) for key, value in pairs]
    return encoder.encode(GroupCounterReply(group_counter=counters))


async def delete_group_counter(call: Call, request: DeleteGroupCounter) -> bytes:
    keys = check_keys(request.group_counter_keys or [])
    group_id = check_group_id(request.group_id)
    check_item_count(len(keys), "GroupCounterKeys")
    _check_implicit_community(call.app, group_id)

    group = group_key(call.app.sdkappid, group_id)
    record, fingerprint, token = _idempotency(call, "delete_group_counter", group, keys)
    window, limit = call.limit.in_script(group)
    reply = await call.run(
        ScriptCall(
            scripts.DELETE_COUNTERS,
            [group, window, record],
            [
                call.registered,
                limit,
                fingerprint,
                token,
                call.store.announce,
                changes_channel(group, call.store.db),
                call.store.record_ttl,
                *keys,
            ],
        )
    )
    _raise_for(reply, group_id)
    return _OK


def _generated_group_id(community: bool) -> str:
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))
    return (COMMUNITY_PREFIX + GENERATED_PREFIX if community else GENERATED_PREFIX) + suffix


async def create_group(call: Call, request: CreateGroup) -> bytes:
    check_name(request.name)
    community = request.type == "Community"
    if request.group_id is not None:
        group_id = check_custom_group_id(request.group_id, community=community)
    else:
        group_id = _generated_group_id(community)

    if call.app.implicit_groups:
        # Every well-formed GroupId already exists in implicit mode: nothing to store,
        # but the call still counts against the app's rate limit.
        await call.limit.count_alone()
        return encoder.encode(CreateGroupReply(group_id=group_id))
    for _ in range(_CREATE_ATTEMPTS):
        group = group_key(call.app.sdkappid, group_id)
        window, limit = call.limit.in_script(group)
        # ARGV[1] is "1" here whatever the app's mode: implicit mode never gets here.
        reply = await call.run(ScriptCall(scripts.CREATE_GROUP, [group, window], ["1", limit, request.type]))
        if reply[0] != ErrorCode.GROUP_ID_TAKEN or request.group_id is not None:
            break
        group_id = _generated_group_id(community)  # a collision in 62**10 IDs: draw again
    _raise_for(reply, group_id)
    return encoder.encode(CreateGroupReply(group_id=group_id))


async def destroy_group(call: Call, request: DestroyGroup) -> bytes:
    group_id = check_group_id(request.group_id)
    group = group_key(call.app.sdkappid, group_id)
    window, limit = call.limit.in_script(group)
    reply = await call.run(
        ScriptCall(
            scripts.DESTROY_GROUP,
            [group, window],
            [call.registered, limit, call.store.announce, changes_channel(group, call.store.db)],
        )
    )
    _raise_for(reply, group_id)
    return _OK


async def get_appid_group_list(call: Call, request: GetAppidGroupList) -> bytes:
    # The walk below is no single script: it counts against the app's limit on its own.
    await call.limit.count_alone()
    app = call.app
    if app.list_rate_limit:
        # The platform allows this command once a second per app: a whole walk of the
        # app's keys per call (TotalCount) is why, here too.
        # Through the store, not `call.run`: a 60007 here is this command's limit, not the app's.
        reply = await call.store.run(
            ScriptCall(scripts.RATE_LIMIT, [group_list_key(app.sdkappid)], [app.list_rate_limit])
        )
        if reply[0] != 0:
            raise ServiceError(
                ErrorCode.RATE_LIMITED,
                f"get_appid_group_list is allowed {app.list_rate_limit} time(s) a second per app",
            )
    budget = Budget(call.walks.bounds, call.client_left)
    with call.walks.admit(app.sdkappid):
        ids, next_value = await list_page(
            call.store,
            app.sdkappid,
            limit=request.page_limit,
            next_value=request.next_value,
            wanted_type=request.group_type,
            implicit=app.implicit_groups,
            budget=budget,
        )
        # Outside the budget: TotalCount is every group of the app (docs/API.md §2), a
        # walk at the full COUNT, so a few hundred SCANs for a few hundred thousand keys.
        total = await count_groups(call.store, app.sdkappid, call.client_left)
    return encoder.encode(
        GroupListReply(
            total_count=total, group_id_list=[GroupIdItem(group_id) for group_id in ids], next=next_value
        )
    )


class GroupSnapshot(msgspec.Struct, frozen=True):
    """Every counter of a group and the version they are the state after."""

    incarnation: str  # "" before the group's first change
    version: int
    counters: dict[str, int]


async def read_snapshot(store: Store, registered: str, group: str, group_id: str) -> GroupSnapshot:
    """A watcher's snapshot (watch_group_counter): 10010 or 10007 as a read would answer.
    Not counted against the app's rate limit: the watch call was, once, at its start."""
    reply = await store.run(ScriptCall(scripts.SNAPSHOT_GROUP, [group, group], [registered, "0"]))
    _raise_for(reply, group_id)
    held: bytes = reply[1]
    incarnation, version = "", 0
    if held:
        count, _, token = held.partition(b" ")
        incarnation, version = token.decode(), int(count)
    values = reply[2:]
    counters = {key.decode(): int(value) for key, value in zip(values[0::2], values[1::2], strict=True)}
    return GroupSnapshot(incarnation, version, counters)


class Command(Generic[R]):
    """A command's body decoder (built once) and its function of the typed request;
    `walks`: it runs more than one script, so it stops when its client leaves."""

    def __init__(
        self, request_type: type[R], run: Callable[[Call, R], Awaitable[bytes]], *, walks: bool = False
    ) -> None:
        self.decoder = msgspec.json.Decoder(request_type)
        self.run = run
        self.walks = walks

    def decode(self, body: bytes) -> R:
        return decode_body(self.decoder, body)


# What an end user may call, and whether it is one of their writes (docs/API.md, "End users").
END_USER_COMMANDS: Final = {"get_group_counter": False, "update_group_counter": True}

COMMANDS: Final[dict[str, Command[Any]]] = {
    "update_group_counter": Command(UpdateGroupCounter, update_group_counter),
    "get_group_counter": Command(GetGroupCounter, get_group_counter),
    "delete_group_counter": Command(DeleteGroupCounter, delete_group_counter),
    "create_group": Command(CreateGroup, create_group),
    "destroy_group": Command(DestroyGroup, destroy_group),
    "get_appid_group_list": Command(GetAppidGroupList, get_appid_group_list, walks=True),
}
