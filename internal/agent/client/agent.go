package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// JoinTokenAttestationType is the attestation data type of join tokens.
const JoinTokenAttestationType = "join_token"

// MaxChallenges bounds the challenges one attestation answers: a server
// that keeps challenging is failing, and the agent gives up rather than
// loop until the deadline.
const MaxChallenges = 32

// Responder answers the server's challenges during node attestation. An
// agent-side node attestor's session (internal/attest/node.Session) is
// one.
type Responder interface {
	// Payload is the attestation data sent first.
	Payload() []byte
	// Respond answers one challenge.
	Respond(ctx context.Context, challenge []byte) ([]byte, error)
}

// Attestation is the server's answer to a successful node attestation.
type Attestation struct {
	// Chain is the agent SVID chain, leaf first.
	Chain []*x509.Certificate
	// Reattestable is the server's word that the attestor can repeat its
	// proof: the agent renews its SVID by attesting again instead of
	// calling RenewAgent (which the server then refuses with
	// AGENT_MUST_REATTEST).
	Reattestable bool
}

// AttestAgent runs node attestation over agent/v1 AttestAgent, as SPIRE's
// agent does: it sends the attestation data (attType and the session's
// payload) with csr (DER), then answers every challenge the server sends
// with the session's Respond until the server returns the agent SVID. It
// serves first attestation and re-attestation alike; the server need not
// (and, with an expired SVID, cannot) authenticate the agent's
// certificate.
//
// An error from the server is returned wrapped, with its status
// (AttestationRefused tells a refusal); an error from Respond is returned
// wrapped and ends the exchange (the stream is cancelled).
func (c *Client) AttestAgent(ctx context.Context, attType string, s Responder, csr []byte) (*Attestation, error) {
	if attType == "" {
		return nil, errors.New("attest: empty attestation type")
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	stream, err := c.agent.AttestAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("attest: open stream: %w", err)
	}
	send := func(req *agentv1.AttestAgentRequest, what string) error {
		if err := stream.Send(req); err != nil {
			// A failed Send means the stream is done: the real
			// error (the server's status) comes from Recv.
			if _, rerr := stream.Recv(); rerr != nil {
				return fmt.Errorf("attest: %w", rerr)
			}
			return fmt.Errorf("attest: send %s: %w", what, err)
		}
		return nil
	}
	err = send(&agentv1.AttestAgentRequest{
		Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
			Data:   &types.AttestationData{Type: attType, Payload: s.Payload()},
			Params: &agentv1.AgentX509SVIDParams{Csr: csr},
		}},
	}, "attestation data")
	if err != nil {
		return nil, err
	}
	for challenges := 0; ; challenges++ {
		resp, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("attest: %w", err)
		}
		switch step := resp.GetStep().(type) {
		case *agentv1.AttestAgentResponse_Result_:
			_ = stream.CloseSend()
			chain, err := parseSVIDChain(step.Result.GetSvid())
			if err != nil {
				return nil, fmt.Errorf("attest: %w", err)
			}
			return &Attestation{Chain: chain, Reattestable: step.Result.GetReattestable()}, nil
		case *agentv1.AttestAgentResponse_Challenge:
			if challenges >= MaxChallenges {
				return nil, fmt.Errorf("attest: the server sent more than %d challenges", MaxChallenges)
			}
			answer, err := s.Respond(ctx, step.Challenge)
			if err != nil {
				// Returning cancels ctx, which ends the stream: the
				// server sees the agent go away.
				return nil, fmt.Errorf("attest: answer the server's challenge: %w", err)
			}
			err = send(&agentv1.AttestAgentRequest{
				Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: answer},
			}, "challenge response")
			if err != nil {
				return nil, err
			}
		default:
			return nil, errors.New("attest: the server's response carries neither a challenge nor a result")
		}
	}
}

// AttestJoinToken attests the node with a join token and returns the agent
// SVID chain (leaf first) for the key of csr (DER). The token is single
// use: a failed call after the server consumed it cannot be retried.
func (c *Client) AttestJoinToken(ctx context.Context, token string, csr []byte) ([]*x509.Certificate, error) {
	if token == "" {
		return nil, errors.New("attest: empty join token")
	}
	a, err := c.AttestAgent(ctx, JoinTokenAttestationType, payloadOnly(token), csr)
	if err != nil {
		return nil, err
	}
	return a.Chain, nil
}

// payloadOnly is an attestation without challenges (join_token).
type payloadOnly []byte

func (p payloadOnly) Payload() []byte { return p }

func (payloadOnly) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("join_token attestation has no challenge")
}

// RenewAgent asks for a new agent SVID for the key of csr (DER). The caller
// must be connected with its current, valid agent SVID.
func (c *Client) RenewAgent(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.agent.RenewAgent(ctx, &agentv1.RenewAgentRequest{
		Params: &agentv1.AgentX509SVIDParams{Csr: csr},
	})
	if err != nil {
		return nil, fmt.Errorf("renew agent: %w", err)
	}
	chain, err := parseSVIDChain(resp.GetSvid())
	if err != nil {
		return nil, fmt.Errorf("renew agent: %w", err)
	}
	return chain, nil
}

// PostStatus reports the agent's version, as SPIRE's agent does (the
// server shows it as agent_version). The caller must be connected with its
// current agent SVID.
func (c *Client) PostStatus(ctx context.Context, agentVersion string) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	if _, err := c.agent.PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: agentVersion}); err != nil {
		return fmt.Errorf("post agent status: %w", err)
	}
	return nil
}

// parseSVIDChain parses the DER chain of an X509SVID message.
func parseSVIDChain(s *types.X509SVID) ([]*x509.Certificate, error) {
	if s == nil || len(s.CertChain) == 0 {
		return nil, errors.New("response carries no certificate chain")
	}
	chain := make([]*x509.Certificate, 0, len(s.CertChain))
	for i, der := range s.CertChain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d of the chain: %w", i, err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}
