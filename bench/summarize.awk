# summarize.awk: medians of `go test -bench` output, as markdown.
#
#   awk -f bench/summarize.awk bench-output.txt...
#
# Every "BenchmarkX-N  iters  v1 unit1  v2 unit2 ..." line is one sample of
# each of its metrics; with -count=K there are K samples per benchmark.
# Prints a table of the median (and min..max) of every metric, then the
# goals table of the end-to-end benchmarks (bench/e2e) with ratios against
# the raw-crypto baseline measured in the same run.

function median(key,    n, i, j, t, a) {
	n = cnt[key]
	for (i = 1; i <= n; i++) a[i] = val[key, i]
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
		a[j + 1] = t
	}
	lo[key] = a[1]; hi[key] = a[n]
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

# pairedratio(num, den, invert): median over runs k of num[k]/den[k] (or
# den[k]/num[k] when invert). With -count, `go test` runs every sub-benchmark
# once per round, so the k-th samples were taken close together in time:
# pairing them cancels much of a shared machine's changing load.
function pairedratio(num, den, invert,    n, k, a, i, j, t) {
	n = cnt[num]
	if (cnt[den] < n) n = cnt[den]
	if (n == 0) return ""
	for (k = 1; k <= n; k++) {
		if (val[num, k] == 0 || val[den, k] == 0) return ""
		a[k] = invert ? val[den, k] / val[num, k] : val[num, k] / val[den, k]
	}
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
		a[j + 1] = t
	}
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

function fmtnum(v) {
	if (v == "") return "–"
	if (v >= 1000) return sprintf("%.0f", v)
	if (v >= 10) return sprintf("%.1f", v)
	if (v >= 1) return sprintf("%.2f", v)
	return sprintf("%.3f", v)
}

function get(name, unit,    k) {
	k = name SUBSEP unit
	if (!(k in cnt)) return ""
	return med[k]
}

# goal NAME UNIT OP TARGET LABEL: one row of the goals table.
function goal(label, name, unit, op, target, note,    v, ok) {
	v = get(name, unit)
	if (v == "") { printf "| %s | not run | %s %s | | %s |\n", label, op, target, note; return }
	ok = (op == "≥") ? (v >= target) : (v <= target)
	printf "| %s | %s %s | %s %s | %s | %s |\n", label, fmtnum(v), unit, op, target, ok ? "met" : "**missed**", note
}

# ratio: wall-clock svid/s against raw's, plus the CPU-time ratio (raw's
# cpu-us/svid over the API's: the server process's own for -proc
# benchmarks, client+server for in-process ones). Both are medians of the
# per-round ratios (pairedratio).
function ratio(label, name, target, note,    r, c, base, basec, v, vc, ok, cpulabel, cunit) {
	base = get("e2e/Signing/raw", "svid/s"); v = get(name, "svid/s")
	basec = get("e2e/Signing/raw", "cpu-us/svid")
	cunit = "server-cpu-us/svid"; vc = get(name, cunit)
	cpulabel = "server-process CPU"
	if (vc == "") { cunit = "cpu-us/svid"; vc = get(name, cunit); cpulabel = (name ~ /raw/) ? "CPU" : "client+server CPU" }
	if (base == "" || v == "") { printf "| %s | not run | ≥ %.0f %% of raw | | %s |\n", label, target * 100, note; return }
	r = pairedratio(name SUBSEP "svid/s", "e2e/Signing/raw" SUBSEP "svid/s", 0)
	c = pairedratio(name SUBSEP cunit, "e2e/Signing/raw" SUBSEP "cpu-us/svid", 1)
	ok = r >= target
	printf "| %s | %.0f %% of raw (%s vs %s svid/s); %s ratio %.0f %% (%s vs %s µs/svid) | ≥ %.0f %% of raw | %s | %s |\n", label, r * 100, fmtnum(v), fmtnum(base), cpulabel, c * 100, fmtnum(vc), fmtnum(basec), target * 100, ok ? "met" : "**missed**", note
}

