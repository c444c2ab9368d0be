package azurearm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// ErrNotFound: Resource Manager lists no such VM (or scale set).
var ErrNotFound = errors.New("not found")

// Instance is a VM, or a scale set's VM, as Resource Manager lists it.
type Instance struct {
	ID, Name, ResourceGroup, Location string
	Tags                              map[string]string
	Interfaces                        []Interface
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

// InstanceByVMID finds the VM whose vmId it is among the subscription's
// virtual machines (cr.SubscriptionID), or among the VMs of the scale set
// of that name, with its network interfaces. Errors wrapping ErrNotFound
// say it is not there.
func (c *Client) InstanceByVMID(ctx context.Context, cr Credentials, vmID, scaleSet string) (*Instance, error) {
	tok, subscription, err := c.Credentials(ctx, cr)
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
		if err := c.List(ctx, tok, subPath+"/providers/Microsoft.Compute/virtualMachineScaleSets?api-version="+computeAPIVersion, &sets); err != nil {
			return nil, err
		}
		id := ""
		for _, s := range sets {
			if strings.EqualFold(s.Name, scaleSet) {
				id = s.ID
			}
		}
		if id == "" || !strings.HasPrefix(id, "/subscriptions/") {
			return nil, fmt.Errorf("%w: subscription %s has no scale set %s", ErrNotFound, subscription, clip.Quote(scaleSet))
		}
		list = c.management + EscapePath(id) + "/virtualMachines?api-version=" + computeAPIVersion
	}
	var vms []armVM
	if err := c.List(ctx, tok, list, &vms); err != nil {
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
		return nil, fmt.Errorf("%w: Resource Manager lists no VM %s in %s", ErrNotFound, vmID, where)
	}
	p := strings.Split(found.ID, "/")
	if len(p) < 5 || p[3] != "resourceGroups" {
		return nil, fmt.Errorf("resource Manager gave the VM ID %s", clip.Quote(found.ID))
	}
	vm := &Instance{ID: found.ID, Name: found.Name, ResourceGroup: p[4], Location: found.Location, Tags: found.Tags}
	for _, ref := range found.Properties.NetworkProfile.NetworkInterfaces {
		if !strings.HasPrefix(ref.ID, "/subscriptions/") {
			return nil, fmt.Errorf("resource Manager gave the network interface ID %s", clip.Quote(ref.ID))
		}
		nic, err := c.NetworkInterface(ctx, tok, ref.ID)
		if err != nil {
			return nil, err
		}
		vm.Interfaces = append(vm.Interfaces, nic)
	}
	return vm, nil
}

// List GETs every page of a Resource Manager list (following nextLink on
// the same endpoint) into out, a pointer to a slice.
func (c *Client) List(ctx context.Context, tok, next string, out any) error {
	items := []string{}
	for page := 0; next != ""; page++ {
		if page == maxPages {
			return fmt.Errorf("resource Manager: more than %d pages", maxPages)
		}
		var l struct {
			Value    []json.RawMessage `json:"value"`
			NextLink string            `json:"nextLink"`
		}
		if err := c.Get(ctx, tok, next, &l); err != nil {
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
