// Package datastore declares the server's persistent model and the storage
// interfaces, split by aggregate. Implementations live in sub-packages
// (sqlstore: SQLite by default, PostgreSQL for HA). Callers declare the
// narrow subset they need; these interfaces are the full contract an
// implementation offers.
package datastore

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Sentinel errors. Implementations wrap them with context; callers test with
// errors.Is and map them to gRPC codes at the API edge.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict is returned when an optimistic update lost a race
	// (e.g. a bundle's sequence number changed underneath).
	ErrConflict = errors.New("conflict")
	// ErrInvalidPage is returned by List methods for a page token they did
	// not issue or a negative page size.
	ErrInvalidPage = errors.New("invalid page")
	// ErrNoFederatedBundle is matched by the *NoFederatedBundleError of an
	// entry write naming in FederatesWith a trust domain with no bundle.
	ErrNoFederatedBundle = errors.New("unable to find federated bundle")
	// ErrOutOfRange is returned by a bundle write whose sequence number
	// would not fit the store (above 2^63-1).
	ErrOutOfRange = errors.New("out of range")
	// ErrBundleInUse is returned by DeleteBundle while entries federate
	// with the trust domain.
	ErrBundleInUse = errors.New("entries federate with the trust domain")
	// ErrBanned is returned by AttestNode for a node that was banned.
	ErrBanned = errors.New("banned")
	// ErrInvalid is matched by the error of a write with a value no store
	// can hold (text that is not UTF-8, or holds a NUL byte).
	ErrInvalid = errors.New("invalid")
)

// NoFederatedBundleError is the error of an entry write (per entry for
// CreateEntries) whose FederatesWith names a trust domain with no stored
// bundle. It matches ErrNoFederatedBundle.
type NoFederatedBundleError struct {
	TrustDomain string
}

func (e *NoFederatedBundleError) Error() string {
	return ErrNoFederatedBundle.Error() + " " + clip.Quote(e.TrustDomain)
}

// Is reports whether target is ErrNoFederatedBundle.
func (e *NoFederatedBundleError) Is(target error) bool { return target == ErrNoFederatedBundle }

// Entry is a registration entry: SPIFFE ID <- parent + selectors.
type Entry struct {
	ID            string // generated (UUID) when empty on create
	SPIFFEID      string // validated spiffe://td/path
	ParentID      string
	Selectors     []selector.Selector // kept sorted and de-duplicated
	X509SVIDTTL   int32               // seconds; 0 = server default
	JWTSVIDTTL    int32               // seconds; 0 = server default
	DNSNames      []string
	FederatesWith []string // trust domain names, e.g. "example.org"; each must have a stored bundle
	Admin         bool
	Downstream    bool
	Hint          string
	StoreSVID     bool
	ExpiresAt     int64 // unix seconds; 0 = never
	CreatedAt     int64 // unix seconds, set by the store
	// RevisionNumber starts at 0 on create and is incremented by every update.
	RevisionNumber int64
}

// Two entries are duplicates when SPIFFEID, ParentID and the selector set
// are equal (SPIRE's rule); creating a duplicate returns ErrAlreadyExists.

// EntryMask selects which fields UpdateEntry changes (nil = all).
type EntryMask struct {
	SPIFFEID, ParentID, Selectors, X509SVIDTTL, JWTSVIDTTL, DNSNames,
	FederatesWith, Admin, Downstream, Hint, StoreSVID, ExpiresAt bool
}

// SelectorMatch mirrors spire-api-sdk types.SelectorMatch.
type SelectorMatch int

const (
	MatchExact    SelectorMatch = iota // the entry's set equals the given set
	MatchSubset                        // the entry's set is a subset of the given set
	MatchSuperset                      // the entry's set contains all of the given set
	MatchAny                           // the entry has at least one of the given selectors
)

// EntryFilter restricts ListEntries/CountEntries. Zero fields don't filter.
type EntryFilter struct {
	BySPIFFEID      string
	ByParentID      string
	BySelectors     []selector.Selector
	SelectorMatch   SelectorMatch
	ByFederatesWith []string
	FederatesMatch  SelectorMatch // same four modes, over trust domain names
	ByHint          *string
	ByDownstream    *bool
}

