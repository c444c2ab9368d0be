#!/usr/bin/env bash
# Memory, idle CPU and binary size of the real binaries.
#
# Builds sigil-server and sigil-agent, starts a server (config file in a
# temp dir, SQLite, disk keys) and an agent (attested with a join token,
# one entry for this uid, its SVID fetched once), lets them sit idle, then
# prints VmRSS/VmHWM of both, their CPU time over an idle window, and the
# size of sigil-agent for linux/amd64, arm64, arm (GOARM=7) and riscv64
# (CGO_ENABLED=0, with and without -ldflags='-s -w') as a markdown block.
#
#   bench/rss.sh                      # ~10 s settle + 30 s idle window + builds
#   IDLE=10 CPU_WINDOW=30 SKIP_SIZES=1 bench/rss.sh
#   AGENT_BIN=/tmp/sigil-agent-before SKIP_SIZES=1 bench/rss.sh   # measure a prebuilt agent
#
# AGENT_BIN runs that sigil-agent binary instead of the tree's (the server
# is still built from the tree): before/after comparisons of one change
# build both agents once and alternate runs of this script between them.
#
# Everything it starts is stopped on exit (trap); the temp dir is removed.
set -euo pipefail

IDLE=${IDLE:-10}
CPU_WINDOW=${CPU_WINDOW:-30}
SKIP_SIZES=${SKIP_SIZES:-0}
GOAL_SERVER_MB=30
GOAL_AGENT_MB=16

cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/sigil-rss.XXXXXX)
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		# Bounded wait: SIGKILL whatever is still there after 5 s.
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "rss.sh: $*" >&2
	for f in "$WORK"/*.log; do
		[ -f "$f" ] && { echo "--- $f (tail)" >&2; tail -n 20 "$f" >&2; }
	done
	exit 1
}

# wait_for SECONDS CMD...: retry CMD every 0.2 s until it succeeds.
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

kib() { awk -v k="$1" '/^'"$1"':/ {print $2}' "/proc/$2/status"; }
mb() { awk -v v="$1" 'BEGIN {printf "%.1f", v/1024}'; }
# cpu_ticks PID: utime+stime in clock ticks (fields 14 and 15 of stat, counted after the ")" of comm).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

BIN=$WORK/bin
mkdir -p "$BIN"
# Pure Go, as shipped to devices (no libc mapped). Extra flags via GOFLAGS.
CGO_ENABLED=0 go build -o "$BIN/" ./cmd/sigil-server ./cmd/sigil-agent || die "build failed"
if [ -n "${AGENT_BIN:-}" ]; then
	cp "$AGENT_BIN" "$BIN/sigil-agent" || die "cannot copy AGENT_BIN $AGENT_BIN"
fi

TD=example.org
SDIR=$WORK/server
ADIR=$WORK/agent
mkdir -p "$SDIR" "$ADIR"
chmod 700 "$SDIR" "$ADIR"
PORT=$(free_port)
SSOCK=$SDIR/api.sock
ASOCK=$ADIR/api.sock

cat >"$WORK/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$PORT"
    socket_path = "$SSOCK"
    trust_domain = "$TD"
    data_dir = "$SDIR"
    log_level = "INFO"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$SDIR/datastore.sqlite3"
        }
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = "$SDIR/keys"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
EOF

"$BIN/sigil-server" run -config "$WORK/server.conf" >"$WORK/server.log" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_for 30 "$BIN/sigil-server" healthcheck -socketPath "$SSOCK" || die "server not healthy after 30 s"

ADMIN=("$BIN/sigil-server")
AGENT_ID=spiffe://$TD/rss/agent
TOKEN=$("${ADMIN[@]}" token generate -socketPath "$SSOCK" -spiffeID "$AGENT_ID" | awk '/^Token:/ {print $2}')
[ -n "$TOKEN" ] || die "no join token"
"${ADMIN[@]}" bundle show -socketPath "$SSOCK" >"$WORK/bundle.pem" || die "bundle show failed"
"${ADMIN[@]}" entry create -socketPath "$SSOCK" -parentID "$AGENT_ID" \
	-spiffeID "spiffe://$TD/rss/workload" -selector "unix:uid:$(id -u)" >/dev/null || die "entry create failed"

cat >"$WORK/agent.conf" <<EOF
agent {
    server_address = "127.0.0.1"
    server_port = "$PORT"
    socket_path = "$ASOCK"
    trust_domain = "$TD"
    data_dir = "$ADIR"
    trust_bundle_path = "$WORK/bundle.pem"
    join_token = "$TOKEN"
    log_level = "INFO"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "$ADIR/keys"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
EOF

"$BIN/sigil-agent" run -config "$WORK/agent.conf" >"$WORK/agent.log" 2>&1 &
APID=$!
PIDS+=("$APID")
wait_for 30 "$BIN/sigil-agent" api fetch x509 -socketPath "$ASOCK" -silent || die "workload SVID not served after 30 s"

sleep "$IDLE"
for p in "$SPID" "$APID"; do kill -0 "$p" 2>/dev/null || die "process $p exited"; done
S_RSS=$(kib VmRSS "$SPID")
S_HWM=$(kib VmHWM "$SPID")
A_RSS=$(kib VmRSS "$APID")
A_HWM=$(kib VmHWM "$APID")
S_ANON=$(kib RssAnon "$SPID")
S_FILE=$(kib RssFile "$SPID")
A_ANON=$(kib RssAnon "$APID")
A_FILE=$(kib RssFile "$APID")

if [ "${SMAPS:-0}" = 1 ]; then
	# Where the agent's resident pages are, by mapping (largest first).
	echo "agent mappings by Rss (kB):"
	awk '/^[0-9a-f]+-[0-9a-f]+ / {m=$6" "$2} /^Rss:/ {r[m]+=$2} END {for (k in r) if (r[k] > 256) print r[k], k}' "/proc/$APID/smaps" | sort -rn | head
	echo
fi

HZ=$(getconf CLK_TCK)
A0=$(cpu_ticks "$APID")
S0=$(cpu_ticks "$SPID")
sleep "$CPU_WINDOW"
A1=$(cpu_ticks "$APID")
S1=$(cpu_ticks "$SPID")
A_CPU_MS=$(((A1 - A0) * 1000 / HZ))
S_CPU_MS=$(((S1 - S0) * 1000 / HZ))

verdict() { awk -v v="$1" -v g="$2" 'BEGIN {print (v/1024 <= g) ? "met" : "MISSED"}'; }

echo "### Memory and idle CPU (real processes, ${IDLE} s after the first SVID)"
echo
echo "| process | VmRSS | (anon + file) | VmHWM | goal (RSS) | | CPU over ${CPU_WINDOW} s idle |"
echo "|---|---|---|---|---|---|---|"
echo "| sigil-server | $(mb "$S_RSS") MB | $(mb "$S_ANON") + $(mb "$S_FILE") MB | $(mb "$S_HWM") MB | ≤ $GOAL_SERVER_MB MB | $(verdict "$S_RSS" $GOAL_SERVER_MB) | ${S_CPU_MS} ms |"
echo "| sigil-agent | $(mb "$A_RSS") MB | $(mb "$A_ANON") + $(mb "$A_FILE") MB | $(mb "$A_HWM") MB | ≤ $GOAL_AGENT_MB MB | $(verdict "$A_RSS" $GOAL_AGENT_MB) | ${A_CPU_MS} ms |"
echo

# Stop the processes before the cross builds so they do not skew anything.
cleanup_procs() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	PIDS=()
}
cleanup_procs

if [ "$SKIP_SIZES" = 1 ]; then
	exit 0
fi
echo "### sigil-agent binary size (CGO_ENABLED=0, $(go env GOVERSION))"
echo
echo "| GOOS/GOARCH | default | -ldflags='-s -w' |"
echo "|---|---|---|"
for target in amd64 arm64 arm riscv64; do
	env_extra=()
	label="linux/$target"
	if [ "$target" = arm ]; then
		env_extra=(GOARM=7)
		label="linux/arm (GOARM=7)"
	fi
	out=$WORK/size-$target
	env CGO_ENABLED=0 GOOS=linux GOARCH=$target "${env_extra[@]}" go build -o "$out" ./cmd/sigil-agent || die "build for $target failed"
	env CGO_ENABLED=0 GOOS=linux GOARCH=$target "${env_extra[@]}" go build -ldflags='-s -w' -o "$out-sw" ./cmd/sigil-agent || die "build for $target failed"
	echo "| $label | $(mb $(($(stat -c %s "$out") / 1024))) MB | $(mb $(($(stat -c %s "$out-sw") / 1024))) MB |"
done
echo
