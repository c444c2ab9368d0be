// Package cliutil holds what the sigil-server and sigil-agent command-line
// tools share: command dispatch and flag parsing, error rendering, JSON
// output, file writing and the healthcheck command. It is linked into the
// agent binary, so it imports only the standard library, gRPC and protobuf.
package cliutil

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Exit codes of the command runners.
const (
	ExitOK             = 0
	ExitError          = 1
	ExitUnknownCommand = 127
)

// CommandInfo names a command and says what it does.
type CommandInfo struct {
	Name     string
	Synopsis string
}

// IsHelp reports whether s asks for help.
func IsHelp(s string) bool {
	return s == "-h" || s == "-help" || s == "--help" || s == "help"
}

// PrintUsage prints binary's top-level usage: the commands of all the
// lists, sorted by name, names in a column width wide.
func PrintUsage(w io.Writer, binary string, width int, lists ...[]CommandInfo) {
	fmt.Fprintf(w, "Usage: %s <command> [<subcommand>] [flags]\n", binary)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Available commands are:")
	var rows []CommandInfo
	for _, l := range lists {
		rows = append(rows, l...)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	for _, c := range rows {
		fmt.Fprintf(w, "    %-*s %s\n", width, c.Name, c.Synopsis)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Run '%s <command> -h' for the flags of a command.\n", binary)
}

// MatchCommand returns the index of the first of names (each one or more
// words, such as "entry create") whose words begin args, and the arguments
// that follow them; -1 when none does.
func MatchCommand(names []string, args []string) (int, []string) {
	for i, name := range names {
		words := strings.Fields(name)
		if len(args) >= len(words) && slicesEqual(args[:len(words)], words) {
			return i, args[len(words):]
		}
	}
	return -1, args
}

func slicesEqual(a, b []string) bool {
	for i := range b {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// NewFlagSet returns the flag set of the command name. Its usage is the
// synopsis, then the flags, written to the flag set's output; ParseFlags
// sends it to stdout for -h and to stderr after a flag error.
func NewFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of %s:\n  %s\n\n", name, synopsis)
		if hasFlags(fs) {
			fmt.Fprintln(fs.Output(), "Flags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// ParseFlags parses args with fs (no positional arguments are accepted).
// -h, -help and --help print the usage on stdout and return flag.ErrHelp;
// a flag error prints the flag package's message and the usage on stderr,
// and a positional argument a message naming it, and return the error.
func ParseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	if errors.Is(err, flag.ErrHelp) {
		_, _ = out.WriteTo(stdout)
		return err
	}
	_, _ = out.WriteTo(stderr)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "Error: unexpected argument %q (flags start with '-'; see '%s -h')\n", fs.Arg(0), fs.Name())
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// ExitCode is the exit code for an error of ParseFlags: ExitOK after -h,
// ExitError otherwise.
func ExitCode(parseErr error) int {
	if errors.Is(parseErr, flag.ErrHelp) {
		return ExitOK
	}
	return ExitError
}

// Execute parses args with fs (made by NewFlagSet) through ParseFlags, then
// calls run and returns the exit code: ExitOK after -h or when run
// succeeds; ExitError on a flag error (already printed) or when run fails,
// whose error is printed on stderr as "Error: " and describe(err).
func Execute(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, run func() error, describe func(error) string) int {
	if err := ParseFlags(fs, args, stdout, stderr); err != nil {
		return ExitCode(err)
	}
	if err := run(); err != nil {
		fmt.Fprintf(stderr, "Error: %s\n", describe(err))
		return ExitError
	}
	return ExitOK
}

// Version is the version command of both binaries: it prints v on stdout.
func Version(binary, v string, args []string, stdout, stderr io.Writer) int {
	fs := NewFlagSet(binary+" version", "Prints the version of "+binary)
	if err := ParseFlags(fs, args, stdout, stderr); err != nil {
		return ExitCode(err)
	}
	fmt.Fprintln(stdout, v)
	return ExitOK
}

// IsVersion reports whether s asks for the version.
func IsVersion(s string) bool {
	return s == "version" || s == "-version" || s == "--version"
}

// CheckOutput validates an -output value.
func CheckOutput(output string) error {
	if output != "pretty" && output != "json" {
		return fmt.Errorf("unknown -output %q: use pretty or json", output)
	}
	return nil
}

// DescribeError renders err for a person. A gRPC status error in its chain
// (even wrapped) is shown as hint(status) or, where hint returns "", as
// "<message> (code: <Code>)" instead of "rpc error: code = ..."; any other
// error is err.Error().
func DescribeError(err error, hint func(*status.Status) string) string {
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &se) {
		return err.Error()
	}
	st := se.GRPCStatus()
	friendly := hint(st)
	if friendly == "" {
		friendly = fmt.Sprintf("%s (code: %s)", st.Message(), st.Code())
	}
	return strings.Replace(err.Error(), se.Error(), friendly, 1)
}

// MarshalJSON encodes m as SPIRE's "-output json" does: protojson with
// proto field names and unpopulated fields, then without null values (an
// unset message field is left out, not null), re-encoded with sorted keys.
func MarshalJSON(m proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding JSON output: %w", err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("encoding JSON output: %w", err)
	}
	b, err = json.Marshal(dropNulls(v))
	if err != nil {
		return nil, fmt.Errorf("encoding JSON output: %w", err)
	}
	return b, nil
}

// dropNulls removes null object members and list items, recursively.
func dropNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			x[k] = dropNulls(e)
		}
	case []any:
		out := make([]any, 0, len(x))
		for _, e := range x {
			if e != nil {
				out = append(out, dropNulls(e))
			}
		}
		return out
	}
	return v
}

// PrintJSON writes m to w as MarshalJSON encodes it, then a newline.
func PrintJSON(w io.Writer, m proto.Message) error {
	b, err := MarshalJSON(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// WriteFile writes data to path with mode, also tightening the mode of an
// existing file.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
