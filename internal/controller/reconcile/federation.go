package reconcile

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/render"
)

// TrustDomainAPI is the part of the server's trust domain service
// (trustdomain/v1) the federation reconciler calls.
type TrustDomainAPI interface {
	ListFederationRelationships(ctx context.Context, in *trustdomainv1.ListFederationRelationshipsRequest, opts ...grpc.CallOption) (*trustdomainv1.ListFederationRelationshipsResponse, error)
	BatchCreateFederationRelationship(ctx context.Context, in *trustdomainv1.BatchCreateFederationRelationshipRequest, opts ...grpc.CallOption) (*trustdomainv1.BatchCreateFederationRelationshipResponse, error)
	BatchUpdateFederationRelationship(ctx context.Context, in *trustdomainv1.BatchUpdateFederationRelationshipRequest, opts ...grpc.CallOption) (*trustdomainv1.BatchUpdateFederationRelationshipResponse, error)
	BatchDeleteFederationRelationship(ctx context.Context, in *trustdomainv1.BatchDeleteFederationRelationshipRequest, opts ...grpc.CallOption) (*trustdomainv1.BatchDeleteFederationRelationshipResponse, error)
}

// FederationOwner is a ClusterFederatedTrustDomain and its outcome.
type FederationOwner struct {
	Obj      *v1alpha1.ClusterFederatedTrustDomain
	SpecErr  error
	Failures []string
	// Conflict names the older resource for the same trust domain, which
	// wins.
	Conflict string
}

// SyncFederation makes the server's federation relationships those the
// ClusterFederatedTrustDomains of the controller's class declare (one per
// trust domain, the oldest resource's): it creates, updates and deletes
// relationships. A declared bundle (trustDomainBundle) is sent with the
// relationship; a relationship without one is compared without its
// bundle, which the server refreshes from the endpoint.
func SyncFederation(ctx context.Context, cfg *Config, api TrustDomainAPI, objs []*v1alpha1.ClusterFederatedTrustDomain) ([]*FederationOwner, error) {
	objs = slices.Clone(objs)
	slices.SortFunc(objs, func(a, b *v1alpha1.ClusterFederatedTrustDomain) int { return objCmp(a, b) })
	var owners []*FederationOwner
	want := map[string]*types.FederationRelationship{}
	wantBy := map[string]*FederationOwner{}
	for _, obj := range objs {
		if !cfg.Reconciles(obj.Spec.ClassName) {
			continue
		}
		o := &FederationOwner{Obj: obj}
		owners = append(owners, o)
		f, err := render.FederatedTrustDomain(&obj.Spec)
		if err != nil {
			o.SpecErr = err
			continue
		}
		if prev, ok := wantBy[f.TrustDomain.Name()]; ok {
			o.Conflict = prev.Obj.Name
			continue
		}
		fr, err := relationshipProto(f)
		if err != nil {
			o.SpecErr = err
			continue
		}
		want[f.TrustDomain.Name()] = fr
		wantBy[f.TrustDomain.Name()] = o
	}

	current := map[string]*types.FederationRelationship{}
	token := ""
	for {
		resp, err := api.ListFederationRelationships(ctx, &trustdomainv1.ListFederationRelationshipsRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			return owners, fmt.Errorf("list federation relationships: %w", err)
		}
		for _, fr := range resp.GetFederationRelationships() {
			current[fr.GetTrustDomain()] = fr
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}

	var del []string
	var create, update []*types.FederationRelationship
	for td := range current {
		if _, ok := want[td]; !ok {
			del = append(del, td)
		}
	}
	for td, fr := range want {
		cur, ok := current[td]
		switch {
		case !ok:
			create = append(create, fr)
		case !sameRelationship(fr, cur):
			update = append(update, fr)
		}
	}
	slices.Sort(del)
	sortFR := func(s []*types.FederationRelationship) {
		slices.SortFunc(s, func(a, b *types.FederationRelationship) int { return strings.Compare(a.TrustDomain, b.TrustDomain) })
	}
	sortFR(create)
	sortFR(update)

	if len(del) > 0 {
		resp, err := api.BatchDeleteFederationRelationship(ctx, &trustdomainv1.BatchDeleteFederationRelationshipRequest{TrustDomains: del})
		if err != nil {
			return owners, fmt.Errorf("delete federation relationships: %w", err)
		}
		for _, r := range resp.GetResults() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK && c != codes.NotFound {
				return owners, fmt.Errorf("delete federation relationship %s: %s: %s", clip(r.GetTrustDomain()), c, clip(r.GetStatus().GetMessage()))
			}
		}
	}
	if len(create) > 0 {
		resp, err := api.BatchCreateFederationRelationship(ctx, &trustdomainv1.BatchCreateFederationRelationshipRequest{FederationRelationships: create})
		if err != nil {
			return owners, fmt.Errorf("create federation relationships: %w", err)
		}
		for i, r := range resp.GetResults() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK && i < len(create) {
				o := wantBy[create[i].TrustDomain]
				o.Failures = append(o.Failures, fmt.Sprintf("create federation relationship %s: %s: %s", create[i].TrustDomain, c, clip(r.GetStatus().GetMessage())))
			}
		}
	}
	if len(update) > 0 {
		resp, err := api.BatchUpdateFederationRelationship(ctx, &trustdomainv1.BatchUpdateFederationRelationshipRequest{FederationRelationships: update})
		if err != nil {
			return owners, fmt.Errorf("update federation relationships: %w", err)
		}
		for i, r := range resp.GetResults() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK && i < len(update) {
				o := wantBy[update[i].TrustDomain]
				o.Failures = append(o.Failures, fmt.Sprintf("update federation relationship %s: %s: %s", update[i].TrustDomain, c, clip(r.GetStatus().GetMessage())))
			}
		}
	}
	return owners, nil
}

