// Package render turns spire-controller-manager's resources into
// registration entries: a ClusterSPIFFEID's templates rendered for one pod
// (with the same template data as spire-controller-manager: TrustDomain,
// ClusterName, ClusterDomain, PodMeta, PodSpec, NodeMeta, NodeSpec), a
// ClusterStaticEntry as written, and a ClusterFederatedTrustDomain as a
// federation relationship. Every error names the resource's field
// ("spec.workloadSelectorTemplates[1]: ...").
//
// Rendered values have surrounding white space removed (a YAML block
// scalar leaves a final newline), unlike spire-controller-manager, which
// would refuse such an ID.
package render

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
)

// Selector is a workload or node selector, type:value.
type Selector struct {
	Type, Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Entry is a registration entry as the controller declares it.
type Entry struct {
	ID            string
	SPIFFEID      spiffeid.ID
	ParentID      spiffeid.ID
	Selectors     []Selector
	X509SVIDTTL   time.Duration
	JWTSVIDTTL    time.Duration
	FederatesWith []spiffeid.TrustDomain
	DNSNames      []string
	Admin         bool
	Downstream    bool
	StoreSVID     bool
	Hint          string
}

// FieldError is an error in one field of a resource's spec.
type FieldError struct {
	Field string // e.g. spec.dnsNameTemplates[0]
	Err   error
}

func (e *FieldError) Error() string {
	msg := e.Err.Error()
	// text/template names the template (the field) itself.
	if strings.HasPrefix(msg, "template: "+e.Field+":") {
		return msg
	}
	return e.Field + ": " + msg
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, err error) error { return &FieldError{Field: field, Err: err} }

// Data is what templates see.
type Data struct {
	TrustDomain   string
	ClusterName   string
	ClusterDomain string
	PodMeta       *metav1.ObjectMeta
	PodSpec       *corev1.PodSpec
	NodeMeta      *metav1.ObjectMeta
	NodeSpec      *corev1.NodeSpec
}

// DefaultParentIDTemplate is the agent ID k8s_psat gives the agent of a
// node, as spire-controller-manager's default.
const DefaultParentIDTemplate = "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"

// ParseParentIDTemplate parses a parentIDTemplate ("" is the default).
func ParseParentIDTemplate(src string) (*template.Template, error) {
	if src == "" {
		src = DefaultParentIDTemplate
	}
	t, err := parseTemplate("parentIDTemplate", src)
	if err != nil {
		return nil, fieldErr("parentIDTemplate", err)
	}
	return t, nil
}

// Spec is a parsed ClusterSPIFFEID spec.
type Spec struct {
	SPIFFEID          *template.Template
	DNSNames          []*template.Template
	Selectors         []*template.Template
	NamespaceSelector labels.Selector
	NamespaceNames    []string // nil: any name
	PodSelector       labels.Selector
	TTL, JWTTTL       time.Duration
	FederatesWith     []spiffeid.TrustDomain
	Admin, Downstream bool
	AutoPopulateDNS   bool
	Fallback          bool
	Hint              string
}

// SelectsNamespace reports whether the spec selects the namespace.
func (s *Spec) SelectsNamespace(ns *corev1.Namespace) bool {
	if s.NamespaceNames != nil && !slices.Contains(s.NamespaceNames, ns.Name) {
		return false
	}
	return s.NamespaceSelector.Matches(labels.Set(ns.Labels))
}

// SelectsPod reports whether the spec's pod selector matches the pod.
func (s *Spec) SelectsPod(pod *corev1.Pod) bool {
	return s.PodSelector.Matches(labels.Set(pod.Labels))
}

func labelSelector(field string, ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fieldErr(field, err)
	}
	return sel, nil
}

