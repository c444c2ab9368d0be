package config

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
