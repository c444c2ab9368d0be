// Package awsapi is the AWS side of the aws_iid server half: it implements
// awsiid.EC2 with the AWS SDK for Go v2 (EC2 DescribeInstances, IAM
// GetInstanceProfile, STS AssumeRole for assume_role). Only sigil-server
// links it (and with it the SDK): the agent half of aws_iid is plain HTTP.
//
// Credentials are the configuration's access_key_id and secret_access_key,
// else the SDK's default chain (AWS_ACCESS_KEY_ID and friends, shared
// configuration files, the instance role). The endpoints are AWS's unless
// the configuration names others (Sigil's ec2_endpoint, iam_endpoint,
// sts_endpoint; the SDK's AWS_ENDPOINT_URL_* variables work too): the
// requests are the SDK's, signed with Signature Version 4, either way.
package awsapi

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
)

// Client implements awsiid.EC2. It keeps one set of SDK clients per
// account and region (with assume_role, each account has its own
// credentials).
type Client struct {
	cfg  awsiid.ServerConfig
	base aws.Config

	mu      sync.Mutex
	clients map[string]*regional
}

type regional struct {
	ec2 *ec2.Client
	iam *iam.Client
}

// New loads the SDK's configuration (credentials are resolved at the first
// call, not here) for cfg.
func New(ctx context.Context, cfg awsiid.ServerConfig) (*Client, error) {
	var opts []func(*config.LoadOptions) error
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	base, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws_iid: AWS SDK configuration: %w", err)
	}
	return &Client{cfg: cfg, base: base, clients: map[string]*regional{}}, nil
}

func endpoint(url string) *string {
	if url == "" {
		return nil
	}
	return aws.String(url)
}

// client returns the clients of an account and region.
func (c *Client) client(account, region string) *regional {
	key := account + "@" + region
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.clients[key]; ok {
		return r
	}
	cfg := c.base.Copy()
	cfg.Region = region
	if c.cfg.AssumeRole != "" {
		roleARN := fmt.Sprintf("arn:%s:iam::%s:role/%s", c.cfg.PartitionOrDefault(), account, c.cfg.AssumeRole)
		stsClient := sts.NewFromConfig(cfg, func(o *sts.Options) { o.BaseEndpoint = endpoint(c.cfg.STSEndpoint) })
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(stsClient, roleARN))
	}
	r := &regional{
		ec2: ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = endpoint(c.cfg.EC2Endpoint) }),
		iam: iam.NewFromConfig(cfg, func(o *iam.Options) { o.BaseEndpoint = endpoint(c.cfg.IAMEndpoint) }),
	}
	c.clients[key] = r
	return r
}

// DescribeInstance implements awsiid.EC2: DescribeInstances of the one
// instance, pending or running.
func (c *Client) DescribeInstance(ctx context.Context, account, region, instanceID string) (*awsiid.Instance, error) {
	out, err := c.client(account, region).ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{
		InstanceIds: []string{instanceID},
		Filters:     []ec2types.Filter{{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}}},
	})
	if err != nil {
		return nil, c.classify("DescribeInstances", account, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) == instanceID {
				return convert(in), nil
			}
		}
	}
	return nil, fmt.Errorf("%w: EC2 DescribeInstances lists no pending or running instance %s", awsiid.ErrNoSuchInstance, instanceID)
}

// InstanceProfileRoles implements awsiid.EC2 with IAM GetInstanceProfile.
func (c *Client) InstanceProfileRoles(ctx context.Context, account, region, profileName string) ([]string, error) {
	out, err := c.client(account, region).iam.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(profileName)})
	if err != nil {
		return nil, c.classify("GetInstanceProfile", account, err)
	}
	if out.InstanceProfile == nil {
		return nil, errors.New("IAM GetInstanceProfile returned no instance profile")
	}
	var arns []string
	for _, r := range out.InstanceProfile.Roles {
		if r.Arn != nil {
			arns = append(arns, *r.Arn)
		}
	}
	return arns, nil
}

// classify turns an SDK error into a refusal where it says something
// about the instance (it does not exist for these credentials) or the
// account (its role cannot be assumed); any other error is the server's
// (credentials, permissions, network) and stays a failure.
func (c *Client) classify(op, account string, err error) error {
	if c.cfg.AssumeRole != "" {
		for e := err; e != nil; e = errors.Unwrap(e) {
			oe, ok := e.(*smithy.OperationError)
			if !ok || oe.ServiceID != "STS" {
				continue
			}
			var api smithy.APIError
			if errors.As(oe.Err, &api) && api.ErrorCode() == "AccessDenied" {
				return fmt.Errorf("%w: role %q of account %s cannot be assumed (STS AssumeRole: AccessDenied)", awsiid.ErrAccountDenied, c.cfg.AssumeRole, account)
			}
			break
		}
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed":
			return fmt.Errorf("%w: EC2 %s: %s", awsiid.ErrNoSuchInstance, op, api.ErrorCode())
		}
	}
	return fmt.Errorf("AWS %s: %w", op, err)
}

func convert(in ec2types.Instance) *awsiid.Instance {
	out := &awsiid.Instance{
		RootDeviceType: string(in.RootDeviceType),
		RootDeviceName: aws.ToString(in.RootDeviceName),
	}
	for _, t := range in.Tags {
		if t.Key != nil && t.Value != nil {
			out.Tags = append(out.Tags, awsiid.Tag{Key: *t.Key, Value: *t.Value})
		}
	}
	for _, g := range in.SecurityGroups {
		out.SecurityGroups = append(out.SecurityGroups, awsiid.SecurityGroup{ID: aws.ToString(g.GroupId), Name: aws.ToString(g.GroupName)})
	}
	if in.IamInstanceProfile != nil {
		out.InstanceProfileARN = aws.ToString(in.IamInstanceProfile.Arn)
	}
	for _, b := range in.BlockDeviceMappings {
		if b.Ebs == nil || b.Ebs.AttachTime == nil {
			continue
		}
		out.BlockDevices = append(out.BlockDevices, awsiid.BlockDevice{DeviceName: aws.ToString(b.DeviceName), AttachTime: *b.Ebs.AttachTime})
	}
	for _, n := range in.NetworkInterfaces {
		if n.Attachment == nil || n.Attachment.DeviceIndex == nil || n.Attachment.AttachTime == nil {
			continue
		}
		out.NetworkInterfaces = append(out.NetworkInterfaces, awsiid.NetworkInterface{DeviceIndex: int(*n.Attachment.DeviceIndex), AttachTime: *n.Attachment.AttachTime})
	}
	return out
}
