package config

import (
	"os"
	"strings"
	"testing"
)

func TestTelemetryPrometheus(t *testing.T) {
	for _, tc := range []struct {
		name, tail string
		want       *Prometheus
	}{
		{"absent", "", nil},
		{"port only", "telemetry {\n  Prometheus {\n    port = 9988\n  }\n}\n", &Prometheus{Host: "localhost", Port: 9988}},
		{"host and quoted port", "telemetry {\n  Prometheus {\n    host = \"0.0.0.0\"\n    port = \"9988\"\n  }\n}\n", &Prometheus{Host: "0.0.0.0", Port: 9988}},
		{"empty telemetry", "telemetry {}\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseServer("server.conf", []byte(serverConfWith("", tc.tail)))
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Telemetry.Prometheus; (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Fatalf("server Prometheus = %+v, want %+v", got, tc.want)
			}
			a, err := ParseAgent("agent.conf", []byte(agentConfWith("", tc.tail)))
			if err != nil {
				t.Fatal(err)
			}
			if got := a.Telemetry.Prometheus; (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Fatalf("agent Prometheus = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// SPIRE's other sinks and metric-shaping options are refused by name, with
// their line; so is an unknown key.
func TestTelemetryRefused(t *testing.T) {
	for _, tc := range []struct {
		name, tail, want string
	}{
		{"DogStatsd", "telemetry {\n  DogStatsd = [{ address = \"localhost:8125\" }]\n}\n", `:15: unsupported key "DogStatsd" in telemetry block`},
		{"M3", "telemetry {\n  M3 = [{ address = \"localhost:9000\" env = \"prod\" }]\n}\n", `:15: unsupported key "M3" in telemetry block`},
		{"InMem", "telemetry {\n  InMem {}\n}\n", `:15: unsupported block "InMem" in telemetry block`},
		{"MetricPrefix", "telemetry {\n  MetricPrefix = \"x\"\n}\n", `:15: unsupported key "MetricPrefix" in telemetry block`},
		{"BlockedLabels", "telemetry {\n  BlockedLabels = []\n}\n", `:15: unsupported key "BlockedLabels" in telemetry block`},
		{"tls", "telemetry {\n  Prometheus {\n    port = 9988\n    tls {\n      use_spire_svid = true\n    }\n  }\n}\n", `:17: unsupported block "tls" in telemetry.Prometheus block`},
		{"unknown key", "telemetry {\n  Prometheus {\n    path = \"/m\"\n  }\n}\n", `:16: unknown key "path" in telemetry.Prometheus block`},
		{"unknown sink", "telemetry {\n  Graphite {}\n}\n", `:15: unknown block "Graphite" in telemetry block`},
		{"bad port", "telemetry {\n  Prometheus {\n    port = 70000\n  }\n}\n", `:16: invalid value for "port" in telemetry.Prometheus block: port 70000 out of range`},
		{"empty host", "telemetry {\n  Prometheus {\n    host = \"\"\n  }\n}\n", `telemetry.Prometheus.host must not be empty`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(serverConfWith("", tc.tail)))
			wantErr(t, err, "server.conf", tc.want)
		})
	}
}

func TestAuditLogEnabled(t *testing.T) {
	s, err := ParseServer("server.conf", []byte(serverConfWith("", "")))
	if err != nil {
		t.Fatal(err)
	}
	if s.AuditLogEnabled {
		t.Fatal("audit_log_enabled defaults to true")
	}
	s, err = ParseServer("server.conf", []byte(serverConfWith("    audit_log_enabled = true\n", "")))
	if err != nil {
		t.Fatal(err)
	}
	if !s.AuditLogEnabled {
		t.Fatal("audit_log_enabled = true not read")
	}
	_, err = ParseServer("server.conf", []byte(serverConfWith("    audit_log_enabled = \"yes\"\n", "")))
	wantErr(t, err, `server.conf:4: invalid value for "audit_log_enabled" in server block: expected a bool`)
	// The agent has no audit log (as SPIRE).
	_, err = ParseAgent("agent.conf", []byte(agentConfWith("    audit_log_enabled = true\n", "")))
	wantErr(t, err, `agent.conf:`, `"audit_log_enabled" in agent block`)
}

// uncommentTelemetry uncomments conf's commented telemetry block and
// audit_log_enabled line.
func uncommentTelemetry(t *testing.T, src string) string {
	t.Helper()
	lines := strings.Split(src, "\n")
	in, found := false, false
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		switch {
		case trimmed == "# telemetry {":
			in, found = true, true
		case strings.HasPrefix(trimmed, "# audit_log_enabled"):
			lines[i] = strings.Replace(l, "# ", "", 1)
			continue
		}
		if in {
			lines[i] = strings.Replace(l, "# ", "", 1)
			if trimmed == "# }" && !strings.HasPrefix(l, " ") {
				in = false
			}
		}
	}
	if !found {
		t.Fatal("no commented telemetry block")
	}
	return strings.Join(lines, "\n")
}

// The example configurations' commented telemetry (and audit log) settings
// parse when uncommented.
func TestExampleConfTelemetry(t *testing.T) {
	src, err := os.ReadFile("../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseServer("server.conf", []byte(uncommentTelemetry(t, string(src))))
	if err != nil {
		t.Fatal(err)
	}
	if s.Telemetry.Prometheus == nil || s.Telemetry.Prometheus.Port != 9988 || !s.AuditLogEnabled {
		t.Fatalf("server: telemetry %+v, audit %v", s.Telemetry.Prometheus, s.AuditLogEnabled)
	}
	src, err = os.ReadFile("../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseAgent("agent.conf", []byte(uncommentTelemetry(t, string(src))))
	if err != nil {
		t.Fatal(err)
	}
	if a.Telemetry.Prometheus == nil || a.Telemetry.Prometheus.Port != 9989 {
		t.Fatalf("agent: telemetry %+v", a.Telemetry.Prometheus)
	}
}
