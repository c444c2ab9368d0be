package config

import (
	"errors"
	"fmt"
)

// SPIRE's agent SDS defaults.
const (
	DefaultSDSSVIDName       = "default"
	DefaultSDSBundleName     = "ROOTCA"
	DefaultSDSAllBundlesName = "ALL"
	// MaxSDSNameLen bounds the configured resource names.
	MaxSDSNameLen = 255
)

// SDS is agent.sds, the Envoy SDS API's resource names, as SPIRE:
//
//	sds {
//	    default_svid_name = "default"            // the TLS certificate of the caller's default SVID
//	    default_bundle_name = "ROOTCA"           // the validation context of our trust domain
//	    default_all_bundles_name = "ALL"         // one validation context for every trust domain the caller may trust
//	    disable_spiffe_cert_validation = false   // plain trusted_ca contexts instead of Envoy's SPIFFE validator
//	}
//
// An empty name in the file means its default, as in SPIRE.
type SDS struct {
	DefaultSVIDName             string
	DefaultBundleName           string
	DefaultAllBundlesName       string
	DisableSPIFFECertValidation bool
}

func defaultSDS() SDS {
	return SDS{
		DefaultSVIDName:       DefaultSDSSVIDName,
		DefaultBundleName:     DefaultSDSBundleName,
		DefaultAllBundlesName: DefaultSDSAllBundlesName,
	}
}

// Warnings are what SPIRE accepts with a warning: the same name for the
// default bundle and all bundles (the default bundle wins; the all-bundles
// name is never served).
func (s SDS) Warnings() []string {
	if s.DefaultBundleName == s.DefaultAllBundlesName {
		return []string{fmt.Sprintf("sds: default_bundle_name and default_all_bundles_name are both %q: that name serves the default bundle; no name serves all bundles (give them distinct values)", s.DefaultBundleName)}
	}
	return nil
}

func (s SDS) validate() error {
	var errs []error
	for _, n := range []struct{ key, v string }{
		{"default_svid_name", s.DefaultSVIDName},
		{"default_bundle_name", s.DefaultBundleName},
		{"default_all_bundles_name", s.DefaultAllBundlesName},
	} {
		switch {
		case n.v == "":
			errs = append(errs, fmt.Errorf("sds: %s must not be empty", n.key))
		case len(n.v) > MaxSDSNameLen:
			errs = append(errs, fmt.Errorf("sds: %s is longer than %d bytes", n.key, MaxSDSNameLen))
		}
	}
	return errors.Join(errs...)
}

// sds decodes agent.sds. Empty names keep their defaults, as SPIRE's
// configuration merge does.
func (d *decoder) sds(parent *block, dst *SDS) {
	b := parent.sub("sds", "sds block")
	if b == nil {
		return
	}
	for _, k := range []struct {
		key string
		dst *string
	}{
		{"default_svid_name", &dst.DefaultSVIDName},
		{"default_bundle_name", &dst.DefaultBundleName},
		{"default_all_bundles_name", &dst.DefaultAllBundlesName},
	} {
		var v string
		if b.str(k.key, &v) && v != "" {
			if len(v) > MaxSDSNameLen {
				d.errorf(b.kids[k.key].pos, "invalid value for %q in %s: longer than %d bytes", k.key, b.desc, MaxSDSNameLen)
				continue
			}
			*k.dst = v
		}
	}
	b.boolean("disable_spiffe_cert_validation", &dst.DisableSPIFFECertValidation)
	b.done()
}
