package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// The servers an agent may connect to.
//
// SPIRE's agent takes one server_address (and server_port); a DNS name
// there may resolve to several addresses, and the agent uses all of them.
// server_addresses is a Sigil extension for deployments without such a
// name: a list of "host" or "host:port" entries (IPv6 as "[::1]:8081" or
// a bare "::1"), server_port being the port of those without one. Exactly
// one of the two is set. -serverAddress replaces either.

// maxServerAddresses bounds server_addresses.
const maxServerAddresses = 64

// serverAddresses reads server_addresses. Errors with a line are reported
// here; Validate repeats the checks for configurations built in code.
func (d *decoder) serverAddresses(b *block, a *Agent) {
	if !b.strings("server_addresses", &a.ServerAddresses) {
		return
	}
	pos := b.kids["server_addresses"].pos
	if err := checkServerAddresses(a.ServerAddresses); err != nil {
		d.errorf(pos, "invalid server_addresses in %s: %v", b.desc, err)
	}
}

// checkServerAddresses validates server_addresses' entries (not their
// ports' presence: server_port may supply them).
func checkServerAddresses(list []string) error {
	if len(list) == 0 {
		return errors.New("the list is empty")
	}
	if len(list) > maxServerAddresses {
		return fmt.Errorf("%d entries, at most %d", len(list), maxServerAddresses)
	}
	seen := map[string]bool{}
	for _, s := range list {
		host, port, err := splitServerAddress(s)
		if err != nil {
			return err
		}
		key := strings.ToLower(host) + " " + strconv.Itoa(port)
		if seen[key] {
			return fmt.Errorf("%q is listed twice", s)
		}
		seen[key] = true
	}
	return nil
}

// splitServerAddress splits "host" or "host:port" (port 0 when absent).
func splitServerAddress(s string) (host string, port int, err error) {
	quoted := strconv.Quote(clipped(s))
	if s == "" || strings.TrimSpace(s) != s {
		return "", 0, fmt.Errorf("entry %s: a host or host:port without spaces is required", quoted)
	}
	if strings.ContainsAny(s, "/@?#") {
		return "", 0, fmt.Errorf("entry %s: want host or host:port, not a URL or path (an IPv6 address with a port in brackets: [::1]:8081)", quoted)
	}
	host = s
	if h, p, err := net.SplitHostPort(s); err == nil {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 || v > 65535 {
			return "", 0, fmt.Errorf("entry %s: port %q out of range 1..65535", quoted, clipped(p))
		}
		host, port = h, v
	} else if strings.Contains(s, ":") && net.ParseIP(s) == nil {
		// Not host:port, and not a bare IPv6 address.
		return "", 0, fmt.Errorf("entry %s: want host or host:port (an IPv6 address with a port in brackets: [::1]:8081)", quoted)
	}
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", 0, fmt.Errorf("entry %s: %q is not a host name or IP address", quoted, clipped(host))
	}
	return host, port, nil
}

// clipped shortens a value echoed in an error.
func clipped(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// Servers returns the servers the agent connects to, as host:port, in
// configuration order: server_address with server_port, or every entry of
// server_addresses (server_port for those without a port). A host may be
// a DNS name resolving to several addresses; the agent uses them all. Call
// it on a validated configuration.
func (a *Agent) Servers() []string {
	if len(a.ServerAddresses) == 0 {
		if a.ServerAddress == "" {
			return nil
		}
		return []string{net.JoinHostPort(a.ServerAddress, strconv.Itoa(a.ServerPort))}
	}
	out := make([]string, 0, len(a.ServerAddresses))
	for _, s := range a.ServerAddresses {
		host, port, err := splitServerAddress(s)
		if err != nil {
			continue
		}
		if port == 0 {
			port = a.ServerPort
		}
		out = append(out, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return out
}

// validateServers checks server_address / server_addresses / server_port.
func (a *Agent) validateServers() error {
	switch {
	case a.ServerAddress != "" && len(a.ServerAddresses) > 0:
		return errors.New("server_address and server_addresses are both set: set one (server_addresses lists several servers)")
	case len(a.ServerAddresses) > 0:
		if err := checkServerAddresses(a.ServerAddresses); err != nil {
			return fmt.Errorf("invalid server_addresses: %w", err)
		}
		allPorts := true
		for _, s := range a.ServerAddresses {
			if _, p, _ := splitServerAddress(s); p == 0 {
				allPorts = false
			}
		}
		if err := validatePort("server_port", a.ServerPort, allPorts); err != nil {
			return fmt.Errorf("%w (the port of the server_addresses entries without one)", err)
		}
		return nil
	case a.ServerAddress == "":
		return errors.New("server_address must be configured")
	}
	return validatePort("server_port", a.ServerPort, false)
}