// ParseClusterSPIFFEID parses and checks a ClusterSPIFFEID's spec.
func ParseClusterSPIFFEID(in *v1alpha1.ClusterSPIFFEIDSpec) (*Spec, error) {
	var s Spec
	var err error
	if strings.TrimSpace(in.SPIFFEIDTemplate) == "" {
		return nil, fieldErr("spec.spiffeIDTemplate", errors.New("empty"))
	}
	if s.SPIFFEID, err = parseTemplate("spec.spiffeIDTemplate", in.SPIFFEIDTemplate); err != nil {
		return nil, fieldErr("spec.spiffeIDTemplate", err)
	}
	for i, src := range in.DNSNameTemplates {
		f := fmt.Sprintf("spec.dnsNameTemplates[%d]", i)
		t, err := parseTemplate(f, src)
		if err != nil {
			return nil, fieldErr(f, err)
		}
		s.DNSNames = append(s.DNSNames, t)
	}
	for i, src := range in.WorkloadSelectorTemplates {
		f := fmt.Sprintf("spec.workloadSelectorTemplates[%d]", i)
		t, err := parseTemplate(f, src)
		if err != nil {
			return nil, fieldErr(f, err)
		}
		s.Selectors = append(s.Selectors, t)
	}
	s.NamespaceSelector = labels.Everything()
	if ns := in.NamespaceSelector; ns != nil {
		if s.NamespaceSelector, err = labelSelector("spec.namespaceSelector", &ns.LabelSelector); err != nil {
			return nil, err
		}
		if ns.MatchNames != nil {
			s.NamespaceNames = slices.Clone(ns.MatchNames)
		}
	}
	if s.PodSelector, err = labelSelector("spec.podSelector", in.PodSelector); err != nil {
		return nil, err
	}
	if in.TTL.Duration < 0 {
		return nil, fieldErr("spec.ttl", errors.New("negative"))
	}
	s.TTL = in.TTL.Duration
	switch jwt, alias := in.JWTTTL.Duration, in.JWTSVIDTTL.Duration; {
	case jwt < 0:
		return nil, fieldErr("spec.jwtTtl", errors.New("negative"))
	case alias < 0:
		return nil, fieldErr("spec.jwtSvidTTL", errors.New("negative"))
	case jwt != 0 && alias != 0 && jwt != alias:
		return nil, fieldErr("spec.jwtSvidTTL", fmt.Errorf("%v differs from spec.jwtTtl %v (it is another name for it: set one)", alias, jwt))
	case jwt != 0:
		s.JWTTTL = jwt
	default:
		s.JWTTTL = alias
	}
	if s.FederatesWith, err = trustDomains("spec.federatesWith", in.FederatesWith); err != nil {
		return nil, err
	}
	s.Admin, s.Downstream, s.AutoPopulateDNS, s.Fallback, s.Hint = in.Admin, in.Downstream, in.AutoPopulateDNSNames, in.Fallback, in.Hint
	return &s, nil
}

func trustDomains(field string, in []string) ([]spiffeid.TrustDomain, error) {
	var out []spiffeid.TrustDomain
	for i, v := range in {
		td, err := spiffeid.TrustDomainFromString(v)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), err)
		}
		out = append(out, td)
	}
	return out, nil
}

func execute(t *template.Template, data *Data) (string, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return "", err
	}
	return strings.TrimSpace(buf.String()), nil
}

// ParseSelector parses "type:value".
func ParseSelector(s string) (Selector, error) {
	typ, val, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return Selector{}, fmt.Errorf("selector %q: want type:value", clip(s))
	case typ == "":
		return Selector{}, fmt.Errorf("selector %q: empty type", clip(s))
	case val == "":
		return Selector{}, fmt.Errorf("selector %q: empty value", clip(s))
	}
	return Selector{Type: typ, Value: val}, nil
}

