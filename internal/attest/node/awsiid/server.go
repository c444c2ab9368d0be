package awsiid

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Refusals, each wrapping node.ErrRefused: the attestation data was well
// formed but does not prove the instance's identity.
var (
	// ErrBadSignature: no signature of the document verifies with AWS's
	// certificate of its region (a forged or altered document, or one
	// signed for another region).
	ErrBadSignature = fmt.Errorf("%w: instance identity document signature invalid", node.ErrRefused)
	// ErrNoCertificate: there is no AWS certificate for the document's
	// region in the server's partition.
	ErrNoCertificate = fmt.Errorf("%w: no AWS certificate for the document's region", node.ErrRefused)
	// ErrNoSuchInstance: EC2 does not know the instance as pending or
	// running with the server's credentials (terminated, stopped, or in an
	// account the server cannot see).
	ErrNoSuchInstance = fmt.Errorf("%w: no such running instance", node.ErrRefused)
	// ErrAccountDenied: the role of assume_role in the document's account
	// cannot be assumed.
	ErrAccountDenied = fmt.Errorf("%w: account not accessible", node.ErrRefused)
	// ErrRootVolumeSwapped: the root volume was attached long after the
	// instance's primary network interface (skip_block_device is off).
	ErrRootVolumeSwapped = fmt.Errorf("%w: root volume attached after launch", node.ErrRefused)
	// ErrUnusableInstance: the instance yields no valid agent ID or
	// selector (agent_path_template fails for it).
	ErrUnusableInstance = fmt.Errorf("%w: instance unusable for aws_iid", node.ErrRefused)
)

// MaxAttachSkew is how far apart the root volume and the primary network
// interface of an instance may have been attached (SPIRE's 60 seconds).
const MaxAttachSkew = 60 * time.Second

// awsTimeout bounds the AWS calls of one attestation (as SPIRE).
const awsTimeout = 20 * time.Second

// ServerConfig is the plugin_data of the server's NodeAttestor "aws_iid",
// with SPIRE's keys, plus Sigil's endpoint and certificate extensions.
type ServerConfig struct {
	// AccessKeyID (access_key_id) and SecretAccessKey
	// (secret_access_key): static AWS credentials; both empty is the AWS
	// SDK's default chain (environment, shared files, instance role).
	AccessKeyID     string
	SecretAccessKey string
	// AssumeRole (assume_role): a role name; the server assumes
	// arn:<partition>:iam::<document's account>:role/<name> for its AWS
	// calls about an instance.
	AssumeRole string
	// Partition (partition): "aws" (default), "aws-cn", "aws-us-gov" or
	// "aws-eusc": the ARNs of assume_role and the built-in certificates.
	Partition string
	// SkipBlockDevice (skip_block_device) turns off the root volume check.
	SkipBlockDevice bool
	// DisableInstanceProfileSelectors (disable_instance_profile_selectors)
	// leaves out the iamrole selectors and the IAM call they need.
	DisableInstanceProfileSelectors bool
	// LocalValidAccountIDs (account_ids_for_local_validation): accounts
	// whose instances skip the root volume check.
	LocalValidAccountIDs []string
	// AgentPathTemplate (agent_path_template) shapes the agent ID's path
	// after /spire/agent; "" is DefaultAgentPathTemplate.
	AgentPathTemplate string

	// Sigil extensions.

	// CertificatesPath (signing_certificates_path): a PEM file of the
	// certificates that verify documents, instead of AWS's built-in ones
	// (see ParseCertificates for its headers).
	CertificatesPath string
	// EC2Endpoint, IAMEndpoint, STSEndpoint (ec2_endpoint, iam_endpoint,
	// sts_endpoint): base URLs of the AWS APIs instead of AWS's (a VPC
	// endpoint, a test server).
	EC2Endpoint, IAMEndpoint, STSEndpoint string
}

// DefaultAgentPathTemplate is SPIRE's agent ID path.
const DefaultAgentPathTemplate = "/{{ .PluginName }}/{{ .AccountID }}/{{ .Region }}/{{ .InstanceID }}"

// TemplateData is what agent_path_template can use (as SPIRE's).
type TemplateData struct {
	PluginName  string // "aws_iid"
	AccountID   string
	Region      string
	InstanceID  string
	TrustDomain string
	Tags        map[string]string
}

// PathTemplate renders an agent ID path; agentpath.Parse returns one.
type PathTemplate interface {
	Execute(data any) (string, error)
}

// Instance is what the server learns about an instance from EC2.
type Instance struct {
	Tags           []Tag
	SecurityGroups []SecurityGroup
	// InstanceProfileARN is the instance profile's ARN, "" for none.
	InstanceProfileARN string
	// RootDeviceType is "ebs" or "instance-store".
	RootDeviceType    string
	RootDeviceName    string
	BlockDevices      []BlockDevice
	NetworkInterfaces []NetworkInterface
}

