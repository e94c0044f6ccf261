"""The wire: every request body and reply of the contract as msgspec Structs.

Each body decodes in one pass with a Decoder built once at import. Type and shape
rules (required fields, JSON types, the int64 range of a Value) live here, in the
decode; rules that need more than a type (byte lengths, duplicate keys, GroupId
syntax) live in `validate.py`. Unknown fields are ignored, as the contract says.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Mode = Literal["Set", "Increase", "Decrease"]
GroupType = Literal["Private", "Work", "Public", "ChatRoom", "Meeting", "AVChatRoom", "Community"]


class GroupCounter(msgspec.Struct, rename="pascal"):
    """One `{Key, Value}` pair, in a request and in a reply."""

    key: str
    value: Int64


# Requests ---------------------------------------------------------------------------


class UpdateGroupCounter(msgspec.Struct, rename="pascal"):
    group_id: str
    group_counter: Annotated[list[GroupCounter], msgspec.Meta(min_length=1)]
    mode: Mode | None = None


class GetGroupCounter(msgspec.Struct, rename="pascal"):
    group_id: str
    group_counter_keys: list[str] | None = None


class DeleteGroupCounter(msgspec.Struct, rename="pascal"):
    group_id: str
    group_counter_keys: list[str] | None = None


class CreateGroup(msgspec.Struct, rename="pascal"):
    type: GroupType
    name: str
    group_id: str | None = None
    owner_account: str | None = msgspec.field(default=None, name="Owner_Account")


class DestroyGroup(msgspec.Struct, rename="pascal"):
    group_id: str


class GetAppidGroupList(msgspec.Struct, rename="pascal"):
    # Limit 0 is refused rather than read as "the default": absent is the default.
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10_000
    # The Next of a previous reply (0: the first page); its meaning is ours (listing.py).
    next: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    group_type: GroupType | None = None


# Replies ----------------------------------------------------------------------------


class Reply(msgspec.Struct, rename="pascal"):
    action_status: Literal["OK", "FAIL"] = "OK"
    error_code: int = 0
    error_info: str = ""


class GroupCounterReply(Reply):
    group_counter: list[GroupCounter] = []


class CreateGroupReply(Reply):
    group_id: str = ""


class GroupIdItem(msgspec.Struct, rename="pascal"):
    group_id: str


class GroupListReply(Reply):
    total_count: int = 0
    group_id_list: list[GroupIdItem] = []
    next: int = 0


# watch_group_counter's events (the `data` of each SSE event; docs/API.md §8) ---------


class SnapshotEvent(msgspec.Struct, rename="pascal"):
    """Every counter of the group, ordered by Key, as of `version`."""

    group_id: str
    version: int
    resync: bool
    group_counter: list[GroupCounter]


class ChangeEvent(msgspec.Struct, rename="pascal"):
    """One applied change: the Keys it set (new values) and the Keys it deleted."""

    group_id: str
    version: int
    group_counter: list[GroupCounter]
    deleted_keys: list[str]


class DestroyedEvent(msgspec.Struct, rename="pascal"):
    """The group was destroyed: the stream's last event."""

    group_id: str
    version: int


encoder: Final = msgspec.json.Encoder()


def encode_error(code: int, info: str) -> bytes:
    return encoder.encode(Reply(action_status="FAIL", error_code=code, error_info=info))
