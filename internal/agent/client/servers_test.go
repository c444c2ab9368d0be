package client_test

import (
	"context"
	"net"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func attestThrough(t *testing.T, servers *client.Servers, s *challengeServer) error {
	t.Helper()
	cl, err := client.Dial(client.Config{Servers: servers, TrustDomain: s.ca.TD, Bundle: s.ca.Roots})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, csr := testca.CSR(t)
	_, err = cl.AttestAgent(context.Background(), "test_cr", &reverser{}, csr)
	return err
}

// TestServersSkipDeadServer: a connection over a server list reaches the
// server that is up, whichever place in the list the agent starts at, on
// the first call (no error surfaces for the dead one). Dialling the dead
// address alone fails: the list is what makes the call succeed.
func TestServersSkipDeadServer(t *testing.T) {
	s := &challengeServer{}
	live := serveChallenges(t, s)
	dead := deadAddr(t)
	for i := range 8 {
		list := []string{dead, live}
		if i%2 == 1 {
			list = []string{live, dead}
		}
		servers, err := client.NewServers(list)
		if err != nil {
			t.Fatal(err)
		}
		if err := attestThrough(t, servers, s); err != nil {
			t.Fatalf("list %q: %v", list, err)
		}
	}
	only, err := client.NewServers([]string{dead})
	if err != nil {
		t.Fatal(err)
	}
	if err := attestThrough(t, only, s); err == nil {
		t.Fatal("a dead server alone answered")
	}
}

// TestServersSpreadAgents: agents (one Servers each) with the same list
// of two live servers do not all pick the same one, and each agent keeps
// its pick for every new connection.
func TestServersSpreadAgents(t *testing.T) {
	a := &challengeServer{}
	addrA := serveChallenges(t, a)
	b := &challengeServer{ca: a.ca}
	addrB := serveChallenges(t, b)
	count := func(s *challengeServer) int { return len(drain(s.seen)) }
	var onA, onB int
	for range 24 {
		servers, err := client.NewServers([]string{addrA, addrB})
		if err != nil {
			t.Fatal(err)
		}
		var first *challengeServer
		for range 3 {
			if err := attestThrough(t, servers, a); err != nil {
				t.Fatal(err)
			}
			got := a
			if n := count(b); n > 0 {
				got = b
			} else if count(a) == 0 {
				t.Fatal("neither server saw the attestation")
			}
			if first != nil && got != first {
				t.Fatal("an agent moved to the other server while both were up")
			}
			first = got
		}
		if first == a {
			onA++
		} else {
			onB++
		}
	}
	if onA == 0 || onB == 0 {
		t.Errorf("24 agents: %d on the first server, %d on the second; want both used", onA, onB)
	}
}

// TestServersSkipUntrustedServer: a server whose certificate the agent's
// bundle does not trust (one that joined after the agent's bootstrap
// bundle was exported) is passed over like a dead one.
func TestServersSkipUntrustedServer(t *testing.T) {
	s := &challengeServer{}
	live := serveChallenges(t, s)
	stranger := serveChallenges(t, &challengeServer{}) // its own CA
	for _, list := range [][]string{{stranger, live}, {live, stranger}} {
		for range 4 {
			servers, err := client.NewServers(list)
			if err != nil {
				t.Fatal(err)
			}
			if err := attestThrough(t, servers, s); err != nil {
				t.Fatalf("list %q: %v", list, err)
			}
		}
	}
}