// Tag is an instance tag.
type Tag struct{ Key, Value string }

// SecurityGroup is a security group of an instance.
type SecurityGroup struct{ ID, Name string }

// BlockDevice is an EBS volume attached to an instance.
type BlockDevice struct {
	DeviceName string
	AttachTime time.Time
}

// NetworkInterface is a network interface attached to an instance.
type NetworkInterface struct {
	DeviceIndex int
	AttachTime  time.Time
}

// EC2 is what the server half asks AWS, with the server's credentials (in
// the document's account with assume_role). awsapi implements it with the
// AWS SDK. Errors wrapping ErrNoSuchInstance or ErrAccountDenied are
// refusals; others are failures.
type EC2 interface {
	// DescribeInstance returns a pending or running instance.
	DescribeInstance(ctx context.Context, account, region, instanceID string) (*Instance, error)
	// InstanceProfileRoles returns the ARNs of the roles of an instance
	// profile (IAM GetInstanceProfile).
	InstanceProfileRoles(ctx context.Context, account, region, profileName string) ([]string, error)
}

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain spiffeid.TrustDomain
	// ParseTemplate parses agent_path_template (agentpath.Parse, which
	// only the server binary links). Required.
	ParseTemplate func(text string) (PathTemplate, error)
	// EC2 reaches AWS. Required.
	EC2 EC2
}

// Server is the server half.
type Server struct {
	cfg   ServerConfig
	td    spiffeid.TrustDomain
	certs *Certificates
	tmpl  PathTemplate
	ec2   EC2
}

// Validate checks the configuration without reading any file.
func (c ServerConfig) Validate() error {
	var errs []error
	switch {
	case c.AccessKeyID != "" && c.SecretAccessKey == "":
		errs = append(errs, errors.New("access_key_id is set but secret_access_key is not"))
	case c.AccessKeyID == "" && c.SecretAccessKey != "":
		errs = append(errs, errors.New("secret_access_key is set but access_key_id is not"))
	}
	if c.Partition != "" && !slices.Contains(Partitions, c.Partition) {
		errs = append(errs, fmt.Errorf("partition %s is not one of %s", clip.Quote(c.Partition), strings.Join(Partitions, ", ")))
	}
	if c.AssumeRole != "" && !reRoleName.MatchString(c.AssumeRole) {
		errs = append(errs, fmt.Errorf("assume_role %s is not an IAM role name (the role's name, not its ARN)", clip.Quote(c.AssumeRole)))
	}
	for _, a := range c.LocalValidAccountIDs {
		if !reAccountID.MatchString(a) {
			errs = append(errs, fmt.Errorf("account_ids_for_local_validation: %s is not a 12-digit account ID", clip.Quote(a)))
		}
	}
	for _, e := range []struct{ key, url string }{{"ec2_endpoint", c.EC2Endpoint}, {"iam_endpoint", c.IAMEndpoint}, {"sts_endpoint", c.STSEndpoint}} {
		if e.url != "" {
			if _, err := parseEndpoint(e.url); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// reRoleName is an IAM role name (or path/name).
var reRoleName = lazyre.New(`^[\w+=,.@/-]{1,512}$`)

// PartitionOrDefault is the configured partition, "aws" by default.
func (c ServerConfig) PartitionOrDefault() string {
	if c.Partition == "" {
		return "aws"
	}
	return c.Partition
}

// LoadCertificates returns the certificates the configuration trusts: the
// file of signing_certificates_path, else AWS's for the partition.
func (c ServerConfig) LoadCertificates() (*Certificates, error) {
	if c.CertificatesPath == "" {
		return BuiltInCertificates(c.PartitionOrDefault())
	}
	data, err := readFile(c.CertificatesPath, 4<<20)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.CertificatesPath, err)
	}
	return certs, nil
}

// NewServer returns the server half.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("aws_iid: trust domain is required")
	}
	if opts.EC2 == nil || opts.ParseTemplate == nil {
		return nil, errors.New("aws_iid: an EC2 client and a template engine are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("aws_iid: %w", err)
	}
	certs, err := cfg.LoadCertificates()
	if err != nil {
		return nil, fmt.Errorf("aws_iid: signing certificates: %w", err)
	}
	text := cfg.AgentPathTemplate
	if text == "" {
		text = DefaultAgentPathTemplate
	}
	tmpl, err := opts.ParseTemplate(text)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: %w", err)
	}
	return &Server{cfg: cfg, td: opts.TrustDomain, certs: certs, tmpl: tmpl, ec2: opts.EC2}, nil
}

