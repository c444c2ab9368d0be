package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// LevelTrace is below slog.LevelDebug; SPIRE (logrus) accepts "trace".
const LevelTrace = slog.LevelDebug - 4

// ParseLogLevel maps a SPIRE log_level to a slog level. It accepts, in any
// case, DEBUG, INFO, WARN and ERROR, plus the other spellings SPIRE's logger
// takes (TRACE, WARNING, FATAL, PANIC) so existing configs keep working.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "fatal", "panic":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid log level %q: want DEBUG, INFO, WARN or ERROR", s)
}

func parseLogFormat(s string) (string, error) {
	switch f := strings.ToLower(strings.TrimSpace(s)); f {
	case "", "text":
		return "text", nil
	case "json":
		return "json", nil
	}
	return "", fmt.Errorf("invalid log format %q: want text or json", s)
}

// NewLogger returns a slog logger writing to w at the given log_level
// (DEBUG, INFO, WARN, ERROR; case-insensitive) in the given log_format
// (text or json).
func NewLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	lvl, err := ParseLogLevel(level)
	if err != nil {
		return nil, err
	}
	f, err := parseLogFormat(format)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if f == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// OpenLogFile opens log_file for appending, creating it 0640 if needed.
func OpenLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log_file: %w", err)
	}
	return f, nil
}

// OpenLogger is NewLogger writing to log_file when file is set (the
// returned closer closes it) and to fallback otherwise.
func OpenLogger(level, format, file string, fallback io.Writer) (*slog.Logger, io.Closer, error) {
	if file == "" {
		log, err := NewLogger(level, format, fallback)
		return log, io.NopCloser(nil), err
	}
	f, err := OpenLogFile(file)
	if err != nil {
		return nil, nil, err
	}
	log, err := NewLogger(level, format, f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return log, f, nil
}

// OpenLogger is OpenLogger with the server's log_level, log_format and
// log_file.
func (s *Server) OpenLogger(fallback io.Writer) (*slog.Logger, io.Closer, error) {
	return OpenLogger(s.LogLevel, s.LogFormat, s.LogFile, fallback)
}

// OpenLogger is OpenLogger with the agent's log_level, log_format and
// log_file.
func (a *Agent) OpenLogger(fallback io.Writer) (*slog.Logger, io.Closer, error) {
	return OpenLogger(a.LogLevel, a.LogFormat, a.LogFile, fallback)
}
