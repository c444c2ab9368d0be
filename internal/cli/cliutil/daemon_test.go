package cliutil

import (
	"bytes"
	"context"
	"errors"
	"flag"
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

type helpErr struct{ usage string }

func (e helpErr) Error() string     { return "flag: help requested" }
func (e helpErr) Unwrap() error     { return flag.ErrHelp }
func (e helpErr) FlagUsage() string { return e.usage }

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name               string
		loadErr            error
		wantCode           int
		wantOK             bool
		wantStdout, wantSE string
	}{
		{name: "help", loadErr: helpErr{"  -config string\n"}, wantCode: ExitOK, wantStdout: "Usage of thing run:\n  Runs the thing\n\nFlags:\n  -config string\n"},
		{name: "bad config", loadErr: errors.New("trust_domain must be configured"), wantCode: ExitError, wantSE: "trust_domain must be configured\n"},
		{name: "ok", wantCode: ExitOK, wantOK: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			var gotArgs []string
			_, code, ok := LoadConfig("thing run", "Runs the thing", []string{"-config", "x"}, &stdout, &stderr,
				func(args []string) (testDaemonConfig, error) {
					gotArgs = args
					return testDaemonConfig{}, tc.loadErr
				})
			if code != tc.wantCode || ok != tc.wantOK || stdout.String() != tc.wantStdout || stderr.String() != tc.wantSE {
				t.Errorf("code %d ok %v stdout %q stderr %q; want %d %v %q %q", code, ok, stdout.String(), stderr.String(), tc.wantCode, tc.wantOK, tc.wantStdout, tc.wantSE)
			}
			if strings.Join(gotArgs, " ") != "-config x" {
				t.Errorf("load got args %q", gotArgs)
			}
		})
	}
}

func TestRunDaemon(t *testing.T) {
	for _, tc := range []struct {
		name     string
		openErr  error
		startErr error
		runErr   error
		want     int
		wantOut  string
	}{
		{name: "bad logger", openErr: errors.New("open log_file: denied"), want: ExitError, wantOut: "open log_file: denied"},
		{name: "start fails", startErr: errors.New("no socket"), want: ExitError, wantOut: "Thing failed to start"},
		{name: "run fails", runErr: errors.New("lost"), want: ExitError, wantOut: "Thing stopped with an error"},
		{name: "clean stop", want: ExitOK, wantOut: "Thing stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := RunDaemon(context.Background(), "Thing", testDaemonConfig{openErr: tc.openErr}, &stderr,
				func(context.Context, testDaemonConfig, *slog.Logger) (testDaemon, error) {
					return testDaemon{err: tc.runErr}, tc.startErr
				})
			if code != tc.want {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tc.want, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantOut) {
				t.Errorf("stderr lacks %q: %s", tc.wantOut, stderr.String())
			}
		})
	}
}
