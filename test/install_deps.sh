#!/bin/bash
# Installs the Debian 12 packages kafka_producer needs to build and test.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends \
	build-essential pkg-config ca-certificates \
	postgresql-15 postgresql-server-dev-15 \
	librdkafka-dev libavro-dev libcurl4-openssl-dev kcat \
	python3-kafka python3-lz4 python3-zstandard python3-snappy \
	python3-psycopg2 python3-pytest python3-avro python3-yaml >/dev/null
