package armapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// NewIMDS returns a client for the azure_imds server half's endpoints.
func NewIMDS(cfg azureimds.ServerConfig) *Client {
	login, management, metadata := cfg.Endpoints()
	return New(azuremsi.ServerConfig{LoginEndpoint: login, ManagementEndpoint: management, MetadataEndpoint: metadata})
}

// armVM is a virtualMachines (or scale set virtualMachines) list item.
type armVM struct {
	ID         string            `json:"id"`
	Name       string            `json:"name"`
	Location   string            `json:"location"`
	Tags       map[string]string `json:"tags"`
	Properties struct {
		VMID           string `json:"vmId"`
		NetworkProfile struct {
			NetworkInterfaces []struct {
				ID string `json:"id"`
			} `json:"networkInterfaces"`
		} `json:"networkProfile"`
	} `json:"properties"`
}

// InstanceByVMID implements azureimds.ResourceManager: the VM whose vmId
// it is among the subscription's virtual machines, or among the VMs of the
// scale set of that name, and its network interfaces.
func (c *Client) InstanceByVMID(ctx context.Context, cr azureimds.Credentials, subscription, vmID, scaleSet string) (*azureimds.VM, error) {
	tok, _, err := c.credentials(ctx, azuremsi.Tenant{ID: cr.TenantID, AppID: cr.AppID, AppSecret: cr.AppSecret, SubscriptionID: subscription})
	if err != nil {
		return nil, err
	}
	subPath := c.management + "/subscriptions/" + url.PathEscape(subscription)
	list := subPath + "/providers/Microsoft.Compute/virtualMachines?api-version=" + computeAPIVersion
	if scaleSet != "" {
		var sets []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		}
		if err := c.list(ctx, tok, subPath+"/providers/Microsoft.Compute/virtualMachineScaleSets?api-version="+computeAPIVersion, &sets); err != nil {
			return nil, err
		}
		id := ""
		for _, s := range sets {
			if strings.EqualFold(s.Name, scaleSet) {
				id = s.ID
			}
		}
		if id == "" || !strings.HasPrefix(id, "/subscriptions/") {
			return nil, fmt.Errorf("%w: subscription %s has no scale set %s", azureimds.ErrNoSuchVM, subscription, clip.Quote(scaleSet))
		}
		list = c.management + escapePath(id) + "/virtualMachines?api-version=" + computeAPIVersion
	}
	var vms []armVM
	if err := c.list(ctx, tok, list, &vms); err != nil {
		return nil, err
	}
	var found *armVM
	for i := range vms {
		if strings.EqualFold(vms[i].Properties.VMID, vmID) {
			found = &vms[i]
		}
	}
	if found == nil {
		where := "subscription " + subscription
		if scaleSet != "" {
			where = "scale set " + clip.Quote(scaleSet) + " of " + where
		}
		return nil, fmt.Errorf("%w: Resource Manager lists no VM %s in %s", azureimds.ErrNoSuchVM, vmID, where)
	}
	p := strings.Split(found.ID, "/")
	if len(p) < 5 || p[3] != "resourceGroups" {
		return nil, fmt.Errorf("resource Manager gave the VM ID %s", clip.Quote(found.ID))
	}
	vm := &azureimds.VM{ID: found.ID, Name: found.Name, ResourceGroup: p[4], Location: found.Location, Tags: found.Tags}
	for _, ref := range found.Properties.NetworkProfile.NetworkInterfaces {
		if !strings.HasPrefix(ref.ID, "/subscriptions/") {
			return nil, fmt.Errorf("resource Manager gave the network interface ID %s", clip.Quote(ref.ID))
		}
		nic, err := c.networkInterface(ctx, tok, ref.ID)
		if err != nil {
			return nil, err
		}
		vm.Interfaces = append(vm.Interfaces, azureimds.Interface{SecurityGroupID: nic.SecurityGroupID, SubnetIDs: nic.SubnetIDs})
	}
	return vm, nil
}

// list GETs every page of a Resource Manager list into out (a pointer to
// a slice).
func (c *Client) list(ctx context.Context, tok, next string, out any) error {
	items := []string{}
	for page := 0; next != ""; page++ {
		if page == maxPages {
			return fmt.Errorf("resource Manager: more than %d pages", maxPages)
		}
		var l struct {
			Value    []json.RawMessage `json:"value"`
			NextLink string            `json:"nextLink"`
		}
		if err := c.get(ctx, tok, next, &l); err != nil {
			return err
		}
		for _, v := range l.Value {
			items = append(items, string(v))
		}
		next = l.NextLink
		if next != "" && !strings.HasPrefix(next, c.management+"/") {
			return fmt.Errorf("resource Manager: nextLink %s is not on %s", clip.Quote(next), c.management)
		}
	}
	if err := json.Unmarshal([]byte("["+strings.Join(items, ",")+"]"), out); err != nil {
		return fmt.Errorf("resource Manager: %s", clip.Cut(err.Error(), 100))
	}
	return nil
}
