"""Writers that keep the local stores busy while dbops backs up, drills and restores, as
production is: inserts, updates and deletes in Postgres and Mongo, SET/HSET/DEL/EXPIRE in
several Redis databases, messages produced to a Kafka topic.

Each writer is a thread that loops until stopped, counts its operations and keeps its
errors; :func:`busy` starts them, and on exit stops them and asserts each really wrote
(a writer that did nothing would make the test prove nothing).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.support import mongo_client, pg_connect


class Writer(threading.Thread):
    def __init__(self, name: str, step: Callable[[random.Random], None], *, pause: float = 0.002) -> None:
        super().__init__(name=f"writer-{name}", daemon=True)
        self.label = name
        self.step = step
        self.pause = pause
        self.stopped = threading.Event()
        self.operations = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(self.label)
        while not self.stopped.is_set():
            try:
                self.step(rng)
                self.operations += 1
            except Exception as exc:  # keep going: a store busy with a restore may refuse one write
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
            time.sleep(self.pause)


def postgres_writer(conn: dict, database: str) -> Writer:
    """Inserts, updates and deletes rows of ``live_writes`` (created here), one commit each."""
    with pg_connect(conn, database, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS live_writes (id bigserial PRIMARY KEY, body text, n int)")
        c.execute("INSERT INTO live_writes (body, n) SELECT md5(g::text), g FROM generate_series(1, 200) g")
    session = pg_connect(conn, database, autocommit=True)

    def step(rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.5:
            session.execute(
                "INSERT INTO live_writes (body, n) VALUES (md5(random()::text), %s)", [rng.randint(0, 9999)]
            )
        elif roll < 0.8:
            session.execute(
                "UPDATE live_writes SET n = n + 1 WHERE id = (SELECT min(id) + %s FROM live_writes)",
                [rng.randint(0, 50)],
            )
        else:
            session.execute("DELETE FROM live_writes WHERE id = (SELECT min(id) FROM live_writes)")

    writer = Writer(f"postgres/{database}", step)
    writer.close = session.close  # type: ignore[attr-defined]
    return writer


def mongo_writer(conn: dict, database: str) -> Writer:
    client = mongo_client(conn)
    collection = client[database]["live_writes"]
    collection.insert_many([{"n": i, "body": "x" * (i % 13)} for i in range(200)])

    def step(rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.5:
            collection.insert_one({"n": rng.randint(0, 9999), "body": "new"})
        elif roll < 0.8:
            collection.update_one({"n": {"$gte": rng.randint(0, 200)}}, {"$inc": {"n": 1}, "$set": {"body": "changed"}})
        else:
            collection.delete_one({"n": {"$gte": rng.randint(0, 200)}})

    writer = Writer(f"mongo/{database}", step)
    writer.close = client.close  # type: ignore[attr-defined]
    return writer


def redis_writer(conn: dict, prefix: str, databases: tuple[int, ...] = (0, 3, 9)) -> Writer:
    import redis

    clients = {
        db: redis.Redis(host=conn["host"], port=conn["port"], password=conn.get("password"), db=db) for db in databases
    }

    def step(rng: random.Random) -> None:
        client = clients[rng.choice(databases)]
        key = f"{prefix}{rng.randint(0, 300)}"
        roll = rng.random()
        if roll < 0.4:
            client.set(key, rng.randbytes(rng.randint(1, 64)))
        elif roll < 0.6:
            client.hset(key + ":h", mapping={"a": rng.randint(0, 9), "b": "x"})
        elif roll < 0.8:
            client.delete(key, key + ":h")
        else:
            client.set(key + ":ttl", "short-lived", px=rng.randint(50, 3000))

    writer = Writer(f"redis/{prefix}", step)
    writer.close = lambda: [c.close() for c in clients.values()]  # type: ignore[attr-defined]
    return writer


def kafka_writer(conn: dict, topic: str) -> Writer:
    from confluent_kafka import Producer

    producer = Producer(dict(conn["extra"]))

    def step(rng: random.Random) -> None:
        producer.produce(topic, value=rng.randbytes(32))
        producer.poll(0)

    writer = Writer(f"kafka/{topic}", step, pause=0.01)
    writer.close = lambda: producer.flush(10)  # type: ignore[attr-defined]
    return writer


@contextmanager
def busy(*writers: Writer, min_operations: int = 20) -> Iterator[tuple[Writer, ...]]:
    """Run ``writers`` for the duration of the block; each must have written meanwhile."""
    for writer in writers:
        writer.start()
    try:
        yield writers
    finally:
        for writer in writers:
            writer.stopped.set()
        for writer in writers:
            writer.join(timeout=30)
            writer.close()  # type: ignore[attr-defined]
    for writer in writers:
        assert writer.operations >= min_operations, (
            f"{writer.label} wrote only {writer.operations} times (errors: {writer.errors[:3]}): the store was not busy"
        )
