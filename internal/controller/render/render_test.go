package render

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func testPod(labels map[string]string) (*corev1.Pod, *corev1.Node) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "prod", UID: "pod-uid-1", Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-a"},
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", UID: "node-uid-a"}}
	return pod, node
}

func renderPod(t *testing.T, spec v1alpha1.ClusterSPIFFEIDSpec, labels map[string]string) (*Entry, error) {
	t.Helper()
	s, err := ParseClusterSPIFFEID(&spec)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	parent, err := ParseParentIDTemplate("")
	if err != nil {
		t.Fatal(err)
	}
	pod, node := testPod(labels)
	return s.PodEntry(td, "demo", "cluster.local", parent, pod, node, nil)
}

func TestPodEntrySPIREStyle(t *testing.T) {
	e, err := renderPod(t, v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:          "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
		WorkloadSelectorTemplates: []string{"k8s:ns:{{ .PodMeta.Namespace }}", "k8s:sa:{{ .PodSpec.ServiceAccountName }}"},
		DNSNameTemplates:          []string{"{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}", "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.cluster.local"},
		TTL:                       v1alpha1.Duration{Duration: time.Hour},
		FederatesWith:             []string{"partner.example.com"},
		Hint:                      "h",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.SPIFFEID.String(), "spiffe://example.org/ns/prod/sa/web"; got != want {
		t.Errorf("SPIFFE ID %s, want %s", got, want)
	}
	if got, want := e.ParentID.String(), "spiffe://example.org/spire/agent/k8s_psat/demo/node-uid-a"; got != want {
		t.Errorf("parent ID %s, want %s", got, want)
	}
	var sels []string
	for _, s := range e.Selectors {
		sels = append(sels, s.String())
	}
	if got, want := strings.Join(sels, " "), "k8s:pod-uid:pod-uid-1 k8s:ns:prod k8s:sa:web"; got != want {
		t.Errorf("selectors %s, want %s", got, want)
	}
	if got, want := strings.Join(e.DNSNames, " "), "web-1.prod.svc.cluster.local"; got != want {
		t.Errorf("DNS names %q, want %q (duplicates dropped)", got, want)
	}
	if e.X509SVIDTTL != time.Hour || len(e.FederatesWith) != 1 || e.Hint != "h" {
		t.Errorf("entry %+v", e)
	}
}

// The edge seed's templates: Helm's default and required, label keys with
// dashes, a block scalar's final newline.
func TestPodEntryEdgeSeedTemplates(t *testing.T) {
	spec := v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate: `{{- $deviceId := required "device-id label required" .PodMeta.Labels.device-id -}}
{{- $sensorType := .PodMeta.Labels.sensor-type | default "generic" -}}
{{- $location := .PodMeta.Labels.location | default "unknown" -}}
spiffe://{{ .TrustDomain }}/iot/sensor/{{ $deviceId }}/{{ $sensorType }}/{{ $location }}
`,
		WorkloadSelectorTemplates: []string{"k8s:device-id:{{ .PodMeta.Labels.device-id }}"},
	}
	e, err := renderPod(t, spec, map[string]string{"device-id": "temp-sensor-001", "location": "warehouse-a"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := e.SPIFFEID.String(), "spiffe://example.org/iot/sensor/temp-sensor-001/generic/warehouse-a"; got != want {
		t.Errorf("SPIFFE ID %s, want %s", got, want)
	}
	if got := e.Selectors[1].String(); got != "k8s:device-id:temp-sensor-001" {
		t.Errorf("selector %s", got)
	}

	_, err = renderPod(t, spec, map[string]string{"location": "warehouse-a"})
	if err == nil || !strings.Contains(err.Error(), "spec.spiffeIDTemplate") || !strings.Contains(err.Error(), "device-id label required") {
		t.Errorf("missing required label: error %v, want one naming spec.spiffeIDTemplate and the message", err)
	}
}

func TestPodEntryErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec v1alpha1.ClusterSPIFFEIDSpec
		want string
	}{
		{"other trust domain", v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://other.org/x"}, `spec.spiffeIDTemplate: rendered "spiffe://other.org/x": not in trust domain`},
		{"not an ID", v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "{{ .PodMeta.Name }}"}, `spec.spiffeIDTemplate: rendered "web-1": invalid SPIFFE ID`},
		{"empty selector value", v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/x", WorkloadSelectorTemplates: []string{"k8s:ns:x", "k8s:{{ .PodMeta.Labels.zone }}"}}, `spec.workloadSelectorTemplates[1]: selector "k8s:": empty value`},
		{"bad field", v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/x", DNSNameTemplates: []string{"{{ .PodSpec.NoSuchField }}"}}, `template: spec.dnsNameTemplates[0]:1:11: executing "spec.dnsNameTemplates[0]" at <.PodSpec.NoSuchField>: can't evaluate field NoSuchField`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderPod(t, tc.spec, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		spec v1alpha1.ClusterSPIFFEIDSpec
		want string
	}{
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/{{ .Bad"}, "template: spec.spiffeIDTemplate:1:"},
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "x", WorkloadSelectorTemplates: []string{"ok", "{{ end }}"}}, "template: spec.workloadSelectorTemplates[1]:1:"},
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "x", FederatesWith: []string{"Bad Domain"}}, "spec.federatesWith[0]: "},
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "x", PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Sometimes"}}}}, "spec.podSelector: "},
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "x", JWTTTL: v1alpha1.Duration{Duration: time.Minute}, JWTSVIDTTL: v1alpha1.Duration{Duration: time.Hour}}, "spec.jwtSvidTTL: 1h0m0s differs from spec.jwtTtl 1m0s"},
		{v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: " "}, "spec.spiffeIDTemplate: empty"},
	} {
		_, err := ParseClusterSPIFFEID(&tc.spec)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("spec %+v: error %v, want prefix %q", tc.spec, err, tc.want)
		}
	}
}

