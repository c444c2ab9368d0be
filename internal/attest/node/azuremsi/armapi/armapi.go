// Package armapi is the Azure side of the azure_msi server half: it
// implements azuremsi.ResourceManager with Azure Resource Manager (the
// resources list filtered by identity/principalId, the VM, its network
// interfaces) through internal/azurearm (net/http, no Azure SDK). Only
// sigil-server links it.
package armapi

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/azurearm"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// maxPages bounds a list's pages.
const maxPages = 20

// API versions of the Resource Manager calls.
const (
	resourcesAPIVersion = "2021-04-01"
	computeAPIVersion   = "2024-07-01"
)

// Client implements azuremsi.ResourceManager.
type Client struct {
	*azurearm.Client
}

// New returns a client for cfg's endpoints.
func New(cfg azuremsi.ServerConfig) *Client {
	return &Client{azurearm.New(cfg.Endpoints())}
}

// VirtualMachine implements azuremsi.ResourceManager.
func (c *Client) VirtualMachine(ctx context.Context, t azuremsi.Tenant, principalID string) (*azuremsi.VM, error) {
	tok, sub, err := c.Credentials(ctx, azurearm.Credentials{TenantID: t.ID, AppID: t.AppID, AppSecret: t.AppSecret, SubscriptionID: t.SubscriptionID})
	if err != nil {
		return nil, err
	}
	// principalID is a GUID (azuremsi checked it): safe in the filter.
	filter := fmt.Sprintf("resourceType eq 'Microsoft.Compute/virtualMachines' and identity/principalId eq '%s'", principalID)
	next := c.Management() + "/subscriptions/" + url.PathEscape(sub) + "/resources?" +
		url.Values{"$filter": {filter}, "api-version": {resourcesAPIVersion}}.Encode()
	var ids []string
	for page := 0; next != ""; page++ {
		if page == maxPages {
			return nil, fmt.Errorf("resource Manager: more than %d pages of resources for principal %s", maxPages, principalID)
		}
		var list struct {
			Value []struct {
				ID string `json:"id"`
			} `json:"value"`
			NextLink string `json:"nextLink"`
		}
		if err := c.Get(ctx, tok, next, &list); err != nil {
			return nil, err
		}
		for _, v := range list.Value {
			ids = append(ids, v.ID)
		}
		next = list.NextLink
		if next != "" && !strings.HasPrefix(next, c.Management()+"/") {
			return nil, fmt.Errorf("resource Manager: nextLink %s is not on %s", clip.Quote(next), c.Management())
		}
	}
	switch len(ids) {
	case 0:
		return nil, fmt.Errorf("%w: Resource Manager lists no virtual machine whose identity is principal %s in subscription %s", azuremsi.ErrNoSuchVM, principalID, sub)
	case 1:
	default:
		return nil, fmt.Errorf("resource Manager lists %d virtual machines for principal %s", len(ids), principalID)
	}
	vm := &azuremsi.VM{SubscriptionID: sub, ID: ids[0]}
	var props struct {
		Properties struct {
			NetworkProfile struct {
				NetworkInterfaces []struct {
					ID string `json:"id"`
				} `json:"networkInterfaces"`
			} `json:"networkProfile"`
		} `json:"properties"`
	}
	if err := c.Get(ctx, tok, c.Management()+azurearm.EscapePath(vm.ID)+"?api-version="+computeAPIVersion, &props); err != nil {
		return nil, err
	}
	for _, ref := range props.Properties.NetworkProfile.NetworkInterfaces {
		if !strings.HasPrefix(ref.ID, "/subscriptions/") {
			return nil, fmt.Errorf("resource Manager gave the network interface ID %s", clip.Quote(ref.ID))
		}
		in, err := c.NetworkInterface(ctx, tok, ref.ID)
		if err != nil {
			return nil, err
		}
		vm.Interfaces = append(vm.Interfaces, azuremsi.Interface{ID: in.ID, SecurityGroupID: in.SecurityGroupID, SubnetIDs: in.SubnetIDs})
	}
	return vm, nil
}
