#!/bin/bash
# Builds and installs kafka_producer, then shows it working end to end on
# this machine: a local mock Kafka cluster, a throwaway PostgreSQL with the
# extension preloaded, kafka_send() in committed and rolled-back
# transactions, kafka.messages, and the topic read back with kcat.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

bash "$repo/test/install_deps.sh"
make -C "$repo" -s
$sudo make -C "$repo" -s install
make -C "$repo" -s test/mock_cluster

work=$(mktemp -d /tmp/kafka_producer_demo.XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
	chown postgres "$work"
	as_pg=(runuser -u postgres --)
fi
bindir=$(pg_config --bindir)
mock_pid=""
cleanup() {
	"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
	[ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a mock Kafka cluster (3 brokers on loopback)"
mkfifo "$work/mock.in"
exec 3<>"$work/mock.in"
"$repo/test/mock_cluster" 3 <"$work/mock.in" >"$work/mock.out" &
mock_pid=$!
until [ -s "$work/mock.out" ]; do sleep 0.1; done
bootstrap=$(head -1 "$work/mock.out")
echo "bootstrap servers: $bootstrap"

echo "== starting PostgreSQL with shared_preload_libraries = 'kafka_producer'"
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -A trust -U postgres >/dev/null
cat >>"$work/data/postgresql.conf" <<EOF
shared_preload_libraries = 'kafka_producer'
kafka.bootstrap_servers = '$bootstrap'
kafka.statistics_interval_ms = 500
listen_addresses = ''
unix_socket_directories = '$work'
port = 5439
EOF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/postgresql.log" -w start >/dev/null

psql() { command psql -h "$work" -p 5439 -U postgres -X -v ON_ERROR_STOP=1 "$@"; }

echo "== the quick start"
psql -e <<'SQL'
CREATE EXTENSION kafka_producer;

BEGIN;
SELECT kafka_send('orders', '{"id": 1, "total": 9.90}'::jsonb, key => '1');
SELECT kafka_send('orders', '{"id": 2, "total": 5.00}'::jsonb, key => '2',
				  headers => '{"source": "demo"}');
COMMIT;

BEGIN;
SELECT kafka_send('orders', '{"id": 3}'::jsonb, key => '3');
ROLLBACK;

-- wait until what this session committed is delivered (the first message
-- to a new topic waits for the topic's creation, about a second)
SELECT kafka_flush('10 seconds');
SELECT id, topic, convert_from(key, 'UTF8') AS key, status, "partition", "offset",
	   attempts, delivered_at - enqueued_at AS latency
  FROM kafka.messages ORDER BY id;

-- the brokers the producer discovered, and where the partitions are
SELECT pg_sleep(0.6);
SELECT * FROM kafka_brokers();
SELECT * FROM kafka_topics();
SQL

echo "== topic 'orders' read back from Kafka with kcat (the rolled-back order 3 is absent)"
kcat -C -b "$bootstrap" -t orders -e -q -f 'partition %p offset %o key %k headers %h: %s\n'
