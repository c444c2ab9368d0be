package servercli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// agentFilterFlags are the filters of "agent list" and "agent count".
type agentFilterFlags struct {
	attestationType  string
	selectors        stringsFlag
	matchSelectorsOn string
	expiresBefore    string
	banned           bool
	canReattest      bool
}

func (c *agentFilterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.attestationType, "attestationType", "", "Filter by attestation type, like join_token or x509pop")
	fs.Var(&c.selectors, "selector", "A colon-delimited type:value selector. Can be used more than once")
	fs.StringVar(&c.matchSelectorsOn, "matchSelectorsOn", "superset", "The match mode used when filtering by selectors. Options: exact, any, superset and subset")
	fs.StringVar(&c.expiresBefore, "expiresBefore", "", "Filter by expiration time (format: \"2006-01-02 15:04:05 -0700 -07\")")
	fs.BoolVar(&c.banned, "banned", false, "If given, only banned agents (-banned) or only agents that are not banned (-banned=false); all agents if absent")
	fs.BoolVar(&c.canReattest, "canReattest", false, "If given, only agents that can re-attest (-canReattest) or only those that can't (-canReattest=false); all agents if absent")
}

type agentFilter struct {
	attestationType string
	selectors       *types.SelectorMatch
	banned          *wrapperspb.BoolValue
	canReattest     *wrapperspb.BoolValue
	expiresBefore   string
}

func (c *agentFilterFlags) parse(given map[string]bool) (*agentFilter, error) {
	f := &agentFilter{attestationType: c.attestationType}
	match, err := parseSelectorMatch(c.matchSelectorsOn)
	if err != nil {
		return nil, fmt.Errorf("-matchSelectorsOn: %w", err)
	}
	if len(c.selectors) > 0 {
		sels, err := parseSelectors(c.selectors)
		if err != nil {
			return nil, err
		}
		f.selectors = &types.SelectorMatch{Selectors: sels, Match: match}
	}
	// Only filter on booleans the user actually gave.
	if given["banned"] {
		f.banned = wrapperspb.Bool(c.banned)
	}
	if given["canReattest"] {
		f.canReattest = wrapperspb.Bool(c.canReattest)
	}
	if c.expiresBefore != "" {
		if _, err := time.Parse("2006-01-02 15:04:05 -0700 -07", c.expiresBefore); err != nil {
			return nil, fmt.Errorf("-expiresBefore %q: %w (use the format \"2006-01-02 15:04:05 -0700 -07\")", c.expiresBefore, err)
		}
		f.expiresBefore = c.expiresBefore
	}
	return f, nil
}

// ---- agent list ----

type agentListCmd struct{ agentFilterFlags }

func (c *agentListCmd) flags(fs *flag.FlagSet) { c.register(fs) }

func (c *agentListCmd) run(ctx context.Context, s *session) error {
	f, err := c.parse(s.given)
	if err != nil {
		return err
	}
	client, err := s.agentClient()
	if err != nil {
		return err
	}
	req := &agentv1.ListAgentsRequest{
		PageSize: listPageSize,
		Filter: &agentv1.ListAgentsRequest_Filter{
			ByAttestationType: f.attestationType,
			BySelectorMatch:   f.selectors,
			ByBanned:          f.banned,
			ByCanReattest:     f.canReattest,
			ByExpiresBefore:   f.expiresBefore,
		},
	}
	resp := &agentv1.ListAgentsResponse{}
	for {
		page, err := client.ListAgents(ctx, req)
		if err != nil {
			return fmt.Errorf("listing agents: %w", err)
		}
		resp.Agents = append(resp.Agents, page.GetAgents()...)
		if page.GetNextPageToken() == "" || page.GetNextPageToken() == req.PageToken {
			break
		}
		req.PageToken = page.GetNextPageToken()
	}
	if s.json() {
		return s.printJSON(resp)
	}
	printAgentList(s.stdout, resp.Agents)
	return nil
}

// ---- agent count ----

type agentCountCmd struct{ agentFilterFlags }

func (c *agentCountCmd) flags(fs *flag.FlagSet) { c.register(fs) }

