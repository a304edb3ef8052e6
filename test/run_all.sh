#!/bin/bash
# The whole test suite: installs what it needs, builds and installs the
# extension, then runs the pg_regress suite and the end-to-end tests
# against a mock Kafka cluster.  Ends with one line: "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

bash "$repo/test/install_deps.sh" || exit 1
make -C "$repo" -s || exit 1
$sudo make -C "$repo" -s install || exit 1

# PostgreSQL refuses to run as root: as root, test a copy owned by postgres.
work="$repo"
as_tester=()
if [ "$(id -u)" -eq 0 ]; then
	work=$(mktemp -d /tmp/kafka_producer_test.XXXXXX)
	cp -a "$repo"/. "$work"
	chown -R postgres "$work"
	as_tester=(runuser -u postgres --)
fi
make -C "$work" -s test/mock_cluster || exit 1

"${as_tester[@]}" make -C "$work" installcheck 2>&1 | tee "$work/regress.log"
[ -f "$work/regression.diffs" ] && cat "$work/regression.diffs"
(cd "$work/test" && "${as_tester[@]}" /usr/bin/python3 -m pytest -v -s -p no:cacheprovider \
	-rs . 2>&1) | tee "$work/pytest.log"

passed=0
failed=0
if line=$(grep -E "All [0-9]+ tests passed" "$work/regress.log"); then
	passed=$(echo "$line" | grep -oE "[0-9]+" | head -1)
elif line=$(grep -E "[0-9]+ of [0-9]+ tests failed" "$work/regress.log"); then
	read -r f total < <(echo "$line" | grep -oE "[0-9]+" | head -2 | tr '\n' ' ')
	failed=$f
	passed=$((total - f))
else
	failed=$((failed + 1))
fi
summary=$(tail -1 "$work/pytest.log")
p=$(echo "$summary" | grep -oE "[0-9]+ passed" | grep -oE "[0-9]+" || echo 0)
f=$(echo "$summary" | grep -oE "[0-9]+ (failed|errors?)" | awk '{s += $1} END {print s + 0}')
[ -n "$p" ] || p=0
[ -n "$f" ] || f=0
[ "$p" -eq 0 ] && [ "$f" -eq 0 ] && f=1
passed=$((passed + p))
failed=$((failed + f))
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
