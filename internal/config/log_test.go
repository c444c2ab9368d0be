package config

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/grpclog"
)

func TestNewLoggerLevels(t *testing.T) {
	cases := []struct {
		level string
		want  slog.Level
	}{
		{"DEBUG", slog.LevelDebug}, {"debug", slog.LevelDebug}, {"Info", slog.LevelInfo}, {"", slog.LevelInfo},
		{"WARN", slog.LevelWarn}, {"warning", slog.LevelWarn}, {"ERROR", slog.LevelError}, {"trace", LevelTrace},
	}
	for _, c := range cases {
		l, err := NewLogger(c.level, "text", &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%q: %v", c.level, err)
		}
		ctx := context.Background()
		if !l.Enabled(ctx, c.want) || (c.want > LevelTrace && l.Enabled(ctx, c.want-1)) {
			t.Errorf("level %q: enabled at %v=%v, below=%v", c.level, c.want, l.Enabled(ctx, c.want), l.Enabled(ctx, c.want-1))
		}
	}
	if _, err := NewLogger("verbose", "text", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"verbose"`) {
		t.Errorf("bad level: %v", err)
	}
	if _, err := NewLogger("INFO", "yaml", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"yaml"`) {
		t.Errorf("bad format: %v", err)
	}
}

func TestNewLoggerFormats(t *testing.T) {
	var buf bytes.Buffer
	l, err := NewLogger("info", "JSON", &buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("hello", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("json output %q: %v", buf.String(), err)
	}
	if rec["msg"] != "hello" || rec["k"] != "v" || rec["level"] != "INFO" {
		t.Errorf("record %v", rec)
	}

	buf.Reset()
	l, err = NewLogger("info", "text", &buf)
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "k", "v")
	if out := buf.String(); !strings.Contains(out, "level=INFO msg=hello k=v") {
		t.Errorf("text output %q", out)
	}
}

func TestOpenLogFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sigil.log")
	for range 2 {
		f, err := OpenLogFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("line\n"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "line\nline\n" {
		t.Errorf("log file not appended: %q", b)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("log file world-accessible: %v", fi.Mode())
	}
	if _, err := OpenLogFile(filepath.Join(t.TempDir(), "missing", "x.log")); err == nil {
		t.Error("opening a log file in a missing directory succeeded")
	}
}

// rfc3339Millis matches TimeFormat: RFC 3339 with exactly milliseconds.
var rfc3339Millis = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$`)

// TestLogTimesAreRFC3339 checks that text and JSON logs stamp times the
// same way (slog's JSON handler alone writes nanoseconds).
func TestLogTimesAreRFC3339(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		l, err := NewLogger("info", format, &buf)
		if err != nil {
			t.Fatal(err)
		}
		l.Info("hello")
		var stamp string
		if format == "json" {
			var rec struct{ Time string }
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatal(err)
			}
			stamp = rec.Time
		} else {
			m := regexp.MustCompile(`^time=(\S+) `).FindStringSubmatch(buf.String())
			if m == nil {
				t.Fatalf("text: no time in %q", buf.String())
			}
			stamp = m[1]
		}
		if !rfc3339Millis.MatchString(stamp) {
			t.Errorf("%s: time %q is not RFC 3339 with milliseconds", format, stamp)
		}
		if _, err := time.Parse(time.RFC3339, stamp); err != nil {
			t.Errorf("%s: time %q: %v", format, stamp, err)
		}
	}
}

// TestSetDefault: what logs without a logger of its own (the standard log
// package, gRPC's internal logger) goes through the configured one.
func TestSetDefault(t *testing.T) {
	prev := slog.Default()
	defer slog.SetDefault(prev)
	defer grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	var buf bytes.Buffer
	l, err := NewLogger("info", "json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	SetDefault(l)
	log.Printf("from the log package")
	grpclog.Errorf("from grpc %d", 1)
	grpclog.Info("grpc info is debug")
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct{ Time, Level, Msg string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if !rfc3339Millis.MatchString(rec.Time) {
			t.Errorf("line %q: time not RFC 3339 with milliseconds", line)
		}
		got = append(got, rec.Level+" "+rec.Msg)
	}
	if want := "INFO from the log package|ERROR from grpc 1"; strings.Join(got, "|") != want {
		t.Errorf("records %q, want %q", got, want)
	}
}
