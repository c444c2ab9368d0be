// Package awsiid implements AWS EC2 instance identity document node
// attestation, wire- and configuration-compatible with SPIRE's "aws_iid"
// plugins: an EC2 instance proves which instance it is with the identity
// document AWS signs for it, and gets an agent ID and selectors from the
// document and from the EC2 API.
//
// The exchange has no challenge. The agent reads the document and its
// signatures from the instance metadata service (IMDSv2: a session token
// from PUT /latest/api/token, then GET /latest/dynamic/instance-identity/
// {document,signature,rsa2048} with it) and sends them as JSON, with
// SPIRE's field names:
//
//	{"document": "<the JSON document>", "signature": "<base64 RSA-SHA256>",
//	 "rsa2048": "<base64 PKCS #7 SignedData, without PEM armor>"}
//
// The server verifies a signature with the AWS public certificate of the
// document's region (built in, per partition, or the file of the Sigil
// extension signing_certificates_path): the PKCS #7 form (rsa2048) when the
// agent sent it, whose signed content then is the document, else the
// RSA-SHA256 form (signature) over the document. It then looks the
// instance up with EC2 DescribeInstances (pending or running only), using
// the server's AWS credentials (access_key_id and secret_access_key, or the
// SDK's default chain) and, with assume_role, the role of that name in the
// document's account. Unless skip_block_device is set or the account is in
// account_ids_for_local_validation, it refuses an instance whose root EBS
// volume was attached more than 60 seconds apart from its primary network
// interface (a root volume swapped after launch), as SPIRE does.
//
// The agent ID is spiffe://<trust domain>/spire/agent/aws_iid/<account>/
// <region>/<instance id> unless agent_path_template says otherwise. The
// node's selectors, as SPIRE's: aws_iid:account_id:, az:, image:id:,
// instance:id:, region: from the document; tag:<key>:<value>, sg:id:,
// sg:name: from EC2; iamrole:<role ARN> for each role of the instance
// profile (IAM GetInstanceProfile) unless disable_instance_profile_selectors.
//
// The document is the same for the life of the instance and any process on
// it can read it, so attestation is trust on first use (as SPIRE): a
// document whose agent is on record is refused (node.Result.CanReattest is
// false), until the agent is evicted.
//
// The agent half is plain HTTP (sigil-agent links no AWS SDK). The server
// half talks to AWS through the EC2 interface; package awsapi implements it
// with the AWS SDK for Go v2, and only sigil-server links that.
package awsiid

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
)

// Type is the attestation type, the plugin name and the selector type.
const Type = "aws_iid"

// Bounds on what either side accepts from the other.
const (
	// MaxPayloadSize bounds the attestation data: a document (~500
	// bytes) and its two signatures (~2 KiB together), base64 in JSON.
	MaxPayloadSize = 32 << 10
	// maxIMDSResponse bounds one instance metadata response.
	maxIMDSResponse = 16 << 10
)

// attestationData is the payload, with SPIRE's field names.
type attestationData struct {
	Document         string `json:"document"`
	Signature        string `json:"signature"`
	SignatureRSA2048 string `json:"rsa2048"`
}

// Document is an instance identity document: the fields the attestor
// uses, with AWS's names.
type Document struct {
	AccountID        string    `json:"accountId"`
	Region           string    `json:"region"`
	AvailabilityZone string    `json:"availabilityZone"`
	InstanceID       string    `json:"instanceId"`
	ImageID          string    `json:"imageId"`
	InstanceType     string    `json:"instanceType"`
	PrivateIP        string    `json:"privateIp"`
	Architecture     string    `json:"architecture"`
	PendingTime      time.Time `json:"pendingTime"`
	Version          string    `json:"version"`
}

var (
	reAccountID  = lazyre.New(`^[0-9]{12}$`)
	reInstanceID = lazyre.New(`^i-[0-9a-f]{8,32}$`)
	reRegion     = lazyre.New(`^[a-z]{2,4}(-[a-z0-9]+){2,3}$`)
	reAZ         = lazyre.New(`^[a-z0-9-]{1,64}$`)
	reImageID    = lazyre.New(`^[a-z]{3}-[0-9a-f]{8,32}$`)
)

// parseDocument decodes a signed document and checks the fields that end
// up in the agent ID, selectors and AWS requests.
func parseDocument(b []byte) (*Document, error) {
	var d Document
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%w: aws_iid: the instance identity document is not JSON: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	var errs []error
	check := func(field, v string, re *lazyre.Regexp) {
		if !re.MatchString(v) {
			errs = append(errs, fmt.Errorf("%s %s", field, clip.Quote(v)))
		}
	}
	check("accountId", d.AccountID, reAccountID)
	check("instanceId", d.InstanceID, reInstanceID)
	check("region", d.Region, reRegion)
	check("availabilityZone", d.AvailabilityZone, reAZ)
	check("imageId", d.ImageID, reImageID)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: aws_iid: the instance identity document has an invalid %w", node.ErrInvalid, err)
	}
	return &d, nil
}

// Partitions are the AWS partitions a server may be configured for
// (partition), with the prefix of their regions' names.
var Partitions = []string{"aws", "aws-cn", "aws-us-gov", "aws-eusc"}

// PartitionOf returns the partition of a region.
func PartitionOf(region string) string {
	switch {
	case hasPrefix(region, "cn-"):
		return "aws-cn"
	case hasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	case hasPrefix(region, "eusc-"):
		return "aws-eusc"
	}
	return "aws"
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