/^pkg: / { pkg = $2; sub(/^.*\/bench\//, "", pkg) }

/^Benchmark/ && NF >= 4 {
	name = $1
	sub(/^Benchmark/, "", name)
	if (pkg != "") name = pkg "/" name
	sub(/-[0-9]+$/, "", name)
	if (!(name in seen)) { seen[name] = 1; order[++nnames] = name }
	for (i = 3; i + 1 <= NF; i += 2) {
		unit = $(i + 1)
		k = name SUBSEP unit
		if (!(k in cnt)) { units[name] = units[name] SUBSEP unit }
		val[k, ++cnt[k]] = $i + 0
	}
}

END {
	for (k in cnt) med[k] = median(k)
	print "| benchmark | metric | median | min … max | runs |"
	print "|---|---|---|---|---|"
	for (i = 1; i <= nnames; i++) {
		name = order[i]
		nu = split(substr(units[name], 2), us, SUBSEP)
		for (j = 1; j <= nu; j++) {
			k = name SUBSEP us[j]
			printf "| %s | %s | %s | %s … %s | %d |\n", name, us[j], fmtnum(med[k]), fmtnum(lo[k]), fmtnum(hi[k]), cnt[k]
		}
	}
	print ""
	print "| goal | measured (medians; ratios are medians of per-round paired ratios) | target | | note |"
	print "|---|---|---|---|---|"
	ratio("MintX509SVID throughput (admin socket, 16 callers)", "e2e/Signing/mint", 0.60, "SPIRE ~25 % (quoted, not measured here)")
	ratio("BatchNewX509SVID throughput (mTLS agent, 50 CSRs/call)", "e2e/Signing/batch=50", 0.60, "SPIRE ~25 % (quoted, not measured here)")
	ratio("BatchNewX509SVID throughput (mTLS agent, 1 CSR/call)", "e2e/Signing/batch=1", 0.60, "")
	ratio("MintX509SVID, sigil-server process", "e2e/Signing/mint-proc", 0.60, "")
	ratio("BatchNewX509SVID (50/call), sigil-server process", "e2e/Signing/batch=50-proc", 0.60, "")
	ratio("ceiling: raw + CSR parse/check (no server)", "e2e/Signing/raw+csr", 0.60, "the least work per CSR")
	goal("BatchCreateEntry, 10k entries in batches of 50, one caller", "e2e/BatchCreateEntry/seq", "entries/s", "≥", 8000, "SPIRE ~800/s (quoted, not measured here)")
	goal("Workload API FetchX509SVID p99 (warm)", "e2e/WorkloadAPI/FetchX509SVID", "p99-ms", "≤", 0.5, "p50 " fmtnum(get("e2e/WorkloadAPI/FetchX509SVID", "p50-ms")) " ms")
	goal("Workload API FetchJWTSVID p99 (warm)", "e2e/WorkloadAPI/FetchJWTSVID", "p99-ms", "≤", 0.5, "p50 " fmtnum(get("e2e/WorkloadAPI/FetchJWTSVID", "p50-ms")) " ms")
	goal("New entry → workload update p99", "e2e/EntryToWorkload", "p99-ms", "≤", 100, "p50 " fmtnum(get("e2e/EntryToWorkload", "p50-ms")) " ms; SPIRE 5–10 s (quoted, not measured here)")
	goal("Agent start → first SVID p99 (attested before)", "e2e/AgentStart", "p99-ms", "≤", 50, "p50 " fmtnum(get("e2e/AgentStart", "p50-ms")) " ms")
	goal("Valid attestation beside 2,000 bad ones in flight from its address, p99", "attest/AttestUnderFlood/flood", "p99-ms", "≤", 2000, "p50 " fmtnum(get("attest/AttestUnderFlood/flood", "p50-ms")) " ms; no flood: p99 " fmtnum(get("attest/AttestUnderFlood/no-flood", "p99-ms")) " ms")
	goal("Valid attestations attested during that flood (none refused)", "attest/AttestUnderFlood/flood", "attested-%", "≥", 100, "server CPU " fmtnum(get("attest/AttestUnderFlood/flood", "server-cpu-%")) " % of a core with the flood, " fmtnum(get("attest/AttestUnderFlood/no-flood", "server-cpu-%")) " % without")
}
