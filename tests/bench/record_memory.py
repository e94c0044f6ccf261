"""Redis memory per Idempotency-Key record (README, "How it stores counters").

    .venv/bin/python -m tests.bench.record_memory [--records 20000]

On a redis-server of its own: update_counters.lua as the service calls it, `--records`
times with and then without an Idempotency-Key, on 100 groups; the difference of
used_memory, per call, is what a record costs for the `idempotency_ttl` it lives (24 h by
default). Two shapes: a
36-character key (a UUID) with 2 counters, and the largest a call can make (a
128-character key, 20 counters of 19 digits).
"""

from __future__ import annotations

import argparse
import secrets

import redis

from service.api.commands import _fingerprint
from service.storage.scripts import UPDATE_COUNTERS
from tests.support import RedisServer


def used_by(client: redis.Redis, sha: str, records: int, key_length: int, counters: int, keyed: bool) -> int:
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    pairs: list[str | int] = []
    for n in range(counters):
        pairs += (f"k{n}", 10**18 + n)
    for i in range(records):
        group = f"{{1400000000:live-{i % 100}}}"
        record, fingerprint = group, ""
        if keyed:
            record = f"{group}:idempotency:{secrets.token_hex(key_length)[:key_length]}"
            fingerprint = _fingerprint("update_group_counter", ["set", *pairs, i])
        pipe.evalsha(
            sha,
            3,
            group,
            group,
            record,
            "0",
            "0",
            fingerprint,
            secrets.token_hex(8),
            "",
            "",
            "set",
            86400,
            *pairs,
        )
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return int(client.info("memory")["used_memory"]) - before


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.record_memory")
    parser.add_argument("--records", type=int, default=20_000)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        sha = client.script_load(UPDATE_COUNTERS.source)
        for key_length, counters in ((36, 2), (128, 20)):
            keyed = used_by(client, sha, args.records, key_length, counters, keyed=True)
            bare = used_by(client, sha, args.records, key_length, counters, keyed=False)
            print(
                f"{key_length}-character Idempotency-Key, {counters} counters: "
                f"{(keyed - bare) / args.records:.0f} bytes of used_memory per record"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
