package cliutil

import (
	"fmt"
	"os"
	"strings"
)

// Environment variables of SPIRE's CLIs naming the socket to use: a path,
// or a template in which -instance replaces "%i".
const (
	ServerSocketTemplateEnv = "SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE"
	AgentSocketTemplateEnv  = "SPIRE_AGENT_PUBLIC_SOCKET_TEMPLATE"
)

// InstanceUsage is the -instance flag's usage for the template variable
// templateEnv.
func InstanceUsage(templateEnv string) string {
	return "Instance name to substitute into socket templates (env " + templateEnv + ")."
}

// ResolveSocketPath chooses the socket a command dials, in SPIRE's order:
// -socketPath when it differs from its default; else, with -instance, the
// template of templateEnv with every "%i" replaced by the instance name;
// else the path in the variable named like templateEnv without its
// "_TEMPLATE" suffix (SPIRE_SERVER_PRIVATE_SOCKET, SPIRE_AGENT_PUBLIC_SOCKET);
// else the default. An -instance without a template holding "%i" is an
// error, whichever socket would be chosen.
func ResolveSocketPath(socketPath, defaultPath, templateEnv, instance string) (string, error) {
	tpl := os.Getenv(templateEnv)
	if instance != "" {
		if tpl == "" {
			return "", fmt.Errorf("-instance needs the %s environment variable (a socket path with %%i where the instance name goes)", templateEnv)
		}
		if !strings.Contains(tpl, "%i") {
			return "", fmt.Errorf("-instance: %s has no %%i to replace with the instance name", templateEnv)
		}
	}
	switch {
	case socketPath != defaultPath:
		return socketPath, nil
	case instance != "":
		return strings.ReplaceAll(tpl, "%i", instance), nil
	}
	if p := os.Getenv(strings.TrimSuffix(templateEnv, "_TEMPLATE")); p != "" {
		return p, nil
	}
	return defaultPath, nil
}
