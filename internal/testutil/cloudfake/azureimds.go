package cloudfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Azure tenant domains of the fake: AzureTenantDomain is AzureTenant's;
// AzureOtherDomain is another tenant's.
const (
	AzureTenantDomain = "sigil-test.onmicrosoft.com"
	AzureOtherDomain  = "other-test.onmicrosoft.com"
	AzureOtherTenant  = "0b6f6f9e-1c2d-4e3f-8a9b-0c1d2e3f4a5b"
)

// AzurePKI is a test certificate hierarchy like the one Azure signs
// attested documents with: Root (self-signed CA), Intermediate (CA), and
// Leaf (the signing certificate, with Key, naming a metadata host).
type AzurePKI struct {
	Root, Intermediate, Leaf *x509.Certificate
	RootKey, InterKey, Key   *rsa.PrivateKey
}

func mkCert(tb testing.TB, tmpl, parent *x509.Certificate, pub *rsa.PublicKey, signer *rsa.PrivateKey) *x509.Certificate {
	tb.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = serial
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// IntermediateURL is the leaf's CA issuers URL (on www.microsoft.com, as
// Azure's; tests route it to a server of their own).
func (p *AzurePKI) IntermediateURL() string {
	return "http://www.microsoft.com/pkiops/certs/" + strings.ReplaceAll(p.Intermediate.Subject.CommonName, " ", "%20") + ".crt"
}

// NewAzurePKI makes a hierarchy whose leaf names host (keys are the test
// binary's, by name).
func NewAzurePKI(tb testing.TB, name, host string) *AzurePKI {
	tb.Helper()
	p := &AzurePKI{RootKey: RSAKey(tb, name+"-root", 2048), InterKey: RSAKey(tb, name+"-inter", 2048), Key: RSAKey(tb, name+"-leaf", 2048)}
	now := time.Now()
	p.Root = mkCert(tb, &x509.Certificate{
		Subject: pkix.Name{CommonName: name + " Test Root G2", Organization: []string{"Sigil test cloud"}}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, &p.RootKey.PublicKey, p.RootKey)
	p.Intermediate = mkCert(tb, &x509.Certificate{
		Subject: pkix.Name{CommonName: name + " Test TLS RSA CA 01", Organization: []string{"Sigil test cloud"}}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, p.Root, &p.InterKey.PublicKey, p.RootKey)
	p.Leaf = mkCert(tb, &x509.Certificate{
		Subject: pkix.Name{CommonName: host}, DNSNames: []string{host}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IssuingCertificateURL: []string{p.IntermediateURL()},
	}, p.Intermediate, &p.Key.PublicKey, p.InterKey)
	return p
}

// WriteRoot writes the root as PEM to dir/azure-roots.pem (a
// trust_bundle_path) and returns the path.
func (p *AzurePKI) WriteRoot(tb testing.TB, dir string) string {
	tb.Helper()
	path := filepath.Join(dir, "azure-roots.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Root.Raw}), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// AzureDocument says how AttestedDocument signs: by default as Azure does
// (the PKI's leaf, carrying leaf and intermediate, valid 6 hours).
type AzureDocument struct {
	Signers []PKCS7Signer       // default: the PKI's leaf
	Bag     []*x509.Certificate // default: leaf, intermediate
	// Created shifts createdOn (and expiresOn, 6 hours later).
	Created time.Duration
	// Subscription and VMID override the VM's.
	Subscription, VMID string
}

// AttestedDocument is the metadata service's answer for vm and nonce:
// {"encoding": "pkcs7", "signature": base64 of a PKCS #7 SignedData of the
// document's JSON}.
func (a *Azure) AttestedDocument(vm *AzureVM, nonce string, o AzureDocument) map[string]string {
	if o.Signers == nil {
		o.Signers = []PKCS7Signer{{Key: a.IMDS.Key, Cert: a.IMDS.Leaf}}
	}
	if o.Bag == nil {
		o.Bag = []*x509.Certificate{a.IMDS.Leaf, a.IMDS.Intermediate}
	}
	if o.Subscription == "" {
		o.Subscription = vm.Subscription
	}
	if o.VMID == "" {
		o.VMID = vm.VMID
	}
	created := time.Now().Add(o.Created).UTC()
	const layout = "01/02/06 15:04:05 -0700"
	doc, _ := json.Marshal(map[string]any{
		"licenseType": "", "nonce": nonce,
		"plan":      map[string]string{"name": "", "product": "", "publisher": ""},
		"timeStamp": map[string]string{"createdOn": created.Format(layout), "expiresOn": created.Add(6 * time.Hour).Format(layout)},
		"vmId":      o.VMID, "subscriptionId": o.Subscription, "sku": "22_04-lts-gen2",
	})
	return map[string]string{"encoding": "pkcs7", "signature": base64.StdEncoding.EncodeToString(PKCS7SignedDataBy(doc, o.Signers, o.Bag))}
}

func (a *Azure) serveAttestedDocument(vm *AzureVM, w http.ResponseWriter, r *http.Request) {
	nonce := r.URL.Query().Get("nonce")
	if len(nonce) > 32 {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "Bad request. nonce is longer than 32 characters"})
		return
	}
	a.count("attested")
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(a.AttestedDocument(vm, nonce, AzureDocument{}))
}

var reOpenIDConfig = regexp.MustCompile(`^/([^/]+\.[^/]+)/\.well-known/openid-configuration$`)

// serveTenantConfig is a tenant's OpenID configuration (v1 issuer).
func (a *Azure) serveTenantConfig(w http.ResponseWriter, domain string) {
	tenant := map[string]string{AzureTenantDomain: AzureTenant, AzureOtherDomain: AzureOtherTenant}[domain]
	if tenant == "" {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant '" + domain + "' not found."})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"issuer": "https://sts.windows.net/" + tenant + "/", "jwks_uri": a.URL() + "/common/discovery/keys",
		"token_endpoint": a.URL() + "/" + tenant + "/oauth2/token",
	})
}

func (vm *AzureVM) scaleSetID() string {
	return "/subscriptions/" + vm.Subscription + "/resourceGroups/" + vm.ResourceGroup + "/providers/Microsoft.Compute/virtualMachineScaleSets/" + vm.ScaleSet
}

func (vm *AzureVM) nicID() string {
	if vm.ScaleSet != "" {
		return vm.ID() + "/networkInterfaces/" + vm.ScaleSet + "-nic"
	}
	return "/subscriptions/" + vm.Subscription + "/resourceGroups/" + vm.ResourceGroup + "/providers/Microsoft.Network/networkInterfaces/" + vm.Name + "-nic"
}

// armVM is a VM as a virtualMachines list gives it.
func (vm *AzureVM) armVM() map[string]any {
	name := vm.Name
	if vm.ScaleSet != "" {
		name = vm.ScaleSet + "_" + vm.InstanceID
	}
	tags := vm.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	return map[string]any{
		"id": vm.ID(), "name": name, "type": "Microsoft.Compute/virtualMachines", "location": vm.Location, "tags": tags,
		"properties": map[string]any{"vmId": vm.VMID, "provisioningState": "Succeeded",
			"networkProfile": map[string]any{"networkInterfaces": []map[string]any{{"id": vm.nicID(), "properties": map[string]bool{"primary": true}}}}},
	}
}

var (
	reARMVMList   = regexp.MustCompile(`^/subscriptions/([^/]+)/providers/Microsoft\.Compute/virtualMachines$`)
	reARMVMSSList = regexp.MustCompile(`^/subscriptions/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets$`)
	reARMVMSSVMs  = regexp.MustCompile(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)/virtualMachines$`)
	reARMVMSSNIC  = regexp.MustCompile(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)/virtualMachines/([^/]+)/networkInterfaces/([^/]+)$`)
)

// serveARMList serves the lists azure_imds reads (and a scale set VM's
// network interface); false for other paths.
func (a *Azure) serveARMList(w http.ResponseWriter, r *http.Request, sub string, live func(func(*AzureVM) bool) *AzureVM) bool {
	p := r.URL.Path
	a.mu.Lock()
	vms := append([]*AzureVM(nil), a.vms...)
	a.mu.Unlock()
	all := func(match func(*AzureVM) bool) []map[string]any {
		out := []map[string]any{}
		for _, vm := range vms {
			if !vm.Deleted && vm.Subscription == sub && match(vm) {
				out = append(out, vm.armVM())
			}
		}
		return out
	}
	switch {
	case reARMVMList.MatchString(p):
		a.count("virtualMachinesList")
		_ = json.NewEncoder(w).Encode(map[string]any{"value": all(func(vm *AzureVM) bool { return vm.ScaleSet == "" })})
	case reARMVMSSList.MatchString(p):
		a.count("scaleSetsList")
		seen := map[string]bool{}
		value := []map[string]any{}
		for _, vm := range vms {
			if !vm.Deleted && vm.Subscription == sub && vm.ScaleSet != "" && !seen[vm.scaleSetID()] {
				seen[vm.scaleSetID()] = true
				value = append(value, map[string]any{"id": vm.scaleSetID(), "name": vm.ScaleSet, "location": vm.Location, "type": "Microsoft.Compute/virtualMachineScaleSets"})
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"value": value})
	case reARMVMSSVMs.MatchString(p):
		a.count("scaleSetVMs")
		m := reARMVMSSVMs.FindStringSubmatch(p)
		_ = json.NewEncoder(w).Encode(map[string]any{"value": all(func(vm *AzureVM) bool { return vm.ResourceGroup == m[2] && strings.EqualFold(vm.ScaleSet, m[3]) })})
	case reARMVMSSNIC.MatchString(p):
		a.count("networkInterfaces")
		vm := live(func(vm *AzureVM) bool { return vm.ScaleSet != "" && vm.nicID() == p })
		if vm == nil {
			armError(w, http.StatusNotFound, "ResourceNotFound", "The Resource 'Microsoft.Network/networkInterfaces' was not found.")
			return true
		}
		_ = json.NewEncoder(w).Encode(vm.nic())
	default:
		return false
	}
	return true
}

// IMDSServerPluginData is the server's azure_imds plugin_data for the
// fake: tenant AzureTenantDomain, whose app (registered here) reads
// AzureSubscription, allowed_vm_tags env, the fake's root in dir as
// trust_bundle_path, and the fake's endpoints.
func (a *Azure) IMDSServerPluginData(tb testing.TB, dir string) map[string]any {
	tb.Helper()
	a.AddApp(AzureTenant, "0a1b2c3d-0000-4000-8000-00000000a002", "test-imds-secret", AzureSubscription)
	return map[string]any{
		"tenants": map[string]any{AzureTenantDomain: map[string]any{
			"secret_auth":     map[string]any{"app_id": "0a1b2c3d-0000-4000-8000-00000000a002", "app_secret": "test-imds-secret"},
			"allowed_vm_tags": []string{"env"},
		}},
		"trust_bundle_path":   a.IMDS.WriteRoot(tb, dir),
		"login_endpoint":      a.URL(),
		"management_endpoint": a.URL(),
	}
}