func (c *agentCountCmd) run(ctx context.Context, s *session) error {
	f, err := c.parse(s.given)
	if err != nil {
		return err
	}
	client, err := s.agentClient()
	if err != nil {
		return err
	}
	resp, err := client.CountAgents(ctx, &agentv1.CountAgentsRequest{
		Filter: &agentv1.CountAgentsRequest_Filter{
			ByAttestationType: f.attestationType,
			BySelectorMatch:   f.selectors,
			ByBanned:          f.banned,
			ByCanReattest:     f.canReattest,
			ByExpiresBefore:   f.expiresBefore,
		},
	})
	if err != nil {
		return fmt.Errorf("counting agents: %w", err)
	}
	if s.json() {
		return s.printJSON(resp)
	}
	n := int(resp.GetCount())
	s.printf("%d attested %s\n", n, plural(n, "agent", "agents"))
	return nil
}

// agentIDFlag is the -spiffeID of show, ban and evict.
type agentIDFlag struct{ spiffeID string }

func (c *agentIDFlag) register(fs *flag.FlagSet, verb string) {
	fs.StringVar(&c.spiffeID, "spiffeID", "", "The SPIFFE ID of the agent to "+verb+" (agent identity)")
}

func (c *agentIDFlag) id() (*types.SPIFFEID, error) {
	if c.spiffeID == "" {
		return nil, errors.New("a SPIFFE ID is required: use -spiffeID with the agent's SPIFFE ID (see 'agent list')")
	}
	return parseID("-spiffeID", c.spiffeID)
}

// act runs call, an agent RPC without an answer (ban, evict), on the agent
// named by -spiffeID, and reports success as "Agent <done> successfully"
// (or {} with -output json); errors name the action by its gerund.
func (c *agentIDFlag) act(ctx context.Context, s *session, gerund, done string, call func(context.Context, agentv1.AgentClient, *types.SPIFFEID) error) error {
	id, err := c.id()
	if err != nil {
		return err
	}
	client, err := s.agentClient()
	if err != nil {
		return err
	}
	if err := call(ctx, client, id); err != nil {
		return fmt.Errorf("%s agent %s: %w", gerund, c.spiffeID, err)
	}
	if s.json() {
		return s.printJSON(&emptypb.Empty{})
	}
	s.printf("Agent %s successfully\n", done)
	return nil
}

// ---- agent show ----

type agentShowCmd struct{ agentIDFlag }

func (c *agentShowCmd) flags(fs *flag.FlagSet) { c.register(fs, "show") }

func (c *agentShowCmd) run(ctx context.Context, s *session) error {
	id, err := c.id()
	if err != nil {
		return err
	}
	client, err := s.agentClient()
	if err != nil {
		return err
	}
	a, err := client.GetAgent(ctx, &agentv1.GetAgentRequest{Id: id})
	if err != nil {
		return fmt.Errorf("getting agent %s: %w", c.spiffeID, err)
	}
	if s.json() {
		return s.printJSON(a)
	}
	printAgentShow(s.stdout, a)
	return nil
}

// ---- agent ban ----

type agentBanCmd struct{ agentIDFlag }

func (c *agentBanCmd) flags(fs *flag.FlagSet) { c.register(fs, "ban") }

func (c *agentBanCmd) run(ctx context.Context, s *session) error {
	return c.act(ctx, s, "banning", "banned", func(ctx context.Context, client agentv1.AgentClient, id *types.SPIFFEID) error {
		_, err := client.BanAgent(ctx, &agentv1.BanAgentRequest{Id: id})
		return err
	})
}

// ---- agent evict ----

type agentEvictCmd struct{ agentIDFlag }

func (c *agentEvictCmd) flags(fs *flag.FlagSet) { c.register(fs, "evict") }

func (c *agentEvictCmd) run(ctx context.Context, s *session) error {
	return c.act(ctx, s, "evicting", "evicted", func(ctx context.Context, client agentv1.AgentClient, id *types.SPIFFEID) error {
		_, err := client.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: id})
		return err
	})
}
