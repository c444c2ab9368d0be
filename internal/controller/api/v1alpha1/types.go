package v1alpha1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of the resources.
var GroupVersion = schema.GroupVersion{Group: "spire.spiffe.io", Version: "v1alpha1"}

// AddToScheme registers the resources and their lists in a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&ClusterSPIFFEID{}, &ClusterSPIFFEIDList{},
		&ClusterStaticEntry{}, &ClusterStaticEntryList{},
		&ClusterFederatedTrustDomain{}, &ClusterFederatedTrustDomainList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Duration is a time-to-live: in JSON a Go duration string ("1h30m", as
// spire-controller-manager's metav1.Duration) or an integer number of
// seconds (3600). It marshals as a duration string.
type Duration struct {
	time.Duration
}

// UnmarshalJSON accepts a duration string or a whole number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		d.Duration = 0
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: %w", clip(s), err)
		}
		d.Duration = v
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("invalid duration %s: want a string such as \"1h\" or a whole number of seconds", clip(string(b)))
	}
	if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
		return fmt.Errorf("invalid duration %d: out of range", n)
	}
	d.Duration = time.Duration(n) * time.Second
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// NamespaceSelector is a label selector over namespaces; matchNames, when
// set, also requires the namespace's name to be one of them (a Sigil
// extension).
type NamespaceSelector struct {
	metav1.LabelSelector `json:",inline"`
	MatchNames           []string `json:"matchNames,omitempty"`
}

// ClusterSPIFFEIDSpec is what pods a ClusterSPIFFEID selects and the
// templates of the entries it gives them.
type ClusterSPIFFEIDSpec struct {
	SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
	TTL                       Duration              `json:"ttl,omitempty"`
	JWTTTL                    Duration              `json:"jwtTtl,omitempty"`
	JWTSVIDTTL                Duration              `json:"jwtSvidTTL,omitempty"`
	DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
	WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
	FederatesWith             []string              `json:"federatesWith,omitempty"`
	NamespaceSelector         *NamespaceSelector    `json:"namespaceSelector,omitempty"`
	PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
	Admin                     bool                  `json:"admin,omitempty"`
	Downstream                bool                  `json:"downstream,omitempty"`
	AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
	ClassName                 string                `json:"className,omitempty"`
	Fallback                  bool                  `json:"fallback,omitempty"`
	Hint                      string                `json:"hint,omitempty"`
}

// ClusterSPIFFEIDStats are the counts of the last reconciliation, as
// spire-controller-manager reports them.
type ClusterSPIFFEIDStats struct {
	NamespacesSelected     int `json:"namespacesSelected"`
	NamespacesIgnored      int `json:"namespacesIgnored"`
	PodsSelected           int `json:"podsSelected"`
	PodEntryRenderFailures int `json:"podEntryRenderFailures"`
	EntriesMasked          int `json:"entriesMasked"`
	EntriesToSet           int `json:"entriesToSet"`
	EntryFailures          int `json:"entryFailures"`
}

// ClusterSPIFFEIDStatus is the observed state.
type ClusterSPIFFEIDStatus struct {
	Stats      ClusterSPIFFEIDStats `json:"stats"`
	Conditions []metav1.Condition   `json:"conditions,omitempty"`
}

// ClusterSPIFFEID gives the pods it selects a registration entry each.
type ClusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ClusterSPIFFEIDSpec   `json:"spec"`
	Status            ClusterSPIFFEIDStatus `json:"status"`
}

// ClusterSPIFFEIDList is a list of ClusterSPIFFEID.
type ClusterSPIFFEIDList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []ClusterSPIFFEID `json:"items"`
}

// ClusterStaticEntrySpec is one registration entry, written out.
type ClusterStaticEntrySpec struct {
	SPIFFEID      string   `json:"spiffeID"`
	ParentID      string   `json:"parentID"`
	Selectors     []string `json:"selectors"`
	FederatesWith []string `json:"federatesWith,omitempty"`
	X509SVIDTTL   Duration `json:"x509SVIDTTL,omitempty"`
	JWTSVIDTTL    Duration `json:"jwtSVIDTTL,omitempty"`
	DNSNames      []string `json:"dnsNames,omitempty"`
	Hint          string   `json:"hint,omitempty"`
	Admin         bool     `json:"admin,omitempty"`
	Downstream    bool     `json:"downstream,omitempty"`
	StoreSVID     bool     `json:"storeSVID,omitempty"`
	ClassName     string   `json:"className,omitempty"`
}

// ClusterStaticEntryStatus is the observed state.
type ClusterStaticEntryStatus struct {
	Rendered   bool               `json:"rendered"`
	Masked     bool               `json:"masked"`
	Set        bool               `json:"set"`
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClusterStaticEntry declares one registration entry.
type ClusterStaticEntry struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ClusterStaticEntrySpec   `json:"spec"`
	Status            ClusterStaticEntryStatus `json:"status"`
}

// ClusterStaticEntryList is a list of ClusterStaticEntry.
type ClusterStaticEntryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []ClusterStaticEntry `json:"items"`
}

// BundleEndpointProfile is how the federated trust domain's bundle
// endpoint authenticates: "https_spiffe" (with endpointSPIFFEID) or
// "https_web".
type BundleEndpointProfile struct {
	Type             string `json:"type"`
	EndpointSPIFFEID string `json:"endpointSPIFFEID,omitempty"`
}

// ClusterFederatedTrustDomainSpec is a federation relationship.
type ClusterFederatedTrustDomainSpec struct {
	TrustDomain           string                `json:"trustDomain"`
	BundleEndpointURL     string                `json:"bundleEndpointURL"`
	BundleEndpointProfile BundleEndpointProfile `json:"bundleEndpointProfile"`
	TrustDomainBundle     string                `json:"trustDomainBundle,omitempty"`
	ClassName             string                `json:"className,omitempty"`
}

// ClusterFederatedTrustDomainStatus is the observed state.
type ClusterFederatedTrustDomainStatus struct {
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClusterFederatedTrustDomain declares a federation relationship.
type ClusterFederatedTrustDomain struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ClusterFederatedTrustDomainSpec   `json:"spec"`
	Status            ClusterFederatedTrustDomainStatus `json:"status"`
}

// ClusterFederatedTrustDomainList is a list of ClusterFederatedTrustDomain.
type ClusterFederatedTrustDomainList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []ClusterFederatedTrustDomain `json:"items"`
}
