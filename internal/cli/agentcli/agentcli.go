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
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// DefaultSocketPath is the Workload API socket the commands use unless
// -socketPath says otherwise (the same default as SPIRE).
const DefaultSocketPath = "/tmp/spire-agent/public/api.sock"

// Exit codes returned by Run.
const (
	ExitOK             = cliutil.ExitOK
	ExitError          = cliutil.ExitError
	ExitUnknownCommand = cliutil.ExitUnknownCommand
)

// CommandInfo names a command and says what it does.
type CommandInfo = cliutil.CommandInfo

// LeadCommands are the sigil-agent commands implemented outside this
// package (in cmd/sigil-agent); they are listed in the usage text.
var LeadCommands = []CommandInfo{
	{Name: "run", Synopsis: "Runs the agent"},
	{Name: "validate", Synopsis: "Validates an agent configuration file"},
	{Name: "version", Synopsis: "Prints the version"},
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
	if cliutil.IsHelp(args[0]) {
		printUsage(stdout)
		return ExitOK
	}
	all := specs()
	names := make([]string, len(all))
	for i, sp := range all {
		names[i] = sp.name
	}
	if i, rest := cliutil.MatchCommand(names, args); i >= 0 {
		return runSpec(ctx, all[i], rest, stdout, stderr)
	}
	if args[0] == "api" {
		if len(args) == 1 || cliutil.IsHelp(args[1]) {
			// "api -h" asked for this: stdout and success.
			w, code := stderr, ExitError
			if len(args) > 1 {
				w, code = stdout, ExitOK
			}
			fmt.Fprintln(w, "Usage: sigil-agent api <fetch|watch|validate> ...")
			fmt.Fprintln(w)
			for _, c := range Commands() {
				if strings.HasPrefix(c.Name, "api ") {
					fmt.Fprintf(w, "    %-18s %s\n", c.Name, c.Synopsis)
				}
			}
			return code
		}
		fmt.Fprintf(stderr, "Error: unknown command %q\n", strings.Join(args[:min(len(args), 3)], " "))
		fmt.Fprintln(stderr, "Available api commands: api fetch x509, api fetch jwt, api validate jwt, api watch")
		return ExitUnknownCommand
	}
	fmt.Fprintf(stderr, "Error: unknown command %q\n", args[0])
	top := []string{"api"}
	for _, c := range LeadCommands {
		top = append(top, c.Name)
	}
	top = append(top, "healthcheck")
	sort.Strings(top)
	fmt.Fprintf(stderr, "Available commands: %s\n", strings.Join(top, ", "))
	return ExitUnknownCommand
}

func printUsage(w io.Writer) {
	cliutil.PrintUsage(w, "sigil-agent", 18, LeadCommands, Commands())
}

func runSpec(ctx context.Context, sp spec, args []string, stdout, stderr io.Writer) int {
	r := sp.make()
	s := &session{stdout: stdout, stderr: stderr, output: "pretty"}
	fs := cliutil.NewFlagSet(sp.name, sp.synopsis)
	fs.StringVar(&s.socketPath, "socketPath", DefaultSocketPath, "Path to the SPIFFE Workload API socket")
	var instance string
	fs.StringVar(&instance, "instance", "", cliutil.InstanceUsage(cliutil.AgentSocketTemplateEnv))
	if !sp.noOutput {
		fs.StringVar(&s.output, "output", "pretty", "Desired output format (pretty, json)")
	}
	if sp.timeout {
		fs.DurationVar(&s.timeout, "timeout", 5*time.Second, "Time to wait for a response")
	}
	r.flags(fs)
	return cliutil.Execute(fs, args, stdout, stderr, func() error {
		if err := cliutil.CheckOutput(s.output); err != nil {
			return err
		}
		p, err := cliutil.ResolveSocketPath(s.socketPath, DefaultSocketPath, cliutil.AgentSocketTemplateEnv, instance)
		if err != nil {
			return err
		}
		s.socketPath = p
		if sp.timeout && s.timeout <= 0 {
			return errors.New("-timeout must be positive")
		}
		defer s.close()
		return r.run(ctx, s)
	}, s.describe)
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

func (s *session) printJSON(m proto.Message) error { return cliutil.PrintJSON(s.stdout, m) }

// describe renders an error with a hint on what to do.
func (s *session) describe(err error) string {
	if _, isStatus := status.FromError(err); !isStatus && errors.Is(err, context.DeadlineExceeded) {
		return err.Error() + " (no answer within -timeout; is the agent running and attested?)"
	}
	return cliutil.DescribeError(err, func(st *status.Status) string {
		switch st.Code() {
		case codes.Unavailable:
			if !connectionFailure(st.Message()) {
				// The agent answered: it cannot serve this now (its
				// server unreachable with nothing cached, no attestor
				// answered, not attested yet), which its message says.
				return fmt.Sprintf("%s (code: %s, from the agent at %q)", st.Message(), st.Code(), s.socketPath)
			}
			return fmt.Sprintf("agent unavailable at %q: %s (is the agent running? use -socketPath to point at its socket)", s.socketPath, st.Message())
		case codes.PermissionDenied:
			return fmt.Sprintf("%s (code: %s; no registration entry matches this process: check the entry's selectors and parent)", st.Message(), st.Code())
		case codes.DeadlineExceeded:
			return fmt.Sprintf("%s (code: %s; no answer within -timeout: is the agent attested and synced?)", st.Message(), st.Code())
		}
		return ""
	})
}

// connectionFailure tells whether an Unavailable status was made by gRPC on
// this side (no connection to the socket, or the connection lost) rather
// than sent by the agent.
func connectionFailure(msg string) bool {
	for _, m := range []string{"connection error", "transport", "error reading from server", "connection closed", "name resolver"} {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
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
