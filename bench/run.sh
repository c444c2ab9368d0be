#!/usr/bin/env bash
# Runs every Sigil benchmark with fixed flags and prints one markdown block:
# machine info, medians of every metric (benchstat too, when it installs),
# the goals table with ratios against the raw-crypto baseline of the same
# run, and bench/rss.sh (memory, idle CPU, binary sizes).
#
#   bench/run.sh > results.md            # everything, -count 5 (~10-15 min on 2 idle cores)
#   COUNT=3 QUICK=1 bench/run.sh         # shorter benchtimes, for a smoke run
#   ONLY=e2e,rss bench/run.sh            # only these (e2e datastore ca nested partition tpm attest federation ha k8spsat controller cloud rss)
#   SKIP=partition bench/run.sh          # all but these
#
# Raw `go test` output is kept in $OUT (printed at the end). Progress goes to
# stderr; stdout is the markdown.
set -uo pipefail

cd "$(dirname "$0")/.."
COUNT=${COUNT:-5}
QUICK=${QUICK:-0}
ONLY=${ONLY:-}
SKIP=${SKIP:-}
OUT=${OUT:-$(mktemp -d /tmp/sigil-bench.XXXXXX)}
mkdir -p "$OUT"

log() { echo "run.sh: $*" >&2; }
# want NAME: NAME is in ONLY (space or comma separated; empty = all) and not in SKIP.
want() {
	[[ " ${SKIP//,/ } " != *" $1 "* ]] || return 1
	[ -z "$ONLY" ] || [[ " ${ONLY//,/ } " == *" $1 "* ]]
}

# bt NORMAL QUICK: the benchtime for this mode.
bt() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# shellquote ARGS...: the command line, single-quoting what needs it.
shellquote() {
	local a out=()
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
	done
	echo "${out[*]}"
}

# run NAME PKG BENCH BENCHTIME [COUNT]: one `go test -bench` invocation,
# output appended to $OUT/NAME.txt (and to the combined file).
FAILED=()
CMDS=()
run() {
	local name=$1 pkg=$2 bench=$3 benchtime=$4 count=${5:-$COUNT}
	if [ ! -d "$pkg" ]; then
		log "skip $pkg (not present)"
		return
	fi
	local cmd=(go test "./$pkg" -run '^$' -bench "$bench" -benchtime "$benchtime" -count "$count" -timeout 20m)
	local quoted
	quoted=$(shellquote "${cmd[@]}")
	[[ " ${CMDS[*]} " == *" $quoted "* ]] || CMDS+=("$quoted")
	log "$quoted"
	local status=0
	"${cmd[@]}" >"$OUT/$name.run" 2>&1 || status=$?
	# A name run in several rounds appends each round's output.
	cat "$OUT/$name.run" >>"$OUT/$name.txt"
	cat "$OUT/$name.run" >>"$OUT/all.txt"
	if [ "$status" != 0 ]; then
		FAILED+=("$name")
		log "FAILED: $name (see $OUT/$name.txt)"
	fi
}

# Machine info first: the figures mean little without it.
{
	echo "## Sigil benchmarks — $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| commit | $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)') |"
	echo "| nproc | $(nproc) |"
	echo "| CPU | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |"
	echo "| memory | $(awk '/^MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo) |"
	echo "| go | $(go version | sed 's/^go version //') |"
	echo "| load average at start | $(cut -d' ' -f1-3 /proc/loadavg) |"
	echo "| flags | COUNT=$COUNT QUICK=$QUICK ${ONLY:+ONLY=$ONLY} ${SKIP:+SKIP=$SKIP} |"
	echo
} >"$OUT/header.md"
cat "$OUT/header.md"

if want e2e; then
	run e2e-signing bench/e2e '^BenchmarkSigning$' "$(bt 2s 300ms)"
	run e2e-entries bench/e2e '^BenchmarkBatchCreateEntry$' 1x
	run e2e-workload bench/e2e '^BenchmarkWorkloadAPI$' "$(bt 2s 300ms)"
	run e2e-propagation bench/e2e '^BenchmarkEntryToWorkload$' "$(bt 300x 50x)"
	run e2e-start bench/e2e '^BenchmarkAgentStart$' "$(bt 200x 30x)"
	run e2e-attestation bench/e2e '^BenchmarkAttestation$' "$(bt 300x 100x)"
	run e2e-first-svid bench/e2e '^BenchmarkAgentFirstSVID$' "$(bt 100x 20x)"
	run e2e-sds bench/e2e '^BenchmarkSDS$' "$(bt 300x 50x)"
	run e2e-attestors bench/e2e '^BenchmarkWorkloadAttestors$' "$(bt 2s 300ms)"
