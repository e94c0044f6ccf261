"""The access check's one cache (issue 11, point 4): keyed so that a changing `random`
does not defeat it, bounded in entries and in bytes, and never a way around a check."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode

import pytest

from service.api.access import Access, _cost
from service.config import parse_config
from service.errors import ServiceError
from tests.support import ADMIN, CONFIG, REGISTERED_APP, usersig_for

APPS: Final = parse_config(CONFIG, environ={}).apps
USERSIG: Final = usersig_for(REGISTERED_APP, ADMIN)


def query(**changes: str) -> bytes:
    params = {
        "sdkappid": str(REGISTERED_APP),
        "identifier": ADMIN,
        "usersig": USERSIG,
        "random": "12345",
        "contenttype": "json",
    } | changes
    return urlencode(params).encode()


def refused_with(access: Access, query_string: bytes) -> int:
    with pytest.raises(ServiceError) as caught:
        access.authorize(query_string)
    return caught.value.code


def test_calls_that_vary_random_hit_the_cache_and_do_not_grow_it() -> None:
    access = Access(APPS, cache_size=100)
    access.authorize(query())
    proofs = 0
    prove = access._verifier._prove

    def counting_prove(usersig: str, sdkappid: int, identifier: str) -> object:
        nonlocal proofs
        proofs += 1
        return prove(usersig, sdkappid, identifier)

    access._verifier._prove = counting_prove  # type: ignore[method-assign,assignment]
    for random in range(1000):
        assert access.authorize(query(random=str(random))) == access._apps[REGISTERED_APP]
    assert proofs == 0
    assert len(access._cache) == 2  # the first query string as it was, and without random


def test_random_is_still_checked_on_a_cached_query_string() -> None:
    access = Access(APPS, cache_size=100)
    access.authorize(query())
    assert refused_with(access, query(random="4294967296")) == 60002
    assert refused_with(access, query(random="")) == 60002  # the query string around random's value
    assert refused_with(access, query(random="-1")) == 60002
    assert refused_with(access, query() + b"&random=7") == 60002
    assert refused_with(access, b"random=7&" + query()) == 60002
    assert refused_with(access, query().replace(b"random=12345", b"random=12345x")) == 60002
    assert refused_with(access, query().replace(b"&random=12345", b"")) == 60002


def test_random_written_another_way_is_checked_in_full_and_accepted() -> None:
    access = Access(APPS, cache_size=100)
    access.authorize(query(random="0000000000012345"))
    access.authorize(query().replace(b"random=12345", b"r%61ndom=12345"))
    access.authorize(query().replace(b"random=12345", b"random=%31%32"))


def test_the_cache_is_bounded_in_entries() -> None:
    access = Access(APPS, cache_size=10)
    for pad in range(50):
        access.authorize(query(pad=str(pad)))
        assert len(access._cache) <= 10


def test_the_cache_is_bounded_in_bytes() -> None:
    cap = 1_000_000
    access = Access(APPS, cache_size=65536, cache_bytes=cap)
    for pad in range(200):
        access.authorize(query(pad=f"{pad:05d}" + "x" * 60_000))
        assert access.cached_bytes <= cap
    held = sum(_cost(key) for key in access._cache)
    assert held == access.cached_bytes
    assert 10 <= len(access._cache) <= 2 * cap // 60_000


def test_an_entry_larger_than_the_whole_cache_is_not_kept() -> None:
    access = Access(APPS, cache_size=100, cache_bytes=2048)
    access.authorize(query(pad="x" * 4096))
    assert not access._cache
    access.authorize(query())
    assert len(access._cache) == 2  # as sent, and without random's value


def test_a_cached_query_string_is_refused_once_its_usersig_expires() -> None:
    clock = [1_000_000.0]
    usersig = usersig_for(REGISTERED_APP, ADMIN, now=1_000_000, expire=60)
    access = Access(APPS, cache_size=100, clock=lambda: clock[0])
    access.authorize(query(usersig=usersig))
    clock[0] = 1_000_060.0
    access.authorize(query(usersig=usersig, random="1"))  # now == time + expire: not yet expired
    clock[0] = 1_000_061.0
    assert refused_with(access, query(usersig=usersig, random="2")) == 70001