// Page requests a page. Token is opaque, returned by the previous call; an
// empty NextToken means there are no more results. Size 0 = everything.
type Page struct {
	Size  int
	Token string
}

// EntryEventKind says what happened to an entry.
type EntryEventKind int

const (
	EntryCreated EntryEventKind = iota + 1
	EntryUpdated
	EntryDeleted
)

// EntryEvent is one row of the entry change journal. IDs increase
// monotonically; readers poll for events after the last ID they saw. This is
// how every server sharing one database (HA) learns of changes.
type EntryEvent struct {
	ID      int64
	EntryID string
	Kind    EntryEventKind
}

// JournalHorizons say how far each change journal (entry, node, bundle
// events) has been pruned: every event ID up to a horizon is gone, and a
// follower whose position is below it may have missed changes (0: nothing
// pruned yet).
type JournalHorizons struct {
	Entry, Node, Bundle int64
}

// EntryStore stores registration entries.
type EntryStore interface {
	// CreateEntries creates the entries in one transaction where possible;
	// it returns one result per input, in order. A per-entry failure
	// (ErrAlreadyExists) does not fail the others. err is for failures of the
	// whole call.
	CreateEntries(ctx context.Context, entries []*Entry) (results []EntryResult, err error)
	GetEntry(ctx context.Context, id string) (*Entry, error) // ErrNotFound
	// GetEntries reads the entries with these IDs in one transaction; IDs
	// that do not exist are absent from the result.
	GetEntries(ctx context.Context, ids []string) (map[string]*Entry, error)
	ListEntries(ctx context.Context, f EntryFilter, p Page) (entries []*Entry, nextToken string, err error)
	CountEntries(ctx context.Context, f EntryFilter) (int, error)
	// UpdateEntry changes the masked fields of the entry with e.ID and bumps
	// its revision. Errors: ErrNotFound, ErrAlreadyExists (would duplicate).
	UpdateEntry(ctx context.Context, e *Entry, mask *EntryMask) (*Entry, error)
	// DeleteEntries deletes by ID; one error (nil, ErrNotFound) per ID.
	DeleteEntries(ctx context.Context, ids []string) ([]error, error)
	// PruneEntries deletes entries whose ExpiresAt is before t; returns how many.
	PruneEntries(ctx context.Context, before time.Time) (int, error)
	// ListEntryEvents returns journal events with ID > after, oldest first,
	// at most limit (0 = no limit).
	ListEntryEvents(ctx context.Context, after int64, limit int) ([]EntryEvent, error)
	// LastEntryEventID returns the highest event ID (0 if none), pruned
	// ones included.
	LastEntryEventID(ctx context.Context) (int64, error)
}

// EntryResult is the outcome for one entry of a batch.
type EntryResult struct {
	Entry *Entry // the stored entry (with ID, CreatedAt) on success
	Err   error  // nil, or wraps ErrAlreadyExists etc.
}

// AttestedNode is an agent that has attested.
type AttestedNode struct {
	SPIFFEID        string
	AttestationType string // e.g. "join_token"
	CertSerial      string // decimal serial of the agent's current SVID; "" when banned
	CertNotAfter    int64  // unix seconds
	NewCertSerial   string // serial of a renewed SVID not yet in use
	NewCertNotAfter int64
	CanReattest     bool
	Selectors       []selector.Selector
	CreatedAt       int64 // unix seconds, set by the store
	// AgentVersion is what the agent last reported with PostStatus ("" =
	// never reported).
	AgentVersion string
}

// Banned reports whether the node was banned (SPIRE: empty serials).
func (n *AttestedNode) Banned() bool { return n.CertSerial == "" && n.NewCertSerial == "" }

// NodeFilter restricts ListNodes/CountNodes.
type NodeFilter struct {
	ByAttestationType string
	ByBanned          *bool
	BySelectors       []selector.Selector
	SelectorMatch     SelectorMatch
	ExpiresBefore     int64 // unix seconds; 0 = no filter
	ByCanReattest     *bool
}

