"""Concurrent enqueueing sessions and the accounting that checks what
reached Kafka: lost, leaked (sent though rolled back), duplicated and
out-of-order messages."""

import json
import random
import threading
from collections import defaultdict

import psycopg2

from harness import consume_all


BAD = ("lost", "leaked", "duplicated", "out_of_order", "status_mismatch", "id_mismatch")


def assert_clean(counts, allow_duplicates=False):
    assert counts["delivered"] == counts["committed"] - counts["lost"]
    for bad in BAD:
        if bad == "duplicated" and allow_duplicates:
            continue
        assert counts[bad] == 0, bad


def id_header(record, name="kafka_producer.id"):
    """The message id a record carries in its id header, or None."""
    values = [v for k, v in record.headers if k == name]
    return int(values[-1]) if values else None


class Workload:
    """Sessions that each run transactions of kafka_send() calls, some of
    them rolled back.  Every message takes the next number of its key from
    a row that the transaction locks, so commit order per key is known: in
    Kafka the numbers of a key must appear as 1, 2, 3, ... with no gap and
    no repeat."""

    def __init__(self, pg, topic, keys=20, seed=1):
        self.pg = pg
        self.topic = topic
        self.keys = [f"key-{i}" for i in range(keys)]
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.committed = {}     # token -> (message id, key, number)
        self.rolled_back = set()
        self.runs = 0
        pg.query("CREATE TABLE IF NOT EXISTS workload_keys "
                 "(topic text, k text, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (topic, k))")
        pg.query("INSERT INTO workload_keys (topic, k) SELECT %s, unnest(%s::text[]) "
                 "ON CONFLICT DO NOTHING", (topic, self.keys))

    def _transaction(self, cur, session, txn, size):
        sent = []
        # keys locked in one order: concurrent transactions cannot deadlock
        with self.lock:
            keys = sorted(self.random.choices(self.keys, k=size))
        for i, key in enumerate(keys):
            token = f"{self.runs}-{session}-{txn}-{i}"
            cur.execute("UPDATE workload_keys SET n = n + 1 WHERE topic = %s AND k = %s "
                        "RETURNING n", (self.topic, key))
            number = cur.fetchone()[0]
            value = json.dumps({"t": token, "k": key, "n": number})
            cur.execute("SELECT kafka_send(%s, %s::jsonb, key => %s)",
                        (self.topic, value, key))
            sent.append((token, cur.fetchone()[0], key, number))
        return sent

    def session(self, session, transactions, max_size, rollback_rate):
        conn = self.pg.connect(autocommit=False)
        cur = conn.cursor()
        for txn in range(transactions):
            with self.lock:
                size = self.random.randint(1, max_size)
                rollback = self.random.random() < rollback_rate
            sent = self._transaction(cur, session, txn, size)
            if rollback:
                conn.rollback()
            else:
                conn.commit()
            with self.lock:
                for token, message_id, key, number in sent:
                    if rollback:
                        self.rolled_back.add(token)
                    else:
                        self.committed[token] = (message_id, key, number)
        conn.close()

    def run(self, sessions=4, transactions=50, max_size=20, rollback_rate=0.25):
        self.runs += 1
        threads = [threading.Thread(target=self.session,
                                    args=(s, transactions, max_size, rollback_rate))
                   for s in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(self.committed)


def account(pg, bootstrap, workload, name):
    """Reads the topic back and compares it with what was committed and with
    kafka.messages.  Prints one line of counts and returns them."""
    records = consume_all(bootstrap, workload.topic)
    seen = defaultdict(list)           # token -> [(partition, offset)]
    numbers = defaultdict(list)        # key -> numbers in Kafka order per partition
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = json.loads(r.value)
        seen[value["t"]].append((r.partition, r.offset))
        numbers[(r.partition, r.key.decode())].append(value["n"])
        assert r.key.decode() == value["k"], "key and value disagree"

    lost = [t for t in workload.committed if t not in seen]
    leaked = [t for t in seen if t in workload.rolled_back]
    duplicated = sum(len(places) - 1 for places in seen.values())
    out_of_order = 0
    for ns in numbers.values():
        first_seen, known = [], set()
        for n in ns:
            if n not in known:
                known.add(n)
                first_seen.append(n)
        out_of_order += sum(1 for a, b in zip(first_seen, first_seen[1:]) if b <= a)

    # every record names its kafka.messages id in the id header
    in_doubt = getattr(workload, "in_doubt", {})
    id_mismatch = 0
    for r in records:
        token = json.loads(r.value)["t"]
        sent = workload.committed.get(token) or in_doubt.get(token)
        id_mismatch += sent is None or id_header(r) != sent[0]

    status = {row[0]: row[1:] for row in pg.query(
        "SELECT id, status, \"partition\", \"offset\" FROM kafka.messages WHERE topic = %s",
        (workload.topic,))}
    wrong_status = 0
    for token, (message_id, _, _) in workload.committed.items():
        row = status.get(message_id)
        if row is None or row[0] != "delivered" or (token in seen and (row[1], row[2]) not in seen[token]):
            wrong_status += 1

    for token in lost[:10]:
        message_id = workload.committed[token][0]
        print(f"lost {token}: message {message_id}, kafka.messages says {status.get(message_id)}")
    counts = {
        "committed": len(workload.committed),
        "rolled_back": len(workload.rolled_back),
        "delivered": sum(1 for t in seen if t in workload.committed),
        "lost": len(lost),
        "leaked": len(leaked),
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "status_mismatch": wrong_status,
        "id_mismatch": id_mismatch,
    }
    if in_doubt:
        print(f"in doubt (COMMIT unanswered): {len(in_doubt)}, of them in Kafka: "
              f"{sum(1 for t in in_doubt if t in seen)}")
    print(f"\n{name}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


class OwnKeysWorkload(Workload):
    """Sessions that each own their keys and commit small transactions as
    fast as they can, with no lock to order them: what an application with
    one writer per entity does.  A session's transactions follow each other,
    so its keys' numbers must reach Kafka as 1, 2, 3, ...  Ids of concurrent
    transactions interleave, which is what puts a scan's position between a
    transaction's messages."""

    def __init__(self, pg, topic, keys_per_session=20, seed=1):
        self.pg = pg
        self.topic = topic
        self.keys_per_session = keys_per_session
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.committed = {}
        self.rolled_back = set()
        self.runs = 0
        self.numbers = defaultdict(int)     # key -> last committed number
        self.in_doubt = {}      # the same, of a COMMIT whose answer was lost

    def session(self, session, transactions, max_size, rollback_rate,
                min_size=5):
        """Stops at the first lost connection: a transaction cut short is
        rolled back, one whose COMMIT got no answer is in doubt."""
        conn = self.pg.connect(autocommit=False)
        cur = conn.cursor()
        keys = [f"s{session}-k{i}" for i in range(self.keys_per_session)]
        for txn in range(transactions):
            with self.lock:
                size = self.random.randint(min_size, max_size)
                rollback = self.random.random() < rollback_rate
                chosen = self.random.choices(keys, k=size)
            numbers = {}
            sent = []
            outcome = self.rolled_back if rollback else self.committed
            try:
                for i, key in enumerate(chosen):
                    numbers[key] = numbers.get(key, self.numbers[key]) + 1
                    token = f"{self.runs}-{session}-{txn}-{i}"
                    value = json.dumps({"t": token, "k": key, "n": numbers[key]})
                    cur.execute("SELECT kafka_send(%s, %s::jsonb, key => %s)",
                                (self.topic, value, key))
                    sent.append((token, cur.fetchone()[0], key, numbers[key]))
            except psycopg2.OperationalError:
                outcome = self.rolled_back
            try:
                if outcome is self.committed:
                    try:
                        conn.commit()
                    except psycopg2.OperationalError:
                        outcome = self.in_doubt
                elif not conn.closed:
                    conn.rollback()
            except psycopg2.OperationalError:
                pass
            with self.lock:
                for token, message_id, key, number in sent:
                    if outcome is self.rolled_back:
                        outcome.add(token)
                    else:
                        outcome[token] = (message_id, key, number)
                if outcome is self.committed:
                    self.numbers.update(numbers)
            if conn.closed:
                return
        conn.close()