func TestDashedKeys(t *testing.T) {
	for in, want := range map[string]string{
		"{{ .PodMeta.Labels.device-id }}":                 `{{ (index .PodMeta.Labels "device-id") }}`,
		"{{.PodMeta.Labels.a-b-c}}":                       `{{(index .PodMeta.Labels "a-b-c")}}`,
		"{{ .PodMeta.Labels.tier-2 }}":                    `{{ (index .PodMeta.Labels "tier-2") }}`,
		`{{ $x.a-b | default "p-q" }}`:                    `{{ (index $x "a-b") | default "p-q" }}`,
		"a-b {{ .PodMeta.Name }}-{{ .PodSpec.NodeName }}": "a-b {{ .PodMeta.Name }}-{{ .PodSpec.NodeName }}",
		"{{- .PodMeta.Name -}}":                           "{{- .PodMeta.Name -}}",
		"{{ /* a.b-c */ .X }}":                            "{{ /* a.b-c */ .X }}",
		"{{ `.a.b-c` }}":                                  "{{ `.a.b-c` }}",
		"{{ .PodMeta.Labels.x-y.z }}":                     `{{ (index .PodMeta.Labels "x-y" "z") }}`,
	} {
		if got := dashedKeys(in); got != want {
			t.Errorf("dashedKeys(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNamespaceMatchNames(t *testing.T) {
	s, err := ParseClusterSPIFFEID(&v1alpha1.ClusterSPIFFEIDSpec{
		SPIFFEIDTemplate:  "spiffe://example.org/x",
		NamespaceSelector: &v1alpha1.NamespaceSelector{MatchNames: []string{"production", "staging"}, LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	if !s.SelectsNamespace(ns("production", map[string]string{"team": "a"})) {
		t.Error("production with the label not selected")
	}
	if s.SelectsNamespace(ns("production", nil)) || s.SelectsNamespace(ns("dev", map[string]string{"team": "a"})) {
		t.Error("matchNames and matchLabels must both hold")
	}
	all, _ := ParseClusterSPIFFEID(&v1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "x"})
	if !all.SelectsNamespace(ns("dev", nil)) || !all.SelectsPod(&corev1.Pod{}) {
		t.Error("no selectors must select everything")
	}
}

func TestStaticEntryAndFederation(t *testing.T) {
	e, err := StaticEntry(&v1alpha1.ClusterStaticEntrySpec{
		SPIFFEID: "spiffe://example.org/db", ParentID: "spiffe://example.org/spire/agent/x",
		Selectors: []string{"unix:uid:0"}, X509SVIDTTL: v1alpha1.Duration{Duration: time.Minute}, StoreSVID: true,
	})
	if err != nil || e.Selectors[0].String() != "unix:uid:0" || !e.StoreSVID || e.X509SVIDTTL != time.Minute {
		t.Fatalf("static entry %+v, %v", e, err)
	}
	if _, err := StaticEntry(&v1alpha1.ClusterStaticEntrySpec{SPIFFEID: "spiffe://example.org/db", ParentID: "spiffe://example.org/p", Selectors: []string{"nocolon"}}); err == nil || !strings.HasPrefix(err.Error(), "spec.selectors[0]: ") {
		t.Errorf("bad selector: %v", err)
	}
	f, err := FederatedTrustDomain(&v1alpha1.ClusterFederatedTrustDomainSpec{
		TrustDomain: "partner.org", BundleEndpointURL: "https://partner.org:8443",
		BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_spiffe", EndpointSPIFFEID: "spiffe://partner.org/spire/server"},
	})
	if err != nil || f.EndpointSPIFFEID.String() != "spiffe://partner.org/spire/server" {
		t.Fatalf("federation %+v, %v", f, err)
	}
	for spec, want := range map[*v1alpha1.ClusterFederatedTrustDomainSpec]string{
		{TrustDomain: "p.org", BundleEndpointURL: "http://p.org", BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_web"}}:                          "spec.bundleEndpointURL: scheme must be https",
		{TrustDomain: "p.org", BundleEndpointURL: "https://u:p@p.org", BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_web"}}:                     "spec.bundleEndpointURL: must not contain user info",
		{TrustDomain: "p.org", BundleEndpointURL: "https://p.org", BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_spiffe"}}:                      "spec.bundleEndpointProfile.endpointSPIFFEID: ",
		{TrustDomain: "p.org", BundleEndpointURL: "https://p.org", BundleEndpointProfile: v1alpha1.BundleEndpointProfile{Type: "https_web"}, TrustDomainBundle: "{"}: "spec.trustDomainBundle: ",
	} {
		if _, err := FederatedTrustDomain(spec); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%+v: error %v, want prefix %q", spec, err, want)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	for in, want := range map[string]time.Duration{`"1h"`: time.Hour, `3600`: time.Hour, `"90s"`: 90 * time.Second, `null`: 0} {
		var d v1alpha1.Duration
		if err := d.UnmarshalJSON([]byte(in)); err != nil || d.Duration != want {
			t.Errorf("%s: %v, %v; want %v", in, d.Duration, err, want)
		}
	}
	for _, in := range []string{`"soon"`, `1.5`, `true`, `99999999999999999`} {
		var d v1alpha1.Duration
		if err := d.UnmarshalJSON([]byte(in)); err == nil {
			t.Errorf("%s accepted as %v", in, d.Duration)
		}
	}
}
