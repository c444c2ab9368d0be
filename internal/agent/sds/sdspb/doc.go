// Package sdspb holds the Envoy SDS v3 messages the agent uses: Envoy's
// messages (DiscoveryRequest/Response, Node, Secret, TlsCertificate,
// CertificateValidationContext, SPIFFECertValidatorConfig, DataSource, …),
// generated from go-control-plane's own descriptors with only the fields
// the agent reads or writes, each with Envoy's number and type, in the proto
// package sigil.sds.v3.
//
// On the wire they are Envoy's messages: a peer sees field numbers and
// types, never message names, except in google.protobuf.Any type URLs,
// which the agent sets to Envoy's (the SDS service's method paths are
// Envoy's too, see internal/agent/sds). Fields an Envoy sends that are not
// kept are carried as unknown fields and ignored.
//
// Why not go-control-plane's packages themselves: linking one message of a
// generated package links every message of it, and SDS's dozen messages
// live in packages of hundreds (envoy/config/core/v3 …): about 1.1 MiB of
// the release agent binary, against about 0.1 MiB for these. The tests
// speak to the agent with go-control-plane's generated client, and
// TestSameWireFormat checks every field here against go-control-plane's
// descriptor.
//
// Regenerate (after a go-control-plane upgrade, or to keep another field)
// with go generate in this directory.
package sdspb

//go:generate go run ./internal/gen