// Attest verifies the document and its signature, looks the instance up in
// EC2 and returns the agent ID and selectors. Errors wrap node.ErrInvalid
// (malformed data) or node.ErrRefused (see the Err* refusals); others are
// AWS failures.
func (s *Server) Attest(ctx context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	doc, err := s.Verify(payload)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, awsTimeout)
	defer cancel()
	inst, err := s.ec2.DescribeInstance(ctx, doc.AccountID, doc.Region, doc.InstanceID)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: instance %s of account %s in %s: %w", doc.InstanceID, doc.AccountID, doc.Region, err)
	}
	if !s.cfg.SkipBlockDevice && !slices.Contains(s.cfg.LocalValidAccountIDs, doc.AccountID) {
		if err := checkBlockDevice(inst); err != nil {
			return nil, fmt.Errorf("aws_iid: instance %s: %w", doc.InstanceID, err)
		}
	}
	tags := make(map[string]string, len(inst.Tags))
	for _, t := range inst.Tags {
		tags[t.Key] = t.Value
	}
	path, err := s.tmpl.Execute(TemplateData{
		PluginName: Type, AccountID: doc.AccountID, Region: doc.Region, InstanceID: doc.InstanceID,
		TrustDomain: s.td.Name(), Tags: tags,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: agent_path_template fails for instance %s: %s", ErrUnusableInstance, doc.InstanceID, clip.Cut(err.Error(), 120))
	}
	if err := spiffeid.ValidatePath(path); err != nil {
		return nil, fmt.Errorf("%w: the agent path %s of instance %s is not a valid SPIFFE ID path: %w", ErrUnusableInstance, clip.Quote(path), doc.InstanceID, err)
	}
	id, err := spiffeid.FromPath(s.td, "/spire/agent"+path)
	if err != nil {
		return nil, fmt.Errorf("%w: agent ID for path %s: %w", ErrUnusableInstance, clip.Quote(path), err)
	}

	values := []string{
		"account_id:" + doc.AccountID,
		"az:" + doc.AvailabilityZone,
		"image:id:" + doc.ImageID,
		"instance:id:" + doc.InstanceID,
		"region:" + doc.Region,
	}
	for _, t := range inst.Tags {
		values = append(values, "tag:"+t.Key+":"+t.Value)
	}
	for _, g := range inst.SecurityGroups {
		values = append(values, "sg:id:"+g.ID, "sg:name:"+g.Name)
	}
	if !s.cfg.DisableInstanceProfileSelectors && inst.InstanceProfileARN != "" {
		name, err := instanceProfileName(inst.InstanceProfileARN)
		if err != nil {
			return nil, fmt.Errorf("aws_iid: instance %s: %w", doc.InstanceID, err)
		}
		roles, err := s.ec2.InstanceProfileRoles(ctx, doc.AccountID, doc.Region, name)
		if err != nil {
			return nil, fmt.Errorf("aws_iid: instance profile %s of instance %s: %w", name, doc.InstanceID, err)
		}
		for _, r := range roles {
			values = append(values, "iamrole:"+r)
		}
	}
	sels := make([]selector.Selector, 0, len(values))
	for _, v := range values {
		sel := selector.Selector{Type: Type, Value: v}
		if err := sel.Validate(); err != nil {
			// A tag value with characters a selector cannot hold: left
			// out (an entry could not name it either).
			continue
		}
		sels = append(sels, sel)
	}
	return &node.Result{AgentID: id, Selectors: selector.Dedupe(sels), CanReattest: false}, nil
}

