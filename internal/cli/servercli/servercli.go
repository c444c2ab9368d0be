// Package servercli implements the administrative subcommands of
// sigil-server (entry, agent, bundle, federation, token, x509, jwt,
// healthcheck). Each command talks to a running server over its admin unix
// socket with the spire-api-sdk gRPC clients, so the same commands also work
// against a SPIRE server, and their flags and output follow the SPIRE CLI.
package servercli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// DefaultSocketPath is the admin API socket the commands dial unless
// -socketPath says otherwise (the same default as SPIRE).
const DefaultSocketPath = "/tmp/spire-server/private/api.sock"

// Exit codes returned by Run.
const (
	ExitOK             = cliutil.ExitOK
	ExitError          = cliutil.ExitError
	ExitUnknownCommand = cliutil.ExitUnknownCommand
)

// LeadCommands are the sigil-server commands implemented outside this
// package (in cmd/sigil-server); they are listed in the usage text so that
// users see everything the binary offers.
var LeadCommands = []CommandInfo{
	{Name: "run", Synopsis: "Runs the server"},
	{Name: "validate", Synopsis: "Validates a server configuration file"},
	{Name: "dev", Synopsis: "Runs a server and an agent in one process for local development"},
	{Name: "version", Synopsis: "Prints the version"},
}

// stdin is where "-data -" and "bundle set" without -path read from; tests
// replace it.
var stdin io.Reader = os.Stdin

// CommandInfo names a command and says what it does.
type CommandInfo = cliutil.CommandInfo

// runner is one subcommand: it registers its own flags and runs against a
// session that holds the connection and the output streams.
type runner interface {
	flags(fs *flag.FlagSet)
	run(ctx context.Context, s *session) error
}

type spec struct {
	name     string // e.g. "entry create"
	synopsis string
	// noOutput is set for commands without an -output flag.
	noOutput bool
	// noSocket is set for commands that do not dial the server.
	noSocket bool
	make     func() runner
}

func specs() []spec {
	return []spec{
		{name: "agent ban", synopsis: "Ban an attested agent given its SPIFFE ID", make: func() runner { return &agentBanCmd{} }},
		{name: "agent count", synopsis: "Count attested agents", make: func() runner { return &agentCountCmd{} }},
		{name: "agent evict", synopsis: "Evicts an attested agent given its SPIFFE ID", make: func() runner { return &agentEvictCmd{} }},
		{name: "agent list", synopsis: "Lists attested agents and their SPIFFE IDs", make: func() runner { return &agentListCmd{} }},
		{name: "agent show", synopsis: "Shows the details of an attested agent given its SPIFFE ID", make: func() runner { return &agentShowCmd{} }},
		{name: "bundle count", synopsis: "Count bundles", make: func() runner { return &bundleCountCmd{} }},
		{name: "bundle delete", synopsis: "Deletes bundle data", make: func() runner { return &bundleDeleteCmd{} }},
		{name: "bundle list", synopsis: "Lists federated bundle data", make: func() runner { return &bundleListCmd{} }},
		{name: "bundle set", synopsis: "Creates or updates federated bundle data", make: func() runner { return &bundleSetCmd{} }},
		{name: "bundle show", synopsis: "Prints server CA bundle to stdout", make: func() runner { return &bundleShowCmd{} }},
		{name: "entry count", synopsis: "Count registration entries", make: func() runner { return &entryCountCmd{} }},
		{name: "entry create", synopsis: "Creates registration entries", make: func() runner { return &entryCreateCmd{} }},
		{name: "entry delete", synopsis: "Deletes registration entries", make: func() runner { return &entryDeleteCmd{} }},
		{name: "entry show", synopsis: "Displays configured registration entries", make: func() runner { return &entryShowCmd{} }},
		{name: "entry update", synopsis: "Updates registration entries", make: func() runner { return &entryUpdateCmd{} }},
		{name: "federation create", synopsis: "Creates a dynamic federation relationship with a foreign trust domain", make: func() runner { return &federationCreateCmd{} }},
		{name: "federation delete", synopsis: "Deletes a dynamic federation relationship", make: func() runner { return &federationDeleteCmd{} }},
		{name: "federation list", synopsis: "Lists all dynamic federation relationships", make: func() runner { return &federationListCmd{} }},
		{name: "federation refresh", synopsis: "Refreshes the bundle from the specified federated trust domain", make: func() runner { return &federationRefreshCmd{} }},
		{name: "federation show", synopsis: "Shows a dynamic federation relationship", make: func() runner { return &federationShowCmd{} }},
		{name: "federation update", synopsis: "Updates a dynamic federation relationship with a foreign trust domain", make: func() runner { return &federationUpdateCmd{} }},
		{name: "healthcheck", synopsis: "Determines server health status", noOutput: true, make: func() runner { return &healthcheckCmd{} }},
		{name: "jwt mint", synopsis: "Mints a JWT-SVID", make: func() runner { return &jwtMintCmd{} }},
		{name: "token generate", synopsis: "Generates a join token", make: func() runner { return &tokenGenerateCmd{} }},
		{name: "x509 mint", synopsis: "Mints an X509-SVID", make: func() runner { return &x509MintCmd{} }},
	}
}