func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// PodEntry renders the spec's entry for a pod on a node: the parent is
// the node's agent (parentID rendered with the node), the selectors are
// k8s:pod-uid:<uid> and the workload selector templates, DNS names are the
// templates' (duplicates dropped) then extraDNS (the pod's services, for
// autoPopulateDNSNames).
func (s *Spec) PodEntry(td spiffeid.TrustDomain, clusterName, clusterDomain string, parentID *template.Template, pod *corev1.Pod, node *corev1.Node, extraDNS []string) (*Entry, error) {
	data := &Data{
		TrustDomain:   td.Name(),
		ClusterName:   clusterName,
		ClusterDomain: clusterDomain,
		PodMeta:       &pod.ObjectMeta,
		PodSpec:       &pod.Spec,
		NodeMeta:      &node.ObjectMeta,
		NodeSpec:      &node.Spec,
	}
	parent, err := renderID(parentID, "parentIDTemplate", data, td)
	if err != nil {
		return nil, err
	}
	id, err := renderID(s.SPIFFEID, "spec.spiffeIDTemplate", data, td)
	if err != nil {
		return nil, err
	}
	e := &Entry{
		SPIFFEID:      id,
		ParentID:      parent,
		Selectors:     []Selector{{Type: "k8s", Value: "pod-uid:" + string(pod.UID)}},
		X509SVIDTTL:   s.TTL,
		JWTSVIDTTL:    s.JWTTTL,
		FederatesWith: s.FederatesWith,
		Admin:         s.Admin,
		Downstream:    s.Downstream,
		Hint:          s.Hint,
	}
	for i, t := range s.DNSNames {
		name, err := execute(t, data)
		if err != nil {
			return nil, fieldErr(t.Name(), err)
		}
		if name == "" {
			return nil, fieldErr(fmt.Sprintf("spec.dnsNameTemplates[%d]", i), errors.New("rendered an empty DNS name"))
		}
		if !slices.Contains(e.DNSNames, name) {
			e.DNSNames = append(e.DNSNames, name)
		}
	}
	for _, name := range extraDNS {
		if !slices.Contains(e.DNSNames, name) {
			e.DNSNames = append(e.DNSNames, name)
		}
	}
	for _, t := range s.Selectors {
		v, err := execute(t, data)
		if err != nil {
			return nil, fieldErr(t.Name(), err)
		}
		sel, err := ParseSelector(v)
		if err != nil {
			return nil, fieldErr(t.Name(), err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	return e, nil
}

func renderID(t *template.Template, field string, data *Data, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	v, err := execute(t, data)
	if err != nil {
		return spiffeid.ID{}, fieldErr(field, err)
	}
	id, err := spiffeid.FromString(v)
	if err != nil {
		return spiffeid.ID{}, fieldErr(field, fmt.Errorf("rendered %q: invalid SPIFFE ID: %w", clip(v), err))
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fieldErr(field, fmt.Errorf("rendered %q: not in trust domain %q", clip(v), td.Name()))
	}
	return id, nil
}

// StaticEntry is a ClusterStaticEntry's entry.
func StaticEntry(in *v1alpha1.ClusterStaticEntrySpec) (*Entry, error) {
	id, err := spiffeid.FromString(in.SPIFFEID)
	if err != nil {
		return nil, fieldErr("spec.spiffeID", err)
	}
	parent, err := spiffeid.FromString(in.ParentID)
	if err != nil {
		return nil, fieldErr("spec.parentID", err)
	}
	e := &Entry{
		SPIFFEID:    id,
		ParentID:    parent,
		X509SVIDTTL: in.X509SVIDTTL.Duration,
		JWTSVIDTTL:  in.JWTSVIDTTL.Duration,
		DNSNames:    slices.Clone(in.DNSNames),
		Admin:       in.Admin,
		Downstream:  in.Downstream,
		StoreSVID:   in.StoreSVID,
		Hint:        in.Hint,
	}
	if len(in.Selectors) == 0 {
		return nil, fieldErr("spec.selectors", errors.New("empty"))
	}
	for i, v := range in.Selectors {
		sel, err := ParseSelector(v)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("spec.selectors[%d]", i), err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	if e.FederatesWith, err = trustDomains("spec.federatesWith", in.FederatesWith); err != nil {
		return nil, err
	}
	if e.X509SVIDTTL < 0 {
		return nil, fieldErr("spec.x509SVIDTTL", errors.New("negative"))
	}
	if e.JWTSVIDTTL < 0 {
		return nil, fieldErr("spec.jwtSVIDTTL", errors.New("negative"))
	}
	return e, nil
}

// ServiceDNSNames are the names autoPopulateDNSNames adds for a service:
// name, name.ns, name.ns.svc and, with a cluster domain,
// name.ns.svc.<domain>.
func ServiceDNSNames(service, namespace, clusterDomain string) []string {
	out := []string{service, service + "." + namespace, service + "." + namespace + ".svc"}
	if clusterDomain != "" {
		out = append(out, service+"."+namespace+".svc."+clusterDomain)
	}
	return out
}