// Verify checks the attestation data's signature and returns the signed
// document: the PKCS #7 signature's content when the agent sent one (the
// document field must then be that content), else the document verified
// with the RSA-SHA256 signature.
func (s *Server) Verify(payload []byte) (*Document, error) {
	if len(payload) == 0 {
		return nil, fmt.Errorf("%w: aws_iid attestation data is empty", node.ErrInvalid)
	}
	if len(payload) > MaxPayloadSize {
		return nil, fmt.Errorf("%w: aws_iid attestation data is %d bytes, more than %d", node.ErrInvalid, len(payload), MaxPayloadSize)
	}
	var data attestationData
	if err := json.Unmarshal(payload, &data); err != nil {
		return nil, fmt.Errorf("%w: aws_iid attestation data is not JSON {\"document\", \"signature\", \"rsa2048\"}: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	if data.Document == "" {
		return nil, fmt.Errorf("%w: aws_iid attestation data has no document", node.ErrInvalid)
	}
	// The claimed document names the region whose certificate to use; it
	// is trusted only once a signature over it verifies.
	claimed, err := parseDocument([]byte(data.Document))
	if err != nil {
		return nil, err
	}
	region := claimed.Region
	if p := PartitionOf(region); p != s.cfg.PartitionOrDefault() {
		return nil, fmt.Errorf("%w: the document is of region %s, in partition %s, but this server is configured for partition %s",
			ErrNoCertificate, region, p, s.cfg.PartitionOrDefault())
	}
	switch {
	case data.SignatureRSA2048 != "":
		key := s.certs.lookup(FormPKCS7, region)
		if key == nil {
			return nil, fmt.Errorf("%w: no RSA-2048 certificate for region %s", ErrNoCertificate, region)
		}
		der, err := decodeBase64(data.SignatureRSA2048)
		if err != nil {
			return nil, fmt.Errorf("%w: aws_iid: the rsa2048 signature is not base64", node.ErrInvalid)
		}
		content, err := verifyPKCS7(der, key)
		switch {
		case errors.Is(err, errPKCS7):
			return nil, fmt.Errorf("%w: aws_iid: the rsa2048 signature is %w", node.ErrInvalid, err)
		case err != nil:
			return nil, fmt.Errorf("%w: rsa2048 (PKCS #7): %w", ErrBadSignature, err)
		}
		if string(content) != data.Document {
			// The document the agent sent is not the one AWS signed: a
			// legitimate signature of one instance with another's
			// document.
			return nil, fmt.Errorf("%w: the document is not the content the rsa2048 signature signs", ErrBadSignature)
		}
		return parseDocument(content)
	case data.Signature != "":
		key := s.certs.lookup(FormRSASHA256, region)
		if key == nil {
			return nil, fmt.Errorf("%w: no RSA certificate for region %s", ErrNoCertificate, region)
		}
		sig, err := decodeBase64(data.Signature)
		if err != nil {
			return nil, fmt.Errorf("%w: aws_iid: the signature is not base64", node.ErrInvalid)
		}
		sum := sha256.Sum256([]byte(data.Document))
		if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
			return nil, fmt.Errorf("%w: the RSA-SHA256 signature does not verify with the AWS certificate of region %s", ErrBadSignature, region)
		}
		return claimed, nil
	default:
		return nil, fmt.Errorf("%w: aws_iid attestation data has neither an rsa2048 nor an RSA-SHA256 signature", node.ErrInvalid)
	}
}

// decodeBase64 decodes standard base64, ignoring line breaks (the
// metadata service wraps the PKCS #7 signature).
func decodeBase64(s string) ([]byte, error) {
	s = strings.NewReplacer("\n", "", "\r", "", " ", "").Replace(s)
	return base64.StdEncoding.DecodeString(s)
}

// checkBlockDevice refuses an instance whose root EBS volume was attached
// more than MaxAttachSkew apart from its primary network interface (as
// SPIRE: a root volume swapped for another after launch). Instances with
// an instance-store root have nothing to check.
func checkBlockDevice(inst *Instance) error {
	i := slices.IndexFunc(inst.NetworkInterfaces, func(n NetworkInterface) bool { return n.DeviceIndex == 0 })
	if i < 0 {
		return fmt.Errorf("%w: EC2 lists no network interface with device index 0 (set skip_block_device to skip this check)", ErrRootVolumeSwapped)
	}
	if inst.RootDeviceType == "instance-store" {
		return nil
	}
	j := slices.IndexFunc(inst.BlockDevices, func(b BlockDevice) bool { return b.DeviceName == inst.RootDeviceName })
	if j < 0 {
		return fmt.Errorf("%w: EC2 lists no block device for the root device %s (set skip_block_device to skip this check)", ErrRootVolumeSwapped, clip.Quote(inst.RootDeviceName))
	}
	skew := inst.BlockDevices[j].AttachTime.Sub(inst.NetworkInterfaces[i].AttachTime).Abs().Truncate(time.Second)
	if skew > MaxAttachSkew {
		return fmt.Errorf("%w: the root volume %s and the primary network interface were attached %s apart (more than %s)",
			ErrRootVolumeSwapped, clip.Quote(inst.RootDeviceName), skew, MaxAttachSkew)
	}
	return nil
}

var reInstanceProfileARN = lazyre.New(`^arn:[a-z-]+:iam::[0-9]{12}:instance-profile[/:](.+)$`)

// instanceProfileName returns the name of an instance profile (the last
// segment of its ARN's path).
func instanceProfileName(arn string) (string, error) {
	m := reInstanceProfileARN.FindStringSubmatch(arn)
	if m == nil {
		return "", fmt.Errorf("EC2 reports the instance profile %s, which is not an instance profile ARN", clip.Quote(arn))
	}
	parts := strings.Split(m[1], "/")
	return parts[len(parts)-1], nil
}