// Commands returns the names and synopses of the commands Run accepts.
func Commands() []CommandInfo {
	var out []CommandInfo
	for _, s := range specs() {
		out = append(out, CommandInfo{Name: s.name, Synopsis: s.synopsis})
	}
	return out
}

// Run executes the admin command named by args (e.g. ["entry", "show",
// "-spiffeID", "spiffe://example.org/web"]) and returns the process exit
// code: 0 on success, 1 on failure (the reason is printed on stderr), 127 for
// an unknown command. "-h" after a command prints its flags and returns 0.
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
	i, rest := cliutil.MatchCommand(names, args)
	if i < 0 {
		// A known group with a missing or unknown subcommand.
		if subs := subcommandsOf(all, args[0]); len(subs) > 0 {
			if len(args) == 1 || cliutil.IsHelp(args[1]) {
				// "entry -h" asked for this: stdout and success.
				w, code := stderr, ExitError
				if len(args) > 1 {
					w, code = stdout, ExitOK
				}
				fmt.Fprintf(w, "Usage: sigil-server %s <subcommand> [flags]\n\nSubcommands:\n", args[0])
				for _, s := range subs {
					fmt.Fprintf(w, "    %-10s %s\n", strings.Fields(s.name)[1], s.synopsis)
				}
				return code
			}
			fmt.Fprintf(stderr, "Error: unknown command %q\n", args[0]+" "+args[1])
			fmt.Fprintf(stderr, "Available %q subcommands: %s\n", args[0], joinSub(subs))
			return ExitUnknownCommand
		}
		fmt.Fprintf(stderr, "Error: unknown command %q\n", args[0])
		fmt.Fprintf(stderr, "Available commands: %s\n", strings.Join(topLevel(all), ", "))
		return ExitUnknownCommand
	}
	return runSpec(ctx, &all[i], rest, stdout, stderr)
}

func runSpec(ctx context.Context, sp *spec, args []string, stdout, stderr io.Writer) int {
	r := sp.make()
	s := &session{stdout: stdout, stderr: stderr}
	fs := cliutil.NewFlagSet(sp.name, sp.synopsis)
	var instance string
	if !sp.noSocket {
		fs.StringVar(&s.socketPath, "socketPath", DefaultSocketPath, "Path to the SPIRE/Sigil server API socket")
		fs.StringVar(&instance, "instance", "", cliutil.InstanceUsage(cliutil.ServerSocketTemplateEnv))
	}
	s.output = "pretty"
	if !sp.noOutput {
		fs.StringVar(&s.output, "output", "pretty", "Desired output format (pretty, json)")
	}
	r.flags(fs)
	return cliutil.Execute(fs, args, stdout, stderr, func() error {
		s.given = setFlags(fs)
		if err := cliutil.CheckOutput(s.output); err != nil {
			return err
		}
		if !sp.noSocket {
			p, err := cliutil.ResolveSocketPath(s.socketPath, DefaultSocketPath, cliutil.ServerSocketTemplateEnv, instance)
			if err != nil {
				return err
			}
			s.socketPath = p
		}
		defer s.close()
		return r.run(ctx, s)
	}, s.describe)
}

