package v1alpha1

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The deep copies runtime.Object needs, written by hand (the types are few).

func copyConditions(in []metav1.Condition) []metav1.Condition {
	if in == nil {
		return nil
	}
	out := make([]metav1.Condition, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

// DeepCopyInto copies s into out.
func (s *NamespaceSelector) DeepCopyInto(out *NamespaceSelector) {
	s.LabelSelector.DeepCopyInto(&out.LabelSelector)
	out.MatchNames = slices.Clone(s.MatchNames)
}

// DeepCopyInto copies s into out.
func (s *ClusterSPIFFEIDSpec) DeepCopyInto(out *ClusterSPIFFEIDSpec) {
	*out = *s
	out.DNSNameTemplates = slices.Clone(s.DNSNameTemplates)
	out.WorkloadSelectorTemplates = slices.Clone(s.WorkloadSelectorTemplates)
	out.FederatesWith = slices.Clone(s.FederatesWith)
	if s.NamespaceSelector != nil {
		out.NamespaceSelector = new(NamespaceSelector)
		s.NamespaceSelector.DeepCopyInto(out.NamespaceSelector)
	}
	if s.PodSelector != nil {
		out.PodSelector = s.PodSelector.DeepCopy()
	}
}

// DeepCopyInto copies o into out.
func (o *ClusterSPIFFEID) DeepCopyInto(out *ClusterSPIFFEID) {
	out.TypeMeta = o.TypeMeta
	o.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	o.Spec.DeepCopyInto(&out.Spec)
	out.Status = o.Status
	out.Status.Conditions = copyConditions(o.Status.Conditions)
}

// DeepCopy returns a deep copy.
func (o *ClusterSPIFFEID) DeepCopy() *ClusterSPIFFEID {
	if o == nil {
		return nil
	}
	out := new(ClusterSPIFFEID)
	o.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (o *ClusterSPIFFEID) DeepCopyObject() runtime.Object { return o.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *ClusterSPIFFEIDList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := &ClusterSPIFFEIDList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]ClusterSPIFFEID, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
	return out
}

// DeepCopyInto copies o into out.
func (o *ClusterStaticEntry) DeepCopyInto(out *ClusterStaticEntry) {
	out.TypeMeta = o.TypeMeta
	o.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = o.Spec
	out.Spec.Selectors = slices.Clone(o.Spec.Selectors)
	out.Spec.FederatesWith = slices.Clone(o.Spec.FederatesWith)
	out.Spec.DNSNames = slices.Clone(o.Spec.DNSNames)
	out.Status = o.Status
	out.Status.Conditions = copyConditions(o.Status.Conditions)
}

// DeepCopy returns a deep copy.
func (o *ClusterStaticEntry) DeepCopy() *ClusterStaticEntry {
	if o == nil {
		return nil
	}
	out := new(ClusterStaticEntry)
	o.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (o *ClusterStaticEntry) DeepCopyObject() runtime.Object { return o.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *ClusterStaticEntryList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := &ClusterStaticEntryList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]ClusterStaticEntry, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
	return out
}

// DeepCopyInto copies o into out.
func (o *ClusterFederatedTrustDomain) DeepCopyInto(out *ClusterFederatedTrustDomain) {
	out.TypeMeta = o.TypeMeta
	o.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = o.Spec
	out.Status.Conditions = copyConditions(o.Status.Conditions)
}

// DeepCopy returns a deep copy.
func (o *ClusterFederatedTrustDomain) DeepCopy() *ClusterFederatedTrustDomain {
	if o == nil {
		return nil
	}
	out := new(ClusterFederatedTrustDomain)
	o.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (o *ClusterFederatedTrustDomain) DeepCopyObject() runtime.Object { return o.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *ClusterFederatedTrustDomainList) DeepCopyObject() runtime.Object {
	if l == nil {
		return nil
	}
	out := &ClusterFederatedTrustDomainList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]ClusterFederatedTrustDomain, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
	return out
}
