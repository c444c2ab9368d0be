package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestServerProfiling(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		want  Profiling
	}{
		{"absent", "", Profiling{}},
		// SPIRE's usual block, port quoted as SPIRE's examples write ports.
		{"port, freq and names",
			"    profiling_enabled = true\n    profiling_port = \"8099\"\n    profiling_freq = 3600\n    profiling_names = [\"goroutine\", \"heap\", \"cpu\", \"heap\"]\n",
			Profiling{Enabled: true, Port: 8099, Freq: time.Hour, Names: []string{"goroutine", "heap", "cpu"}}},
		{"port only", "    profiling_enabled = true\n    profiling_port = 6060\n",
			Profiling{Enabled: true, Port: 6060}},
		// SPIRE writes the dumps without a listener when the port is unset.
		{"dumps only", "    profiling_enabled = true\n    profiling_freq = 60\n    profiling_names = [\"trace\"]\n",
			Profiling{Enabled: true, Freq: time.Minute, Names: []string{"trace"}}},
		// As SPIRE: the other keys do nothing while profiling is off.
		{"disabled", "    profiling_enabled = false\n    profiling_freq = 60\n",
			Profiling{Freq: time.Minute}},
		{"every profile", "    profiling_enabled = true\n    profiling_port = 1\n    profiling_names = [\"goroutine\", \"threadcreate\", \"heap\", \"block\", \"mutex\", \"trace\", \"cpu\"]\n",
			Profiling{Enabled: true, Port: 1, Names: ProfileNames}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseServer("server.conf", []byte(serverConfWith(c.extra, "")))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Profiling, c.want) {
				t.Errorf("Profiling = %+v, want %+v", s.Profiling, c.want)
			}
		})
	}
}

func TestServerProfilingErrors(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		want  []string
	}{
		{"unknown profile name",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_names = [\"heap\", \"allocs\"]\n",
			[]string{`server.conf:6: invalid value for "profiling_names" in server block: unknown profile "allocs"; must be one of goroutine, threadcreate, heap, block, mutex, trace, cpu`}},
		// Names are SPIRE's, case-sensitive as SPIRE's lookup.
		{"profile name case",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_names = [\"Heap\"]\n",
			[]string{`server.conf:6: invalid value for "profiling_names" in server block: unknown profile "Heap"`}},
		{"enabled without a port",
			"    profiling_enabled = true\n",
			[]string{`server.conf:4: "profiling_enabled" is true in server block but "profiling_port" is not set`}},
		{"enabled with port 0",
			"    profiling_enabled = true\n    profiling_port = 0\n",
			[]string{`server.conf:4: "profiling_enabled" is true in server block but "profiling_port" is not set`}},
		{"freq without names",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_freq = 10\n",
			[]string{`server.conf:6: "profiling_freq" is set in server block but "profiling_names" lists no profile`}},
		{"port out of range",
			"    profiling_enabled = true\n    profiling_port = 70000\n",
			[]string{`server.conf:5: invalid value for "profiling_port" in server block: port 70000 out of range`}},
		{"negative freq",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_freq = -5\n",
			[]string{`server.conf:6: invalid value for "profiling_freq" in server block: -5 is not a number of seconds >= 0`}},
		{"freq as a duration",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_freq = \"1h\"\n",
			[]string{`server.conf:6: invalid value for "profiling_freq" in server block: expected an integer, got string "1h"`}},
		{"names not a list",
			"    profiling_enabled = true\n    profiling_port = 6060\n    profiling_names = \"heap\"\n",
			[]string{`server.conf:6: invalid value for "profiling_names" in server block: expected a list of strings`}},
		{"enabled not a bool",
			"    profiling_enabled = \"yes\"\n",
			[]string{`server.conf:4: invalid value for "profiling_enabled" in server block: expected a bool`}},
		// A bad name is a mistake even while profiling is off.
		{"unknown name while disabled",
			"    profiling_names = [\"heapp\"]\n",
			[]string{`server.conf:4: invalid value for "profiling_names" in server block: unknown profile "heapp"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(serverConfWith(c.extra, "")))
			wantErr(t, err, c.want...)
		})
	}
}

func TestServerProfilingValidateProgrammatic(t *testing.T) {
	s, err := ParseServer("server.conf", []byte(minimalServerConf))
	if err != nil {
		t.Fatal(err)
	}
	s.Profiling = Profiling{Enabled: true, Freq: -time.Second, Names: []string{"allocs"}}
	wantErr(t, s.Validate(), "profiling_freq must be >= 0", `profiling_names: unknown profile "allocs"`)
	s.Profiling = Profiling{Enabled: true}
	wantErr(t, s.Validate(), "profiling_enabled is true but profiling_port is not set")
	s.Profiling = Profiling{Enabled: true, Port: 6060, Freq: time.Second}
	wantErr(t, s.Validate(), "profiling_freq is set but profiling_names lists no profile")
	s.Profiling = Profiling{Enabled: true, Port: 70000}
	wantErr(t, s.Validate(), "profiling_port 70000 out of range")
	s.Profiling = Profiling{Enabled: true, Port: 6060, Freq: time.Second, Names: []string{"heap"}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

// The agent refuses each profiling key by name, saying the server has it
// and why the agent does not.
func TestAgentProfilingRefused(t *testing.T) {
	for _, key := range []string{"profiling_enabled = true", "profiling_port = 6060", "profiling_freq = 10", "profiling_names = [\"heap\"]"} {
		name, _, _ := strings.Cut(key, " ")
		_, err := ParseAgent("agent.conf", []byte(agentConfWith("    "+key+"\n", "")))
		wantErr(t, err, `agent.conf:6: unsupported key "`+name+`" in agent block: profiling is supported by sigil-server but not by sigil-agent`, "size budget")
	}
}

// The README's example and conf/server/server.conf's commented keys (once
// uncommented) parse to what they describe.
func TestProfilingExamples(t *testing.T) {
	want := Profiling{Enabled: true, Port: 6060, Freq: time.Hour, Names: []string{"heap", "goroutine", "cpu"}}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "\n### Profiling (pprof)\n")
	if !ok {
		t.Fatal("README.md has no Profiling (pprof) section")
	}
	_, block, ok := strings.Cut(sec, "```hcl\nserver {\n")
	if !ok {
		t.Fatal("the Profiling section has no hcl example")
	}
	block, _, _ = strings.Cut(block, "\n```")
	block = strings.TrimSuffix(strings.TrimRight(block, "\n"), "}")
	s, err := ParseServer("README.md", []byte(serverConfWith(block, "")))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Profiling, want) {
		t.Errorf("README example: %+v, want %+v", s.Profiling, want)
	}

	conf, err := os.ReadFile("../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(conf), "\n") {
		if k, ok := strings.CutPrefix(l, "    # profiling_"); ok {
			lines = append(lines, "    profiling_"+k+"\n")
		}
	}
	if len(lines) != 4 {
		t.Fatalf("conf/server/server.conf has %d commented profiling_ keys, want 4", len(lines))
	}
	s, err = ParseServer("server.conf", []byte(serverConfWith(strings.Join(lines, ""), "")))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Profiling, want) {
		t.Errorf("conf/server/server.conf: %+v, want %+v", s.Profiling, want)
	}
}
