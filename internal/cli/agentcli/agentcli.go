// Package agentcli implements the sigil-agent subcommands that talk to a
// running agent: "api fetch|watch|validate" over the SPIFFE Workload API and
// "healthcheck". Flags and output follow the SPIRE agent CLI, and the
// commands work against any Workload API implementation (they use the
// go-spiffe client).
package agentcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// DefaultSocketPath is the Workload API socket the commands use unless
// -socketPath says otherwise (the same default as SPIRE).
const DefaultSocketPath = "/tmp/spire-agent/public/api.sock"

// Exit codes returned by Run.
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

// LeadCommands are the sigil-agent commands implemented outside this
// package (in cmd/sigil-agent); they are listed in the usage text.
var LeadCommands = []CommandInfo{
	{"run", "Runs the agent"},
	{"validate", "Validates an agent configuration file"},
}

type runner interface {
	flags(fs *flag.FlagSet)
	run(ctx context.Context, s *session) error
}

type spec struct {
	name     string
	synopsis string
	noOutput bool
	timeout  bool // has a -timeout flag
	make     func() runner
}

// specs lists the commands, longer names first so that "api fetch x509"
// wins over its alias "api fetch".
func specs() []spec {
	return []spec{
		{name: "api fetch x509", synopsis: "Fetches X509 SVIDs from the Workload API", timeout: true, make: func() runner { return &fetchX509Cmd{} }},
		{name: "api fetch jwt", synopsis: "Fetches a JWT SVID from the Workload API", timeout: true, make: func() runner { return &fetchJWTCmd{} }},
		{name: "api validate jwt", synopsis: "Validates a JWT SVID", timeout: true, make: func() runner { return &validateJWTCmd{} }},
		{name: "api fetch", synopsis: "Fetches X509 SVIDs from the Workload API (same as 'api fetch x509')", timeout: true, make: func() runner { return &fetchX509Cmd{} }},
		{name: "api watch", synopsis: "Attaches to the Workload API and prints updates as they're received", noOutput: true, make: func() runner { return &watchCmd{} }},
		{name: "healthcheck", synopsis: "Determines agent health status", noOutput: true, make: func() runner { return &healthcheckCmd{} }},
	}
}