// NodeMask selects fields UpdateNode changes (nil = all).
type NodeMask struct {
	CertSerial, CertNotAfter, NewCertSerial, NewCertNotAfter, CanReattest, AgentVersion bool
}

// NodeStore stores attested nodes and their selectors.
type NodeStore interface {
	CreateNode(ctx context.Context, n *AttestedNode) (*AttestedNode, error) // ErrAlreadyExists
	GetNode(ctx context.Context, spiffeID string) (*AttestedNode, error)    // ErrNotFound; includes selectors
	ListNodes(ctx context.Context, f NodeFilter, p Page) ([]*AttestedNode, string, error)
	CountNodes(ctx context.Context, f NodeFilter) (int, error)
	UpdateNode(ctx context.Context, n *AttestedNode, mask *NodeMask) (*AttestedNode, error)
	// DeleteNode also deletes the node's selectors and, for a join_token
	// node, the alias entries its join token created (parent the node, the
	// single selector spiffe_id:<node>), as SPIRE does since 1.15.2.
	DeleteNode(ctx context.Context, spiffeID string) (*AttestedNode, error)
	// RenewNode records a renewed SVID (serial, notAfter) as the node's
	// pending one (NewCertSerial, NewCertNotAfter), atomically refusing a
	// node that is banned (ErrBanned) or gone (ErrNotFound): a ban
	// committed while the renewal was being signed, on this server or
	// another, is never undone by it.
	RenewNode(ctx context.Context, spiffeID, serial string, notAfter int64) (*AttestedNode, error)
	// PromoteNodeSerial makes the node's NewCertSerial (which must equal
	// serial) its CertSerial, atomically: when the node was banned,
	// re-attested or promoted meanwhile it changes nothing and returns
	// ErrConflict, so a concurrent ban is never undone.
	PromoteNodeSerial(ctx context.Context, spiffeID, serial string) (*AttestedNode, error)
	SetNodeSelectors(ctx context.Context, spiffeID string, sels []selector.Selector) error
	// AttestNode records a successful node attestation in one transaction
	// (see NodeAttestation): nothing is consumed or changed unless all of
	// it is.
	AttestNode(ctx context.Context, a *NodeAttestation) (*AttestedNode, error)
	// ListNodeEvents / LastNodeEventID: like the entry journal, so every
	// server learns of bans, deletes and selector changes.
	ListNodeEvents(ctx context.Context, after int64, limit int) ([]NodeEvent, error)
	LastNodeEventID(ctx context.Context) (int64, error)
}

// NodeAttestation is what AttestNode records, all or nothing:
//
//  1. When JoinToken is set, the join token with that hash is consumed; it
//     must exist and expire after ValidAt (else ErrNotFound: unknown,
//     already used, or expired meanwhile).
//  2. A banned node is left as it is (ErrBanned); so is an existing node
//     when MustBeNew is set (ErrAlreadyExists).
//  3. A new node is created from Node (its selectors, when any, replace
//     those set earlier with SetNodeSelectors). An existing node gets
//     Node's CertSerial, CertNotAfter and CanReattest, loses any pending
//     NewCertSerial, and its selectors are replaced by Node's (even when
//     empty); its AttestationType and CreatedAt are kept.
type NodeAttestation struct {
	Node      *AttestedNode
	JoinToken *[32]byte // SHA-256 of the join token used, if any
	ValidAt   int64     // unix seconds: the join token must expire after it
	// MustBeNew refuses to update a node already on record: its attestor
	// cannot re-attest (trust on first use, join tokens).
	MustBeNew bool
}

// NodeEvent is one row of the node change journal.
type NodeEvent struct {
	ID       int64
	SPIFFEID string
}

// BundleEvent is one row of the bundle change journal (every bundle write
// and delete), for servers sharing a database to learn of bundle changes.
type BundleEvent struct {
	ID          int64
	TrustDomain string
}

// JoinToken is a single-use node attestation secret. Only its SHA-256 is
// stored; the plaintext is shown once to the admin who created it.
type JoinToken struct {
	Hash      [32]byte // sha256 of the token value
	ExpiresAt int64    // unix seconds
	CreatedAt int64
}

