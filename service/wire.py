"""The wire: every request body and reply of the contract as msgspec Structs.

Each body decodes in one pass with a Decoder built once at import. Type and shape
rules (required fields, JSON types, the int64 range of a Value) live here, in the
decode; rules that need more than a type (byte lengths, duplicate keys, GroupId
syntax) live in `validate.py`. Unknown fields are ignored, and `null` for an optional
field reads as absent, as the contract says (§1): every optional field is `X | None`
with the default None, its default applied where it is read.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
LIST_LIMIT_MAX: Final = 10_000

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
    # `null` reads as absent (docs/API.md §1), so the defaults are applied by the
    # properties below rather than by the fields. Limit 0 is refused rather than read as
    # "the default": absent (or null) is the default.
    limit: Annotated[int, msgspec.Meta(ge=1, le=LIST_LIMIT_MAX)] | None = None
    # The Next of a previous reply (0: the first page); its meaning is ours (listing.py).
    next: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] | None = None
    group_type: GroupType | None = None

    @property
    def page_limit(self) -> int:
        return LIST_LIMIT_MAX if self.limit is None else self.limit

    @property
    def next_value(self) -> int:
        return 0 if self.next is None else self.next


# Replies ----------------------------------------------------------------------------


class Reply(msgspec.Struct, rename="pascal"):
    action_status: Literal["OK", "FAIL"] = "OK"
    error_code: int = 0
    error_info: str = ""


class FaultReply(Reply):
    """A 10002 with `Applied` (ours, additive): "no" when the call certainly did not
    run, "maybe" when it may have (docs/API.md, "Applied")."""

    applied: str = "maybe"


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


def encode_error(code: int, info: str, applied: str | None = None) -> bytes:
    if applied is not None:
        return encoder.encode(
            FaultReply(action_status="FAIL", error_code=code, error_info=info, applied=applied)
        )
    return encoder.encode(Reply(action_status="FAIL", error_code=code, error_info=info))
