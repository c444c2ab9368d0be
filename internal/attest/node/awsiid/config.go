package awsiid

import (
	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "aws_iid" (SPIRE's keys, and Sigil's signing_certificates_path,
// ec2_endpoint, iam_endpoint, sts_endpoint). parseTemplate
// (agentpath.Parse) checks agent_path_template; nil leaves that to
// NewServer. It also loads the signing certificates, so that `sigil-server
// validate` reports a missing or unusable signing_certificates_path as
// `run` would.
//
// SPIRE's verify_organization and validate_eks_cluster_membership (AWS
// Organizations and EKS lookups) are not implemented and refused.
func ParseServerConfig(d *config.PluginData, parseTemplate func(string) (PathTemplate, error)) (ServerConfig, error) {
	var c ServerConfig
	d.Unsupported("verify_organization", "validate_eks_cluster_membership")
	d.String("access_key_id", &c.AccessKeyID)
	d.String("secret_access_key", &c.SecretAccessKey)
	d.String("assume_role", &c.AssumeRole)
	d.String("partition", &c.Partition)
	d.Bool("skip_block_device", &c.SkipBlockDevice)
	d.Bool("disable_instance_profile_selectors", &c.DisableInstanceProfileSelectors)
	d.Strings("account_ids_for_local_validation", &c.LocalValidAccountIDs)
	if d.String("agent_path_template", &c.AgentPathTemplate) && parseTemplate != nil {
		if _, err := parseTemplate(c.AgentPathTemplate); err != nil {
			d.Errorf("agent_path_template", "%v", err)
		}
	}
	d.String("signing_certificates_path", &c.CertificatesPath)
	d.String("ec2_endpoint", &c.EC2Endpoint)
	d.String("iam_endpoint", &c.IAMEndpoint)
	d.String("sts_endpoint", &c.STSEndpoint)
	if err := c.Validate(); err != nil {
		d.Errorf("", "%v", err)
	} else if _, err := c.LoadCertificates(); err != nil {
		key := "signing_certificates_path"
		if c.CertificatesPath == "" {
			key = "partition"
		}
		d.Errorf(key, "signing certificates: %v", err)
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "aws_iid" (SPIRE's ec2_metadata_endpoint).
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	if d.String("ec2_metadata_endpoint", &c.MetadataEndpoint) {
		if _, err := parseEndpoint(c.MetadataEndpoint); err != nil {
			d.Errorf("ec2_metadata_endpoint", "%v", err)
		}
	}
	return c, d.Done()
}