// TokenStore stores join tokens.
type TokenStore interface {
	CreateJoinToken(ctx context.Context, t *JoinToken) error // ErrAlreadyExists
	// GetJoinToken returns the token with this hash without consuming it
	// (ErrNotFound if absent): a read, for checking a token before the
	// expensive part of an attestation; NodeStore.AttestNode consumes it.
	GetJoinToken(ctx context.Context, hash [32]byte) (*JoinToken, error)
	// ConsumeJoinToken atomically deletes and returns the token with this
	// hash (ErrNotFound if absent). The caller checks expiry.
	ConsumeJoinToken(ctx context.Context, hash [32]byte) (*JoinToken, error)
	PruneJoinTokens(ctx context.Context, before time.Time) (int, error)
}

// JWTKey is a JWT signing public key published in a bundle.
type JWTKey struct {
	KeyID     string
	PublicKey []byte // PKIX DER
	ExpiresAt int64  // unix seconds; 0 = none
	Tainted   bool
}

// X509Authority is a root CA certificate published in a bundle.
type X509Authority struct {
	ASN1    []byte // DER
	Tainted bool
}

// Bundle is the trust bundle of one trust domain (ours or federated).
type Bundle struct {
	TrustDomain     string // name, e.g. "example.org"
	X509Authorities []X509Authority
	JWTKeys         []JWTKey
	RefreshHint     int64 // seconds
	SequenceNumber  uint64
}

// BundleStore stores trust bundles. Every write bumps SequenceNumber and
// records a bundle event.
type BundleStore interface {
	CreateBundle(ctx context.Context, b *Bundle) (*Bundle, error) // ErrAlreadyExists
	GetBundle(ctx context.Context, trustDomain string) (*Bundle, error)
	ListBundles(ctx context.Context, p Page) ([]*Bundle, string, error)
	CountBundles(ctx context.Context) (int, error)
	// UpdateBundle replaces the stored bundle (ErrNotFound if absent).
	UpdateBundle(ctx context.Context, b *Bundle) (*Bundle, error)
	// SetBundle creates or replaces.
	SetBundle(ctx context.Context, b *Bundle) (*Bundle, error)
	// AppendBundle adds authorities and keys not already present (by DER /
	// key ID), creating the bundle if absent.
	AppendBundle(ctx context.Context, b *Bundle) (*Bundle, error)
	// DeleteBundle deletes the bundle: ErrNotFound, or ErrBundleInUse
	// while an entry federates with the trust domain (checked in the same
	// transaction, so FederatesWith never names a missing bundle).
	DeleteBundle(ctx context.Context, trustDomain string) error
	// PruneBundle drops X.509 authorities expired before t and JWT keys
	// with ExpiresAt before t from the bundle; reports whether it changed.
	PruneBundle(ctx context.Context, trustDomain string, before time.Time) (bool, error)
}

// Bundle endpoint profiles of a federation relationship (SPIFFE
// Federation), as SPIRE stores them.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// FederationRelationship is a relationship with another trust domain
// created through the trustdomain API (SPIRE's "dynamic" relationships;
// those of the server configuration are not stored): where its bundle
// endpoint is and how it authenticates.
type FederationRelationship struct {
	TrustDomain       string // name, e.g. "peer.test"
	BundleEndpointURL string // https URL
	Profile           string // ProfileHTTPSSPIFFE or ProfileHTTPSWeb
	// EndpointSPIFFEID is the SPIFFE ID the https_spiffe endpoint presents
	// ("" for https_web).
	EndpointSPIFFEID string
	CreatedAt        int64 // unix seconds, set by the store
	UpdatedAt        int64 // unix seconds, set by the store
}

// FederationRelationshipMask selects what UpdateFederationRelationship
// changes (nil = everything). Profile covers EndpointSPIFFEID.
type FederationRelationshipMask struct {
	BundleEndpointURL, Profile bool
}

