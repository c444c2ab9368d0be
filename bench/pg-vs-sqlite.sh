#!/usr/bin/env bash
# PostgreSQL vs SQLite on the same single-server workload: one e2e test
# binary, the server in-process on SQLite (synchronous=FULL) or on a
# PostgreSQL cluster of its own (pgtest, fsync and synchronous_commit on),
# alternated round by round (BENCH_DATASTORE=sqlite|postgres), plus the
# store alone (bench/datastore BenchmarkBackends). Prints the commands,
# the machine, then per metric the median (min…max) of each backend and
# the median of the per-round ratios postgres/sqlite.
#
#   bench/pg-vs-sqlite.sh               # 5 rounds (~10 min on 2 idle cores)
#   ROUNDS=3 bench/pg-vs-sqlite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-$(mktemp -d /tmp/sigil-pgbench.XXXXXX)}
go test -c -o "$OUT/e2e.test" ./bench/e2e
go test -c -o "$OUT/ds.test" ./bench/datastore

E2E=(
	"BatchCreateEntry|-test.bench ^BenchmarkBatchCreateEntry\$ -test.benchtime 1x"
	"Attestation|-test.bench ^BenchmarkAttestation\$/^join_token\$ -test.benchtime 300x"
	"EntryToWorkload|-test.bench ^BenchmarkEntryToWorkload\$ -test.benchtime 100x"
)
echo '```'
for e in "${E2E[@]}"; do
	echo "(cd bench/e2e && BENCH_DATASTORE={sqlite,postgres} \$OUT/e2e.test -test.run '^\$' ${e#*|} -test.count 1)"
done
echo "(cd bench/datastore && \$OUT/ds.test -test.run '^\$' -test.bench ^BenchmarkBackends\$ -test.benchtime 2000x -test.count 1)"
echo '```'
echo
echo "machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go env GOVERSION), $(/usr/lib/postgresql/*/bin/postgres --version 2>/dev/null | head -1)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

raw="$OUT/raw.txt"
: >"$raw"
for r in $(seq 1 "$ROUNDS"); do
	for ds in sqlite postgres; do
		for e in "${E2E[@]}"; do
			# shellcheck disable=SC2086
			(cd bench/e2e && BENCH_DATASTORE=$ds "$OUT/e2e.test" -test.run '^$' ${e#*|} -test.count 1) 2>&1 |
				awk -v r="$r" -v ds="$ds" '/^Benchmark/ { name=$1; sub(/-[0-9]+$/, "", name); for (i = 3; i < NF; i += 2) print r, ds, name, $(i+1), $i }' >>"$raw"
		done
	done
	(cd bench/datastore && "$OUT/ds.test" -test.run '^$' -test.bench '^BenchmarkBackends$' -test.benchtime 2000x -test.count 1) 2>&1 |
		awk -v r="$r" '/^Benchmark/ { name=$1; sub(/-[0-9]+$/, "", name); split(name, p, "/"); ds=p[2]; sub("/" ds, "", name); for (i = 3; i < NF; i += 2) print r, ds, name, $(i+1), $i }' >>"$raw"
	echo "round $r done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# median of the numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s…%s", lo, hi }'; }

echo "| benchmark | metric | SQLite | PostgreSQL | paired ratio PG/SQLite |"
echo "|---|---|---|---|---|"
awk '{ print $3, $4 }' "$raw" | sort -u | while read -r bench metric; do
	[ "$metric" = "ns/op" ] && continue
	cell() { awk -v b="$bench" -v m="$metric" -v d="$1" '$3 == b && $4 == m && $2 == d { print $5 }' "$raw"; }
	s=$(cell sqlite | median)
	p=$(cell postgres | median)
	sr=$(cell sqlite | range)
	pr=$(cell postgres | range)
	ratio=$(awk -v b="$bench" -v m="$metric" '$3 == b && $4 == m { v[$1 " " $2] = $5; rounds[$1] = 1 }
		END { for (r in rounds) if (v[r " sqlite"] > 0 && (r " postgres") in v) print v[r " postgres"] / v[r " sqlite"] }' "$raw" | median)
	printf '| %s | %s | %s (%s) | %s (%s) | %.2f |\n' "$bench" "$metric" "$s" "$sr" "$p" "$pr" "$ratio"
done
echo
echo "raw: $raw" >&2
