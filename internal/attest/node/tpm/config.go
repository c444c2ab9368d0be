package tpm

import (
	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "tpm": ek_ca_path, ek_hash_path, ek_hashes, pcr_selection, pcr_allowed.
// The community plugin's ca_path and hash_path are accepted as spellings
// of ek_ca_path and ek_hash_path (its defaults under /opt/spire are not:
// Sigil trusts only what is configured).
//
// It also checks the directories NewServer loads (checkDirs), so that
// `sigil-server validate` reports a missing ek_ca_path or ek_hash_path,
// or a CA directory without a certificate, with its line, as run fails on
// it.
func ParseServerConfig(d *config.PluginData) (ServerConfig, error) {
	var c ServerConfig
	// alias reads key or its old spelling and returns the one set.
	alias := func(key, old string, dst *string) string {
		d.String(key, dst)
		var v string
		if d.String(old, &v) {
			if *dst != "" {
				d.Errorf(old, "%s and %s name the same setting: set one", old, key)
				return key
			}
			*dst = v
			return old
		}
		return key
	}
	caKey := alias("ek_ca_path", "ca_path", &c.EKCAPath)
	hashKey := alias("ek_hash_path", "hash_path", &c.EKHashPath)
	d.Strings("ek_hashes", &c.EKHashes)
	var pcrs []int64
	if d.Ints("pcr_selection", &pcrs) {
		for _, p := range pcrs {
			if p < 0 || p > MaxPCR {
				d.Errorf("pcr_selection", "PCR %d: a PCR index is 0 to %d", p, MaxPCR)
				continue
			}
			c.PCRSelection = append(c.PCRSelection, int(p))
		}
	}
	d.Strings("pcr_allowed", &c.PCRAllowed)
	if err := c.Validate(); err != nil {
		d.Errorf("", "%v", err)
	} else {
		caErr, hashErr := c.checkDirs()
		if caErr != nil {
			d.Errorf(caKey, "%v", caErr)
		}
		if hashErr != nil {
			d.Errorf(hashKey, "%v", hashErr)
		}
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "tpm": tpm_path, the TPM device or socket (default /dev/tpmrm0).
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.String("tpm_path", &c.TPMPath)
	return c, d.Done()
}