// FederationStore stores federation relationships and when each federated
// bundle was last fetched from its endpoint.
type FederationStore interface {
	// CreateFederationRelationship stores a new relationship
	// (ErrAlreadyExists when the trust domain has one) and, when bundle is
	// not nil, sets the trust domain's bundle in the same transaction (the
	// bundle that authenticates a first https_spiffe fetch).
	CreateFederationRelationship(ctx context.Context, fr *FederationRelationship, bundle *Bundle) (*FederationRelationship, error)
	GetFederationRelationship(ctx context.Context, trustDomain string) (*FederationRelationship, error) // ErrNotFound
	// ListFederationRelationships lists relationships in trust domain order.
	ListFederationRelationships(ctx context.Context, p Page) ([]*FederationRelationship, string, error)
	// UpdateFederationRelationship changes the masked fields of the
	// relationship of fr.TrustDomain (ErrNotFound) and, when bundle is not
	// nil, sets that trust domain's bundle, in one transaction.
	UpdateFederationRelationship(ctx context.Context, fr *FederationRelationship, mask *FederationRelationshipMask, bundle *Bundle) (*FederationRelationship, error)
	// DeleteFederationRelationship deletes the relationship (ErrNotFound);
	// the trust domain's bundle stays, as in SPIRE.
	DeleteFederationRelationship(ctx context.Context, trustDomain string) error
	// SetBundleRefreshed records that the trust domain's bundle was fetched
	// from its endpoint at t (whether or not it changed), so its age
	// survives a restart.
	SetBundleRefreshed(ctx context.Context, trustDomain string, t time.Time) error
	// BundleRefreshes returns when each trust domain's bundle was last
	// fetched from its endpoint (absent: never).
	BundleRefreshes(ctx context.Context) (map[string]time.Time, error)
}

// CAJournalStore persists the CA manager's key-slot journal (an opaque,
// versioned blob: which keys exist, their certificates and states). Each
// server sharing the database keeps its own, under its own name.
type CAJournalStore interface {
	GetCAJournal(ctx context.Context, name string) ([]byte, error) // ErrNotFound
	SetCAJournal(ctx context.Context, name string, data []byte) error
}

type staleKey struct{}

// TolerateStale marks ctx: the store may serve the reads made with it from a
// read replica that lags the primary (PostgreSQL's ro_connection_string).
// For reads whose result is only shown (admin listings), never for a read
// an authorization or a read-your-write depends on.
func TolerateStale(ctx context.Context) context.Context {
	return context.WithValue(ctx, staleKey{}, true)
}

// StaleTolerated reports whether ctx was marked with TolerateStale.
func StaleTolerated(ctx context.Context) bool {
	v, _ := ctx.Value(staleKey{}).(bool)
	return v
}

// CAJournalLister lists the CA journals of every server sharing the
// database.
type CAJournalLister interface {
	// ListCAJournals returns every journal, by name (an empty map when
	// there is none).
	ListCAJournals(ctx context.Context) (map[string][]byte, error)
}

// Change says which journals a committed write appended to (entry, node,
// bundle events). A store that notifies (sqlstore's OnChange) reports
// every commit that appended to one, so a follower of the journals never
// depends on its callers to tell it about their writes.
type Change uint8

// Journals a Change names.
const (
	ChangeEntries Change = 1 << iota
	ChangeNodes
	ChangeBundles
	// ChangeAll is reported when the store cannot tell which (a
	// notification it could not parse, or may have missed).
	ChangeAll = ChangeEntries | ChangeNodes | ChangeBundles
)

func (c Change) String() string {
	var parts []string
	for _, k := range []struct {
		c    Change
		name string
	}{{ChangeEntries, "entries"}, {ChangeNodes, "nodes"}, {ChangeBundles, "bundles"}} {
		if c&k.c != 0 {
			parts = append(parts, k.name)
		}
	}
	return strings.Join(parts, ",")
}

// DataStore is everything a store offers. Components take the narrower
// interfaces above (or declare their own subsets).
type DataStore interface {
	EntryStore
	NodeStore
	TokenStore
	BundleStore
	FederationStore
	CAJournalStore
	CAJournalLister
	Close() error
}
