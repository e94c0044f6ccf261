"""Following a promotion before the sentinels announce it (README, "Durability"): on the
leader's `+selected-slave`, the chosen replica is followed once it answers ROLE as master,
until the sentinels name it themselves, name another node, or it is a replica again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError

from service.storage.store import open_store
from service.storage.transports import sentinel as sentinel_module
from service.storage.transports import sentinel_promotion
from service.storage.transports.acks import Ack
from service.storage.transports.sentinel import SentinelTransport
from service.storage.transports.sentinel_acks import SentinelAcks
from service.storage.transports.sentinel_promotion import (
    FollowingSentinel,
    Promoted,
    Promotions,
    selected_replica,
)
from service.storage.transports.subscriber import Address
from service.storage.urls import parse
from tests.support import free_port
from tests.test_sentinel_switch import CALL, until
from tests.topologies import MASTER_NAME, ReplicatedRedis, SentinelSetup

THIRD: Address = ("127.0.0.1", 1)


@pytest.fixture
def pair() -> Iterator[ReplicatedRedis]:
    topology = ReplicatedRedis(count=1).start()
    yield topology
    topology.stop()


def addresses(pair: ReplicatedRedis) -> Promoted:
    assert pair.master is not None
    return Promoted(old=("127.0.0.1", pair.master.port), new=("127.0.0.1", pair.replicas[0].port))


def connect(address: Address) -> aioredis.Redis:
    return aioredis.Redis(host=address[0], port=address[1], socket_timeout=0.5, socket_connect_timeout=0.5)


def promote(pair: ReplicatedRedis) -> None:
    with pair.replicas[0].client() as client:
        client.execute_command("REPLICAOF", "NO", "ONE")


def demote(pair: ReplicatedRedis) -> None:
    assert pair.master is not None
    with pair.replicas[0].client() as client:
        client.execute_command("REPLICAOF", "127.0.0.1", pair.master.port)


def test_a_selected_replica_is_not_followed_while_it_answers_role_as_a_replica(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)

    async def scenario() -> tuple[Address | None, Address | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.sleep(0.3)  # a dozen probes
        answers = promotions.resolve(promotion.old), promotions.resolve(None)
        await promotions.close()
        return answers

    assert asyncio.run(scenario()) == (promotion.old, None)


def test_a_selected_replica_is_followed_once_it_answers_role_as_master(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)
    changes: list[int] = []

    async def scenario() -> tuple[Address | None, Address | None, int]:
        promotions = Promotions(connect, lambda: changes.append(1))
        promotions.selected(promotion)
        await asyncio.sleep(0.1)
        await asyncio.to_thread(promote, pair)
        assert await until(lambda: promotions.current is not None)
        # The sentinels still name the old master, or none (it is down): the replica.
        answers = promotions.resolve(promotion.old), promotions.resolve(None), promotions.followed
        await promotions.close()
        return answers

    assert asyncio.run(scenario()) == (promotion.new, promotion.new, 1)
    assert changes, "the transport was not told to ask again"


def test_the_sentinels_naming_the_replica_ends_the_early_follow(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)

    async def scenario() -> tuple[Address | None, Address | None, bool]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.to_thread(promote, pair)
        assert await until(lambda: promotions.current is not None)
        caught_up = promotions.resolve(promotion.new)
        # From now on the sentinels' word alone, whatever they say.
        later = promotions.resolve(promotion.old)
        assert promotions._probe is not None
        ended = await until(promotions._probe.done, 2.0)
        await promotions.close()
        return caught_up, later, ended

    assert asyncio.run(scenario()) == (promotion.new, promotion.old, True)


def test_the_sentinels_naming_a_third_node_ends_the_early_follow(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)

    async def scenario() -> tuple[Address | None, Promoted | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.to_thread(promote, pair)
        assert await until(lambda: promotions.current is not None)
        named = promotions.resolve(THIRD)
        current = promotions.current
        await promotions.close()
        return named, current

    assert asyncio.run(scenario()) == (THIRD, None)


def test_a_followed_replica_that_is_a_replica_again_is_let_go(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)

    async def scenario() -> Address | None:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.to_thread(promote, pair)
        assert await until(lambda: promotions.current is not None)
        await asyncio.to_thread(demote, pair)
        assert await until(lambda: promotions.current is None, 3.0)
        answer = promotions.resolve(promotion.old)
        await promotions.close()
        return answer

    assert asyncio.run(scenario()) == promotion.old


def test_a_promotion_is_followed_ahead_of_the_sentinels_for_at_most_ahead_seconds(
    pair: ReplicatedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sentinel_promotion, "_AHEAD_SECONDS", 0.6)
    monkeypatch.setattr(sentinel_promotion, "_CHECK_EVERY", 0.05)
    promotion = addresses(pair)

    async def scenario() -> tuple[bool, bool, Address | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.to_thread(promote, pair)
        followed = await until(lambda: promotions.current is not None, 0.5)
        # The sentinels never name it: after _AHEAD_SECONDS their word is followed alone.
        assert promotions._probe is not None
        ended = await until(promotions._probe.done, 2.0)
        answer = promotions.resolve(promotion.old)
        await promotions.close()
        return followed, ended, answer

    assert asyncio.run(scenario()) == (True, True, promotion.old)


def test_a_selected_replica_that_never_answers_master_is_asked_for_at_most_probe_seconds(
    pair: ReplicatedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sentinel_promotion, "_PROBE_SECONDS", 0.3)
    promotion = addresses(pair)

    async def scenario() -> tuple[bool, Promoted | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        assert promotions._probe is not None
        ended = await until(promotions._probe.done, 2.0)
        current = promotions.current
        await promotions.close()
        return ended, current

    assert asyncio.run(scenario()) == (True, None)


def test_a_selected_replica_that_cannot_be_reached_is_not_followed() -> None:
    promotion = Promoted(old=THIRD, new=("127.0.0.1", free_port()))

    async def scenario() -> tuple[Address | None, Promoted | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.sleep(0.3)
        answer = promotions.resolve(promotion.old), promotions.current
        await promotions.close()
        return answer

    assert asyncio.run(scenario()) == (THIRD, None)


def test_a_new_selection_replaces_the_one_followed(pair: ReplicatedRedis) -> None:
    promotion = addresses(pair)
    other = Promoted(old=promotion.new, new=THIRD)

    async def scenario() -> tuple[Promoted | None, Address | None]:
        promotions = Promotions(connect, lambda: None)
        promotions.selected(promotion)
        await asyncio.to_thread(promote, pair)
        assert await until(lambda: promotions.current is not None)
        promotions.selected(other)  # a second failover, to a node that does not answer
        await asyncio.sleep(0.1)
        answer = promotions.current, promotions.resolve(promotion.old)
        await promotions.close()
        return answer

    assert asyncio.run(scenario()) == (None, promotion.old)


def test_with_the_old_master_down_the_followed_replica_is_the_answer() -> None:
    async def scenario() -> tuple[object, bool]:
        promotions = Promotions(connect, lambda: None)
        sentinel = FollowingSentinel([], promotions)  # no sentinel: "no master found", as when it is down
        promotions.current = Promoted(old=("127.0.0.1", 2), new=THIRD)
        early = await sentinel.discover_master(MASTER_NAME)
        promotions.current = None
        try:
            await sentinel.discover_master(MASTER_NAME)
        except MasterNotFoundError:
            raised = True
        else:
            raised = False
        return early, raised

    assert asyncio.run(scenario()) == (THIRD, True)


@pytest.mark.parametrize(
    "data",
    [
        b"slave 127.0.0.1:7001 127.0.0.1 7001 @ othermaster 127.0.0.1 7000",
        b"slave 127.0.0.1:7001 127.0.0.1 notaport @ mymaster 127.0.0.1 7000",
        b"master mymaster 127.0.0.1 7000",
        b"slave 127.0.0.1:7001 127.0.0.1 7001 mymaster 127.0.0.1 7000 extra",
        b"\xff\xfe",
        "slave 127.0.0.1:7001 127.0.0.1 7001 @ mymaster 127.0.0.1 7000",
        None,
    ],
)
def test_a_selection_for_another_master_or_malformed_is_ignored(data: object) -> None:
    assert selected_replica(data, b"mymaster") is None


def test_a_selection_names_the_old_master_and_the_replica() -> None:
    data = b"slave 127.0.0.1:7001 127.0.0.1 7001 @ mymaster 127.0.0.1 7000"
    assert selected_replica(data, b"mymaster") == Promoted(old=("127.0.0.1", 7000), new=("127.0.0.1", 7001))


@pytest.fixture
def setup() -> Iterator[SentinelSetup]:
    topology = SentinelSetup().start()
    yield topology
    topology.stop()


def test_a_killed_master_is_followed_to_the_replica_the_sentinels_promote(
    setup: SentinelSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sentinel_module, "_WATCH_SECONDS", 60.0)
    assert setup.master is not None
    assert setup.replica is not None
    master, replica = setup.master, setup.replica

    async def scenario() -> tuple[int, object]:
        store = open_store(setup.url, timeout=1.0)
        transport = store.transport
        assert isinstance(transport, SentinelTransport)
        await store.run(CALL)  # the watcher and the subscriptions start
        await asyncio.sleep(0.5)
        master.stop()
        # Heard from the sentinel's +selected-slave, probed, followed.
        await until(lambda: transport.promotions.followed > 0, 15.0)
        for _ in range(100):
            try:
                await store.run(CALL)
                break
            except Exception:  # 10002 until the replica takes writes
                await asyncio.sleep(0.1)
        followed, address = transport.promotions.followed, transport.master_address
        await store.close()
        return followed, address

    followed, address = asyncio.run(scenario())
    assert followed == 1
    assert tuple(address) == ("127.0.0.1", replica.port)  # type: ignore[arg-type]


class HangingFirstRole:
    """A client whose first ROLE never answers (the old master, gone without a reset)."""

    def __init__(self) -> None:
        self.asked = 0

    async def role(self) -> list[object]:
        self.asked += 1
        if self.asked == 1:
            await asyncio.Event().wait()
        return [b"master", 0, []]


def test_a_role_in_flight_to_the_old_master_does_not_hold_calls_after_a_switch() -> None:
    async def scenario() -> tuple[bool, int]:
        client = HangingFirstRole()
        acks = SentinelAcks(client, timeout=5.0, ack=Ack(replicas=True, fsync=False, wait=0.5))  # type: ignore[arg-type]
        acks._task = asyncio.ensure_future(acks._follow())
        await asyncio.sleep(0.05)  # the first ROLE is in flight, and hangs
        acks.ask_again()  # the watcher moved to the new master
        known = await until(acks._known.is_set, 0.5)
        acks.close()
        return known, client.asked

    assert asyncio.run(scenario()) == (True, 2)


def test_a_promotion_followed_while_the_sentinels_are_asked_moves_at_once_not_at_the_next_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sentinel_module, "_WATCH_SECONDS", 60.0)
    old, new = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())

    async def scenario() -> object:
        url = parse(f"redis+sentinel://127.0.0.1:{free_port()}/{MASTER_NAME}")
        transport = SentinelTransport(url, timeout=1.0, max_pending=100)
        answers = [old, old, new]

        async def discover(_: str) -> Address:
            if len(answers) == 2:  # the second round: followed while it asks
                transport.promotions._on_change()
            await asyncio.sleep(0.01)
            return answers.pop(0) if len(answers) > 1 else answers[0]

        monkeypatch.setattr(transport.sentinel, "discover_master", discover)
        transport._watch_master()
        await until(lambda: len(answers) == 2)
        transport._ask_now.set()  # a fault: the second round
        await until(lambda: transport.master_address == new, 1.0)
        address = transport.master_address
        await transport.close()
        return address

    assert asyncio.run(scenario()) == new
