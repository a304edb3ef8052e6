# kafka_producer: PGXS build
EXTENSION = kafka_producer
MODULE_big = kafka_producer
OBJS = \
	src/kafka_producer.o \
	src/settings.o \
	src/producer_settings.o \
	src/shmem.o \
	src/committing.o \
	src/recorded_offsets.o \
	src/reconcile.o \
	src/tables.o \
	src/backlog.o \
	src/wait.o \
	src/message.o \
	src/drop_guard.o \
	src/delivery_hold.o \
	src/publish_admin.o \
	src/enqueue.o \
	src/worker.o \
	src/launcher.o \
	src/producer.o \
	src/outbox.o \
	src/notify.o \
	src/stats.o \
	src/commit_wait.o \
	src/sync_send.o \
	src/topic_config.o \
	src/avro.o \
	src/send_avro.o \
	src/change_json.o \
	src/connect_schema.o \
	src/publish.o \
	src/snapshot.o \
	src/schema_registry.o

DATA = $(wildcard sql/kafka_producer--*.sql)

REGRESS = setup send config retry wait sync topic_config avro publish roles hold security drop
REGRESS_OPTS = --inputdir=. --temp-config=test/regress.conf --temp-instance=tmp_check \
	--load-extension=kafka_producer

KAFKA_PKGS = rdkafka
AVRO_PKGS = avro-c
CURL_PKGS = libcurl
PG_CPPFLAGS = -Isrc $(shell pkg-config --cflags $(KAFKA_PKGS) $(AVRO_PKGS) $(CURL_PKGS))
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror
SHLIB_LINK = $(shell pkg-config --libs $(KAFKA_PKGS) $(AVRO_PKGS) $(CURL_PKGS))

EXTRA_CLEAN = test/mock_cluster test/produce_flush tmp_check results regression.diffs regression.out

# JIT inlining of this module buys nothing; skip the bitcode (and the clang dependency)
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The librdkafka mock cluster the end-to-end tests and the demo run against.
test/mock_cluster: test/mock_cluster.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $< $(shell pkg-config --cflags --libs $(KAFKA_PKGS))

# The bare librdkafka baseline of the kafka_send_sync() latency benchmark.
test/produce_flush: test/produce_flush.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $< $(shell pkg-config --cflags --libs $(KAFKA_PKGS))

.PHONY: test-e2e
test-e2e: test/mock_cluster
	/usr/bin/python3 -m pytest -v test/