func relationshipProto(f *render.Federation) (*types.FederationRelationship, error) {
	fr := &types.FederationRelationship{TrustDomain: f.TrustDomain.Name(), BundleEndpointUrl: f.BundleEndpointURL}
	switch f.Profile {
	case render.ProfileHTTPSSPIFFE:
		fr.BundleEndpointProfile = &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: f.EndpointSPIFFEID.String()}}
	default:
		fr.BundleEndpointProfile = &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}
	}
	if f.Bundle != nil {
		b := &types.Bundle{TrustDomain: f.TrustDomain.Name()}
		if hint, ok := f.Bundle.RefreshHint(); ok {
			b.RefreshHint = int64(hint / time.Second)
		}
		if seq, ok := f.Bundle.SequenceNumber(); ok {
			b.SequenceNumber = seq
		}
		for _, c := range f.Bundle.X509Authorities() {
			b.X509Authorities = append(b.X509Authorities, &types.X509Certificate{Asn1: c.Raw})
		}
		for kid, key := range f.Bundle.JWTAuthorities() {
			der, err := x509.MarshalPKIXPublicKey(key)
			if err != nil {
				return nil, &render.FieldError{Field: "spec.trustDomainBundle", Err: err}
			}
			b.JwtAuthorities = append(b.JwtAuthorities, &types.JWTKey{KeyId: kid, PublicKey: der})
		}
		slices.SortFunc(b.JwtAuthorities, func(a, b *types.JWTKey) int { return strings.Compare(a.KeyId, b.KeyId) })
		fr.TrustDomainBundle = b
	}
	return fr, nil
}

// sameRelationship compares what the resource declares; a bundle is
// compared by its authorities only when the resource declares one.
func sameRelationship(want, cur *types.FederationRelationship) bool {
	if want.TrustDomain != cur.TrustDomain || want.BundleEndpointUrl != cur.BundleEndpointUrl {
		return false
	}
	if !proto.Equal(want.GetHttpsSpiffe(), cur.GetHttpsSpiffe()) || (want.GetHttpsWeb() == nil) != (cur.GetHttpsWeb() == nil) {
		return false
	}
	if want.TrustDomainBundle == nil {
		return true
	}
	wb, cb := want.TrustDomainBundle, cur.TrustDomainBundle
	if cb == nil || len(wb.X509Authorities) != len(cb.X509Authorities) || len(wb.JwtAuthorities) != len(cb.JwtAuthorities) {
		return false
	}
	for i := range wb.X509Authorities {
		if !slices.ContainsFunc(cb.X509Authorities, func(c *types.X509Certificate) bool { return string(c.Asn1) == string(wb.X509Authorities[i].Asn1) }) {
			return false
		}
	}
	for i := range wb.JwtAuthorities {
		if !slices.ContainsFunc(cb.JwtAuthorities, func(k *types.JWTKey) bool {
			return k.KeyId == wb.JwtAuthorities[i].KeyId && string(k.PublicKey) == string(wb.JwtAuthorities[i].PublicKey)
		}) {
			return false
		}
	}
	return true
}
