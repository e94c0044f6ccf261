"""How long `python -m service upgrade` takes on a 0.1.0 data set (UPGRADING.md).

    .venv/bin/python -m tests.bench.upgrade_time [--groups 100000] [--records 20000] [--renamed-every 100]

Starts its own redis-server on a free port, writes the data set as 0.1.0 stored it (one
group in `--renamed-every` with a GroupId that needs an escape, the first `--records`
groups with an idempotency record of 0.1.0's form), then times the upgrade, a rerun with
the marker removed (what a resumed run costs), and the downgrade.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import redis

from tests.support import RedisServer
from tests.test_upgrade import run_downgrade, run_upgrade


def seed(client: redis.Redis, groups: int, records: int, renamed_every: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(groups):
        group_id = f"g{{{i}}}" if i % renamed_every == 0 else f"g{i}"
        key = f"{{1400000000:{group_id}}}"
        pipe.hset(key, mapping={"\xff": "Public", "like": str(i), "gift": "3"})
        if i < records:
            fingerprint = hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()
            pipe.set(f"{key}:idempotency:k{i}", f"{fingerprint}\n{i}", ex=86400)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.upgrade_time")
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--renamed-every", type=int, default=100)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        seed(client, args.groups, args.records, args.renamed_every)
        print(f"{client.dbsize()} keys of release 0.1.0 written")
        started = time.perf_counter()
        report = run_upgrade(server.url)
        print(
            f"upgrade: {time.perf_counter() - started:.1f} s "
            f"({report.renamed} groups renamed, {report.records_converted} records converted)"
        )
        client.delete("{storage-format}")
        started = time.perf_counter()
        run_upgrade(server.url)
        print(f"rerun with nothing left to move: {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        back = run_downgrade(server.url)
        print(f"downgrade: {time.perf_counter() - started:.1f} s ({back.renamed} renamed back)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