fi
# The other engineers' packages, with the flags their headers document.
want datastore && run datastore bench/datastore . "$(bt 10000x 1000x)"
want ca && run ca bench/ca . "$(bt 1s 200ms)"
want nested && run nested bench/nested . "$(bt 1s 200ms)"
want partition && run partition bench/partition . 3x "$(bt "$COUNT" 1)"
if want tpm; then
	run tpm bench/tpm . "$(bt 200x 30x)"
	run e2e-tpm-attest bench/e2e '^BenchmarkTPMAttestation$' "$(bt 300x 50x)"
	run e2e-tpm-start bench/e2e '^BenchmarkTPMAgentStart$' "$(bt 100x 20x)"
fi
want attest && run attest bench/attest . "$(bt 300x 100x)"
# Cloud node attestors: end to end against join_token of the same run, and
# the server's signature check alone (real AWS document; fake Google and
# Azure AD tokens), in alternated rounds.
if want cloud; then
	for _ in $(seq "$COUNT"); do
		run cloud-attestation bench/e2e '^BenchmarkCloudAttestation$' "$(bt 300x 50x)" 1
		run cloud-verify-aws internal/attest/node/awsiid '^BenchmarkVerify$' "$(bt 2000x 200x)" 1
		run cloud-verify-gcp internal/attest/node/gcpiit '^BenchmarkVerify$' "$(bt 2000x 200x)" 1
		run cloud-verify-azure internal/attest/node/azuremsi '^BenchmarkVerify$' "$(bt 2000x 200x)" 1
		run cloud-verify-azure-imds internal/attest/node/azureimds '^BenchmarkVerify$' "$(bt 2000x 200x)" 1
	done
fi
# A real kube-apiserver (tools/kube/build.sh); without it the benchmark skips.
want k8spsat && run k8spsat bench/k8spsat . "$(bt 200x 30x)"
# sigil-controller: 1,000 pods -> entries (it lives with the controller's
# tests: only internal/controller may link controller-runtime).
want controller && run controller internal/controller/manager Controller1000Pods "$(bt 3x 1x)"
if want federation; then
	run federation-endpoint bench/federation '^BenchmarkBundleEndpoint$' "$(bt 10x 2x)"
	# Each scheduled iteration waits for the peer's refresh (hint 5s).
	run federation-rotation bench/federation '^BenchmarkRotationToFederatedWorkload$' "$(bt 20x 5x)" "$(bt 3 1)"
fi
if want ha; then
	# Alternated rounds (-count 1 each, COUNT times): every round runs each
	# variant and its baseline (two servers / one, notify / poll-only)
	# back to back, so a change of load hits both alike.
	for _ in $(seq 1 "$COUNT"); do
		run ha-writes bench/ha '^BenchmarkHAEntryWrites$' "$(bt 2000x 300x)" 1
		run ha-propagation bench/ha '^BenchmarkHAEntryToWorkload$' "$(bt 60x 20x)" 1
		run ha-ban bench/ha '^BenchmarkHABan$' "$(bt 60x 20x)" 1
		run ha-failover bench/ha '^BenchmarkHAFailover$' "$(bt 10x 3x)" 1
	done
fi

echo "load average after the Go benchmarks: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "### Commands"
echo
echo '```'
for c in "${CMDS[@]}"; do echo "$c"; done
want rss && echo "bench/rss.sh; GOFLAGS=-tags=grpcnotrace SKIP_SIZES=1 bench/rss.sh"
echo '```'
echo
if [ -s "$OUT/all.txt" ]; then
	echo "### Medians (-count $COUNT)"
	echo
	awk -f bench/summarize.awk "$OUT/all.txt"
	echo
	log "benchstat (go run golang.org/x/perf/cmd/benchstat@latest)..."
	if timeout 300 go run golang.org/x/perf/cmd/benchstat@latest "$OUT/all.txt" >"$OUT/benchstat.txt" 2>"$OUT/benchstat.err"; then
		echo "<details><summary>benchstat</summary>"
		echo
		echo '```'
		cat "$OUT/benchstat.txt"
		echo '```'
		echo "</details>"
	else
		echo "(benchstat unavailable: $(head -n1 "$OUT/benchstat.err"); medians above computed by bench/summarize.awk)"
	fi
	echo
fi

if want rss; then
	log "bench/rss.sh"
	if ! bench/rss.sh >"$OUT/rss.md" 2>"$OUT/rss.err"; then
		FAILED+=(rss)
		log "FAILED: rss (see $OUT/rss.err)"
	fi
	cat "$OUT/rss.md"
	log "bench/rss.sh with GOFLAGS=-tags=grpcnotrace"
	if GOFLAGS=-tags=grpcnotrace SKIP_SIZES=1 bench/rss.sh >"$OUT/rss-notrace.md" 2>"$OUT/rss-notrace.err"; then
		echo "With \`GOFLAGS=-tags=grpcnotrace\` (gRPC without golang.org/x/net/trace and html/template):"
		echo
		tail -n +2 "$OUT/rss-notrace.md"
	else
		FAILED+=(rss-notrace)
	fi
fi

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ${#FAILED[@]} -gt 0 ]; then
	echo
	echo "**Failed:** ${FAILED[*]} (raw output in $OUT)"
fi
log "raw output in $OUT"
[ ${#FAILED[@]} -eq 0 ]
