package config

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc/grpclog"
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
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: stampTime}
	if f == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// TimeFormat is how every log line of both binaries stamps its time, in
// text and JSON alike: RFC 3339 with milliseconds, in the local time zone.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// stampTime formats the record's time with TimeFormat (slog's JSON handler
// would otherwise write nanoseconds, its text handler milliseconds).
func stampTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
		a.Value = slog.StringValue(a.Value.Time().Format(TimeFormat))
	}
	return a
}

// SetDefault makes log the process's logger for whatever does not get one
// passed: slog.Default, the standard log package (which slog.SetDefault
// routes through log) and gRPC's internal logger, whose errors would
// otherwise go to stderr with a time in another format. Call it once, at
// start-up, before any gRPC use.
func SetDefault(log *slog.Logger) {
	slog.SetDefault(log)
	grpclog.SetLoggerV2(grpcLogger{log})
}

// grpcLogger is gRPC's LoggerV2 on slog. gRPC's default logger drops info
// and warning messages; here they are debug messages.
type grpcLogger struct{ l *slog.Logger }

func (g grpcLogger) Info(args ...any)   { g.l.Debug(fmt.Sprint(args...), "source", "grpc") }
func (g grpcLogger) Infoln(args ...any) { g.l.Debug(fmt.Sprintln(args...), "source", "grpc") }
func (g grpcLogger) Infof(format string, args ...any) {
	g.l.Debug(fmt.Sprintf(format, args...), "source", "grpc")
}
func (g grpcLogger) Warning(args ...any)   { g.l.Debug(fmt.Sprint(args...), "source", "grpc") }
func (g grpcLogger) Warningln(args ...any) { g.l.Debug(fmt.Sprintln(args...), "source", "grpc") }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.l.Debug(fmt.Sprintf(format, args...), "source", "grpc")
}
func (g grpcLogger) Error(args ...any)   { g.l.Error(fmt.Sprint(args...), "source", "grpc") }
func (g grpcLogger) Errorln(args ...any) { g.l.Error(fmt.Sprintln(args...), "source", "grpc") }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...), "source", "grpc")
}
func (g grpcLogger) Fatal(args ...any) { g.l.Error(fmt.Sprint(args...), "source", "grpc"); os.Exit(1) }
func (g grpcLogger) Fatalln(args ...any) {
	g.l.Error(fmt.Sprintln(args...), "source", "grpc")
	os.Exit(1)
}
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...), "source", "grpc")
	os.Exit(1)
}
func (g grpcLogger) V(l int) bool {
	return l <= 0 && g.l.Enabled(context.Background(), slog.LevelDebug)
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
