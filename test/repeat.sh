#!/bin/bash
# Runs one pytest selection of test/ N times (not part of the suite) and
# counts the runs whose counts line shows any disorder, loss or duplicate.
#   test/repeat.sh 20 test_ordering.py -k keep_key_order
# As root, run it from a copy owned by postgres, as test/run_all.sh does.
set -uo pipefail
runs=$1
shift
cd "$(dirname "$0")"
bad=0
for i in $(seq 1 "$runs"); do
	line=$(/usr/bin/python3 -m pytest -x -s -p no:cacheprovider "$@" 2>&1 |
		grep -E "(lost|out_of_order)=" | tr '\n' ' ')
	echo "run $i: $line"
	echo "$line" | grep -qE "lost=[1-9]|out_of_order=[1-9]|duplicated=[1-9]|status_mismatch=[1-9]|^$" && bad=$((bad + 1))
done
echo "$bad of $runs runs with lost, duplicated, out-of-order or mismatched messages"