func printUsage(w io.Writer) {
	cliutil.PrintUsage(w, "sigil-server", 16, LeadCommands, Commands())
}

func subcommandsOf(all []spec, group string) []spec {
	var out []spec
	for _, s := range all {
		w := strings.Fields(s.name)
		if len(w) == 2 && w[0] == group {
			out = append(out, s)
		}
	}
	return out
}

func joinSub(subs []spec) string {
	names := make([]string, len(subs))
	for i, s := range subs {
		names[i] = strings.Fields(s.name)[1]
	}
	return strings.Join(names, ", ")
}

func topLevel(all []spec) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range LeadCommands {
		seen[c.Name] = true
		out = append(out, c.Name)
	}
	for _, s := range all {
		w := strings.Fields(s.name)[0]
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	sort.Strings(out)
	return out
}

// session is the per-invocation state shared by the common flags and the
// command: output streams, output format and the (lazily dialed) connection.
type session struct {
	stdout, stderr io.Writer
	socketPath     string
	output         string
	conn           *grpc.ClientConn
	// given holds the names of the flags set on the command line.
	given map[string]bool
}

func (s *session) json() bool { return s.output == "json" }

func (s *session) printf(format string, args ...any) {
	fmt.Fprintf(s.stdout, format, args...)
}

func (s *session) errorf(format string, args ...any) {
	fmt.Fprintf(s.stderr, format, args...)
}

// dial connects to the admin socket. The connection is created lazily, so
// commands that fail validation never touch the socket.
func (s *session) dial() (*grpc.ClientConn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	if s.socketPath == "" {
		return nil, errors.New("-socketPath is empty: give the path of the server API socket")
	}
	if _, err := os.Stat(s.socketPath); err != nil {
		return nil, fmt.Errorf("cannot reach the server API socket %q: %w (is the server running? use -socketPath to point at its socket)", s.socketPath, err)
	}
	conn, err := grpc.NewClient("unix:"+s.socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to %q: %w", s.socketPath, err)
	}
	s.conn = conn
	return conn, nil
}

func (s *session) close() {
	if s.conn != nil {
		_ = s.conn.Close()
	}
}

func (s *session) entryClient() (entryv1.EntryClient, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return entryv1.NewEntryClient(c), nil
}

func (s *session) agentClient() (agentv1.AgentClient, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return agentv1.NewAgentClient(c), nil
}

func (s *session) bundleClient() (bundlev1.BundleClient, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return bundlev1.NewBundleClient(c), nil
}

func (s *session) svidClient() (svidv1.SVIDClient, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return svidv1.NewSVIDClient(c), nil
}

// printJSON writes m as protojson (proto field names, unpopulated fields
// included), like SPIRE's "-output json".
func (s *session) printJSON(m proto.Message) error { return cliutil.PrintJSON(s.stdout, m) }

// describe turns an error into a message that says what happened and, where
// it can, what to do about it. gRPC status errors, even wrapped ones, are
// shown as "<message> (code: <Code>)" instead of "rpc error: code = ...".
func (s *session) describe(err error) string {
	return cliutil.DescribeError(err, func(st *status.Status) string {
		switch st.Code() {
		case codes.Unavailable:
			return fmt.Sprintf("server unavailable at %q: %s (is the server running? use -socketPath to point at its socket)", s.socketPath, st.Message())
		case codes.PermissionDenied, codes.Unauthenticated:
			return fmt.Sprintf("%s (code: %s; admin commands must use the server's local admin socket)", st.Message(), st.Code())
		case codes.Unimplemented:
			return fmt.Sprintf("%s (code: %s; the server does not offer this API)", st.Message(), st.Code())
		}
		return ""
	})
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (f *stringsFlag) String() string { return strings.Join(*f, ",") }

func (f *stringsFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}
