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

// AttestJoinToken attests the node with a join token and returns the agent
// SVID chain (leaf first) for the key of csr (DER). The token is single
// use: a failed call after the server consumed it cannot be retried.
func (c *Client) AttestJoinToken(ctx context.Context, token string, csr []byte) ([]*x509.Certificate, error) {
	if token == "" {
		return nil, errors.New("attest: empty join token")
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	stream, err := c.agent.AttestAgent(ctx)
	if err != nil {
		return nil, fmt.Errorf("attest: open stream: %w", err)
	}
	err = stream.Send(&agentv1.AttestAgentRequest{
		Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
			Data:   &types.AttestationData{Type: JoinTokenAttestationType, Payload: []byte(token)},
			Params: &agentv1.AgentX509SVIDParams{Csr: csr},
		}},
	})
	if err != nil {
		// The real error comes from Recv.
		if _, rerr := stream.Recv(); rerr != nil {
			return nil, fmt.Errorf("attest: %w", rerr)
		}
		return nil, fmt.Errorf("attest: send params: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	_ = stream.CloseSend()
	result := resp.GetResult()
	if result == nil {
		// join_token has no challenge/response step.
		return nil, errors.New("attest: server sent a challenge, which join_token attestation does not support")
	}
	chain, err := parseSVIDChain(result.GetSvid())
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return chain, nil
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
