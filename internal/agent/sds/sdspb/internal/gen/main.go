// Command gen writes ../../sds.pb.go (go generate in internal/agent/sds/sdspb):
// the Envoy SDS v3 messages the agent uses, copied from go-control-plane's
// own descriptors (github.com/envoyproxy/go-control-plane/envoy, the version
// go.mod pins) into the proto package sigil.sds.v3, keeping only the fields
// the agent reads or writes, each with its number, type and JSON name. The
// wire format is Envoy's: field numbers and types are what a peer sees,
// message names are not (only the Any type URLs, which the agent sets to
// Envoy's). A different proto package lets a binary link both these and
// go-control-plane's messages (the tests do) without a registry conflict.
//
// It exists for size: go-control-plane's generated packages bring every
// message of each proto file they hold (envoy/config/core/v3 alone has
// hundreds), about 1.1 MiB of agent binary for the dozen messages SDS uses.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/format"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/pluginpb"
)

const (
	fileName  = "sigil/sds/v3/sds.proto"
	pkg       = "sigil.sds.v3"
	goPackage = "github.com/sigil-spiffe/sigil/internal/agent/sds/sdspb;sdspb"
)

// Kept lists, per Envoy message, the fields kept (by name). A message
// nested in another kept message is listed with its parent's name first.
var kept = []struct {
	msg    protoreflect.MessageDescriptor
	fields []string
}{
	{(&discoveryv3.DiscoveryRequest{}).ProtoReflect().Descriptor(), []string{"version_info", "node", "resource_names", "type_url", "response_nonce", "error_detail"}},
	{(&discoveryv3.DiscoveryResponse{}).ProtoReflect().Descriptor(), []string{"version_info", "resources", "canary", "type_url", "nonce"}},
	{(&corev3.Node{}).ProtoReflect().Descriptor(), []string{"id", "cluster", "metadata", "user_agent_name", "user_agent_version", "user_agent_build_version"}},
	{(&corev3.BuildVersion{}).ProtoReflect().Descriptor(), []string{"version", "metadata"}},
	{(&typev3.SemanticVersion{}).ProtoReflect().Descriptor(), []string{"major_number", "minor_number", "patch"}},
	{(&corev3.DataSource{}).ProtoReflect().Descriptor(), []string{"filename", "inline_bytes", "inline_string", "environment_variable"}},
	{(&corev3.TypedExtensionConfig{}).ProtoReflect().Descriptor(), []string{"name", "typed_config"}},
	{(&tlsv3.Secret{}).ProtoReflect().Descriptor(), []string{"name", "tls_certificate", "validation_context"}},
	{(&tlsv3.TlsCertificate{}).ProtoReflect().Descriptor(), []string{"certificate_chain", "private_key"}},
	{(&tlsv3.CertificateValidationContext{}).ProtoReflect().Descriptor(), []string{"trusted_ca", "custom_validator_config"}},
	{(&tlsv3.SPIFFECertValidatorConfig{}).ProtoReflect().Descriptor(), []string{"trust_domains"}},
	{(&tlsv3.SPIFFECertValidatorConfig_TrustDomain{}).ProtoReflect().Descriptor(), []string{"name", "trust_bundle"}},
}

// deps are the files of the well-known and Google types kept fields use.
var deps = []protoreflect.FileDescriptor{
	anypb.File_google_protobuf_any_proto,
	structpb.File_google_protobuf_struct_proto,
	rpcstatus.File_google_rpc_status_proto,
}

// newName is a kept Envoy message's name in pkg: its name within its own
// package (nested names keep their parents').
func newName(m protoreflect.MessageDescriptor) protoreflect.FullName {
	rel := strings.TrimPrefix(string(m.FullName()), string(m.ParentFile().Package())+".")
	return protoreflect.FullName(pkg + "." + rel)
}

