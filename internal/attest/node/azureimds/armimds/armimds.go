// Package armimds is the Azure side of the azure_imds server half: it
// implements azureimds.ResourceManager with internal/azurearm (Resource
// Manager over net/http, no Azure SDK). Only sigil-server links it.
package armimds

import (
	"context"
	"errors"
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/azurearm"
)

// Client implements azureimds.ResourceManager.
type Client struct {
	c *azurearm.Client
}

// New returns a client for cfg's endpoints.
func New(cfg azureimds.ServerConfig) *Client {
	return &Client{azurearm.New(cfg.Endpoints())}
}

// InstanceByVMID implements azureimds.ResourceManager.
func (c *Client) InstanceByVMID(ctx context.Context, cr azureimds.Credentials, subscription, vmID, scaleSet string) (*azureimds.VM, error) {
	in, err := c.c.InstanceByVMID(ctx, azurearm.Credentials{TenantID: cr.TenantID, AppID: cr.AppID, AppSecret: cr.AppSecret, AssertionPath: cr.TokenPath, SubscriptionID: subscription}, vmID, scaleSet)
	if errors.Is(err, azurearm.ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", azureimds.ErrNoSuchVM, err)
	}
	if err != nil {
		return nil, err
	}
	vm := &azureimds.VM{ID: in.ID, Name: in.Name, ResourceGroup: in.ResourceGroup, Location: in.Location, Tags: in.Tags}
	for _, n := range in.Interfaces {
		vm.Interfaces = append(vm.Interfaces, azureimds.Interface{SecurityGroupID: n.SecurityGroupID, SubnetIDs: n.SubnetIDs})
	}
	return vm, nil
}
