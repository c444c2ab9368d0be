package sds

import (
	"context"

	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/sds/sdspb"
)

// Envoy's names: the service and the types of what it serves.
const (
	serviceName = "envoy.service.secret.v3.SecretDiscoveryService"
	// SecretTypeURL is the type of every resource SDS serves.
	SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	// spiffeValidatorConfigTypeURL is the typed config of Envoy's SPIFFE
	// certificate validator.
	spiffeValidatorConfigTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)

// secretServer is what serviceDesc dispatches to.
type secretServer interface {
	FetchSecrets(context.Context, *sdspb.DiscoveryRequest) (*sdspb.DiscoveryResponse, error)
	StreamSecrets(grpc.BidiStreamingServer[sdspb.DiscoveryRequest, sdspb.DiscoveryResponse]) error
}

// serviceDesc is envoy.service.secret.v3.SecretDiscoveryService over the
// messages of sdspb (Envoy's wire format). DeltaSecrets, which SPIRE does
// not implement either, is left out: gRPC answers it Unimplemented.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*secretServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "FetchSecrets",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(sdspb.DiscoveryRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			fetch := func(ctx context.Context, req any) (any, error) {
				return srv.(secretServer).FetchSecrets(ctx, req.(*sdspb.DiscoveryRequest))
			}
			if interceptor == nil {
				return fetch(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + serviceName + "/FetchSecrets"}, fetch)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName: "StreamSecrets",
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(secretServer).StreamSecrets(&grpc.GenericServerStream[sdspb.DiscoveryRequest, sdspb.DiscoveryResponse]{ServerStream: stream})
		},
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: "envoy/service/secret/v3/sds.proto",
}
