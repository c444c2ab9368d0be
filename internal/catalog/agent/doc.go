// Package agent is sigil-agent's plugin catalog: the built-in plugins of
// each type and how each is built. Today it holds the agent half of
// NodeAttestor "join_token"; the per-type lists come next.
package agent