// Commands returns the names and synopses of the commands Run accepts.
func Commands() []CommandInfo {
	var out []CommandInfo
	for _, s := range specs() {
		out = append(out, CommandInfo{Name: s.name, Synopsis: s.synopsis})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Run executes the agent command named by args (e.g. ["api", "fetch",
// "x509", "-write", "/tmp"]) and returns the exit code: 0 on success, 1 on
// failure (the reason is on stderr), 127 for an unknown command.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return ExitError
	}
	if isHelp(args[0]) {
		printUsage(stdout)
		return ExitOK
	}
	for _, sp := range specs() {
		words := strings.Fields(sp.name)
		if len(args) < len(words) {
			continue
		}
		match := true
		for i, w := range words {
			if args[i] != w {
				match = false
				break
			}
		}
		if match {
			return runSpec(ctx, sp, args[len(words):], stdout, stderr)
		}
	}
	if args[0] == "api" {
		if len(args) == 1 || isHelp(args[1]) {
			fmt.Fprintln(stderr, "Usage: sigil-agent api <fetch|watch|validate> ...")
			fmt.Fprintln(stderr)
			for _, c := range Commands() {
				if strings.HasPrefix(c.Name, "api ") {
					fmt.Fprintf(stderr, "    %-18s %s\n", c.Name, c.Synopsis)
				}
			}
			if len(args) > 1 {
				return ExitOK
			}
			return ExitError
		}
		fmt.Fprintf(stderr, "Error: unknown command %q\n", strings.Join(args[:min(len(args), 3)], " "))
		fmt.Fprintln(stderr, "Available api commands: api fetch x509, api fetch jwt, api validate jwt, api watch")
		return ExitUnknownCommand
	}
	fmt.Fprintf(stderr, "Error: unknown command %q\n", args[0])
	names := []string{"api"}
	for _, c := range LeadCommands {
		names = append(names, c.Name)
	}
	names = append(names, "healthcheck")
	sort.Strings(names)
	fmt.Fprintf(stderr, "Available commands: %s\n", strings.Join(names, ", "))
	return ExitUnknownCommand
}

func isHelp(s string) bool {
	return s == "-h" || s == "-help" || s == "--help" || s == "help"
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sigil-agent <command> [<subcommand>] [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Available commands are:")
	rows := append([]CommandInfo{}, LeadCommands...)
	rows = append(rows, Commands()...)
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	for _, c := range rows {
		fmt.Fprintf(w, "    %-18s %s\n", c.Name, c.Synopsis)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'sigil-agent <command> -h' for the flags of a command.")
}

func runSpec(ctx context.Context, sp spec, args []string, stdout, stderr io.Writer) int {
	r := sp.make()
	s := &session{stdout: stdout, stderr: stderr, output: "pretty"}
	fs := flag.NewFlagSet(sp.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage of %s:\n  %s\n\n", sp.name, sp.synopsis)
		fs.PrintDefaults()
	}
	fs.StringVar(&s.socketPath, "socketPath", DefaultSocketPath, "Path to the SPIFFE Workload API socket")
	if !sp.noOutput {
		fs.StringVar(&s.output, "output", "pretty", "Desired output format (pretty, json)")
	}
	if sp.timeout {
		fs.DurationVar(&s.timeout, "timeout", 5*time.Second, "Time to wait for a response")
	}
	r.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitError
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "Error: unexpected argument %q (flags start with '-'; see '%s -h')\n", fs.Arg(0), sp.name)
		return ExitError
	}
	if s.output != "pretty" && s.output != "json" {
		fmt.Fprintf(stderr, "Error: unknown -output %q: use pretty or json\n", s.output)
		return ExitError
	}
	if sp.timeout && s.timeout <= 0 {
		fmt.Fprintln(stderr, "Error: -timeout must be positive")
		return ExitError
	}
	defer s.close()
	if err := r.run(ctx, s); err != nil {
		fmt.Fprintf(stderr, "Error: %s\n", s.describe(err))
		return ExitError
	}
	return ExitOK
}

// session holds what every command shares: streams, socket, output format.
type session struct {
	stdout, stderr io.Writer
	socketPath     string
	output         string
	timeout        time.Duration
	client         *workloadapi.Client
}

func (s *session) json() bool { return s.output == "json" }

func (s *session) printf(format string, args ...any) { fmt.Fprintf(s.stdout, format, args...) }

func (s *session) errorf(format string, args ...any) { fmt.Fprintf(s.stderr, format, args...) }

// address returns the Workload API address in the unix:// URI form go-spiffe
// wants (relative paths are made absolute).
func (s *session) address() (string, error) {
	if s.socketPath == "" {
		return "", errors.New("-socketPath is empty: give the path of the agent's Workload API socket")
	}
	p, err := filepath.Abs(s.socketPath)
	if err != nil {
		return "", fmt.Errorf("resolving -socketPath: %w", err)
	}
	return "unix://" + p, nil
}

// checkSocket fails early, with a hint, when the socket does not exist.
func (s *session) checkSocket() error {
	if _, err := os.Stat(s.socketPath); err != nil {
		return fmt.Errorf("cannot reach the Workload API socket %q: %w (is the agent running? use -socketPath to point at its socket)", s.socketPath, err)
	}
	return nil
}

// workload returns a connected Workload API client.
func (s *session) workload(ctx context.Context) (*workloadapi.Client, error) {
	if s.client != nil {
		return s.client, nil
	}
	if err := s.checkSocket(); err != nil {
		return nil, err
	}
	addr, err := s.address()
	if err != nil {
		return nil, err
	}
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return nil, fmt.Errorf("creating Workload API client: %w", err)
	}
	s.client = c
	return c, nil
}

func (s *session) close() {
	if s.client != nil {
		_ = s.client.Close()
	}
}

// withTimeout applies -timeout to ctx.
func (s *session) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.timeout > 0 {
		return context.WithTimeout(ctx, s.timeout)
	}
	return context.WithCancel(ctx)
}

func (s *session) printJSON(m proto.Message) error {
	b, err := marshalProto(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(s.stdout, string(b))
	return err
}

// marshalProto encodes m as protojson with proto field names, like SPIRE's
// "-output json".
func marshalProto(m proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding JSON output: %w", err)
	}
	return b, nil
}

// describe renders an error with a hint on what to do.
func (s *session) describe(err error) string {
	var se interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &se) {
		if errors.Is(err, context.DeadlineExceeded) {
			return err.Error() + " (no answer within -timeout; is the agent running and attested?)"
		}
		return err.Error()
	}
	st := se.GRPCStatus()
	var friendly string
	switch st.Code() {
	case codes.Unavailable:
		friendly = fmt.Sprintf("agent unavailable at %q: %s (is the agent running? use -socketPath to point at its socket)", s.socketPath, st.Message())
	case codes.PermissionDenied:
		friendly = fmt.Sprintf("%s (code: %s; no registration entry matches this process: check the entry's selectors and parent)", st.Message(), st.Code())
	case codes.DeadlineExceeded:
		friendly = fmt.Sprintf("%s (code: %s; no answer within -timeout: is the agent attested and synced?)", st.Message(), st.Code())
	default:
		friendly = fmt.Sprintf("%s (code: %s)", st.Message(), st.Code())
	}
	return strings.Replace(err.Error(), se.Error(), friendly, 1)
}

// commaFlag accepts comma-separated values and can be repeated.
type commaFlag []string

func (f *commaFlag) String() string { return strings.Join(*f, ",") }

func (f *commaFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*f = append(*f, p)
		}
	}
	return nil
}
