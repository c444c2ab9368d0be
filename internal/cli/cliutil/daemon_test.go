package cliutil

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
)

type testDaemonConfig struct{ openErr error }

func (c testDaemonConfig) OpenLogger(w io.Writer) (*slog.Logger, io.Closer, error) {
	if c.openErr != nil {
		return nil, nil, c.openErr
	}
	return slog.New(slog.NewTextHandler(w, nil)), io.NopCloser(nil), nil
}

type testDaemon struct{ err error }

func (d testDaemon) Run(context.Context) error { return d.err }

func TestRunDaemon(t *testing.T) {
	for _, tc := range []struct {
		name     string
		loadErr  error
		openErr  error
		startErr error
		runErr   error
		want     int
		wantOut  string
	}{
		{name: "help", loadErr: fmt.Errorf("%w\nUsage of run", flag.ErrHelp), want: ExitOK, wantOut: "Usage of run"},
		{name: "bad config", loadErr: errors.New("trust_domain must be configured"), want: ExitError, wantOut: "trust_domain must be configured"},
		{name: "bad logger", openErr: errors.New("open log_file: denied"), want: ExitError, wantOut: "open log_file: denied"},
		{name: "start fails", startErr: errors.New("no socket"), want: ExitError, wantOut: "Thing failed to start"},
		{name: "run fails", runErr: errors.New("lost"), want: ExitError, wantOut: "Thing stopped with an error"},
		{name: "clean stop", want: ExitOK, wantOut: "Thing stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			var gotArgs []string
			code := RunDaemon(context.Background(), "Thing", []string{"-config", "x"}, &stderr,
				func(args []string) (testDaemonConfig, error) {
					gotArgs = args
					return testDaemonConfig{openErr: tc.openErr}, tc.loadErr
				},
				func(context.Context, testDaemonConfig, *slog.Logger) (testDaemon, error) {
					return testDaemon{err: tc.runErr}, tc.startErr
				})
			if code != tc.want {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tc.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantOut) {
				t.Errorf("stderr lacks %q: %s", tc.wantOut, stderr.String())
			}
			if strings.Join(gotArgs, " ") != "-config x" {
				t.Errorf("load got args %q", gotArgs)
			}
		})
	}
}