func main() {
	out := flag.String("o", "sds.pb.go", "output file")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	renamed := map[protoreflect.FullName]protoreflect.FullName{}
	for _, k := range kept {
		renamed[k.msg.FullName()] = newName(k.msg)
	}
	file := &descriptorpb.FileDescriptorProto{
		Name:    proto.String(fileName),
		Package: proto.String(pkg),
		Syntax:  proto.String("proto3"),
		Options: &descriptorpb.FileOptions{GoPackage: proto.String(goPackage)},
	}
	for _, d := range deps {
		file.Dependency = append(file.Dependency, d.Path())
	}
	byName := map[protoreflect.FullName]*descriptorpb.DescriptorProto{}
	for _, k := range kept {
		m, err := copyMessage(k.msg, k.fields, renamed)
		if err != nil {
			return err
		}
		byName[k.msg.FullName()] = m
		if parent, ok := k.msg.Parent().(protoreflect.MessageDescriptor); ok {
			p := byName[parent.FullName()]
			if p == nil {
				return fmt.Errorf("%s: list its parent first", k.msg.FullName())
			}
			p.NestedType = append(p.NestedType, m)
			continue
		}
		file.MessageType = append(file.MessageType, m)
	}
	// The result must be a valid file over its dependencies.
	files := []*descriptorpb.FileDescriptorProto{}
	for _, d := range deps {
		files = append(files, protodesc.ToFileDescriptorProto(d))
	}
	files = append(files, file)
	if _, err := protodesc.NewFiles(&descriptorpb.FileDescriptorSet{File: files}); err != nil {
		return fmt.Errorf("generated descriptor: %w", err)
	}

	plugin, err := protogen.Options{}.New(&pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{fileName},
		Parameter:      proto.String("paths=source_relative"),
		ProtoFile:      files,
	})
	if err != nil {
		return err
	}
	for _, f := range plugin.Files {
		if f.Generate {
			internal_gengo.GenerateFile(plugin, f)
		}
	}
	resp := plugin.Response()
	if resp.Error != nil {
		return fmt.Errorf("protoc-gen-go: %s", resp.GetError())
	}
	if len(resp.File) != 1 {
		return fmt.Errorf("protoc-gen-go wrote %d files", len(resp.File))
	}
	src := []byte(resp.File[0].GetContent())
	// The source comment names a file that exists only here.
	src = bytes.Replace(src, []byte("// source: "+fileName), []byte("// source: Envoy's SDS v3 protos as go-control-plane describes them, trimmed by internal/gen (see doc.go)"), 1)
	if src, err = format.Source(src); err != nil {
		return err
	}
	return os.WriteFile(out, src, 0o644)
}

// copyMessage copies m with only the named fields (in m's order), their
// message types renamed into pkg, without options (validation rules,
// annotations) and without nested types (kept ones are added after).
func copyMessage(m protoreflect.MessageDescriptor, fields []string, renamed map[protoreflect.FullName]protoreflect.FullName) (*descriptorpb.DescriptorProto, error) {
	orig := protodesc.ToDescriptorProto(m)
	out := &descriptorpb.DescriptorProto{Name: orig.Name}
	want := map[string]bool{}
	for _, f := range fields {
		want[f] = true
	}
	oneofs := map[int32]int32{} // original index -> new index
	for _, f := range orig.Field {
		if !want[f.GetName()] {
			continue
		}
		delete(want, f.GetName())
		nf := proto.Clone(f).(*descriptorpb.FieldDescriptorProto)
		nf.Options = nil
		if nf.TypeName != nil {
			full := protoreflect.FullName(strings.TrimPrefix(nf.GetTypeName(), "."))
			switch {
			case renamed[full] != "":
				nf.TypeName = proto.String("." + string(renamed[full]))
			case strings.HasPrefix(string(full), "google."):
			default:
				return nil, fmt.Errorf("%s.%s: type %s is not kept", m.FullName(), f.GetName(), full)
			}
		}
		if f.OneofIndex != nil {
			idx, ok := oneofs[f.GetOneofIndex()]
			if !ok {
				idx = int32(len(out.OneofDecl))
				oneofs[f.GetOneofIndex()] = idx
				out.OneofDecl = append(out.OneofDecl, &descriptorpb.OneofDescriptorProto{Name: orig.OneofDecl[f.GetOneofIndex()].Name})
			}
			nf.OneofIndex = proto.Int32(idx)
		}
		out.Field = append(out.Field, nf)
	}
	if len(want) > 0 {
		return nil, fmt.Errorf("%s has no fields %v", m.FullName(), want)
	}
	return out, nil
}
