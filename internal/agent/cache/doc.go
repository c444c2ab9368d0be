// Package cache holds the agent's workload-facing state: the registration
// entries the agent is authorized for, one X509-SVID and private key per
// entry, our trust bundle and federated bundles, and JWT-SVIDs. It matches
// workloads (by selectors) to entries, pushes full states to subscribed
// workloads on every change that affects them, and persists itself to the
// agent's data_dir so a restarted agent serves its workloads while the
// server is unreachable.
//
// # Who calls what
//
// The server-facing half of the agent (sync, CSR batching, renewal) is the
// only writer:
//
//	c := cache.New(cache.Config{Dir: dataDir, TrustDomain: td, Clock: clk, Log: log})
//	if err := c.Load(); err != nil { ... }   // restore before serving; a corrupt file is an error
//	go c.Run(ctx)                           // pushes updates when a served SVID expires
//
//	c.SetBundle(own)                        // and each federated bundle; RemoveBundle(td) when a relationship goes
//	c.SetEntries(all)                       // the FULL authorized set after each sync
//	due := c.NeedsSVID(now, cache.DefaultRenewal)  // entries with no SVID, a stale one, or one past the renewal point
//	... generate a key per entry, batch CSRs, BatchNewX509SVID ...
//	c.SetX509SVIDs(map[entryID]*cache.X509SVID{...})
//
// The Workload API (internal/agent/workloadapi) is the reader: MatchingEntries,
// FetchWorkloadUpdate and Subscribe for a workload's selector set. JWT
// minting (the manager) uses GetJWTSVID, SetJWTSVID and, while the server
// is unreachable, OfflineJWTSVID.
//
// # Semantics
//
//   - An entry matches a workload when ALL its selectors are in the
//     workload's selector set (selector.Set.ContainsAll). A workload gets
//     every matching entry, ordered: entries without a hint first, then by
//     CreatedAt (oldest first), then by entry ID. The first is the workload's
//     default SVID (go-spiffe's FetchX509SVID returns it).
//   - SetEntries replaces the whole set. Removed entries lose their SVIDs and
//     JWT-SVIDs. An entry whose SPIFFE ID changed loses its SVID at once (it
//     names the old identity); an entry whose revision changed keeps serving
//     its SVID until a new one is set, but NeedsSVID reports it.
//   - SetX509SVIDs adds or replaces SVIDs of known entries (others are kept).
//     The leaf must carry the entry's SPIFFE ID and match the private key.
//   - An SVID whose leaf NotAfter is not after the clock's now is never
//     returned: expiry is applied on every read, and Run pushes an update to
//     subscribers when a served SVID expires.
//   - Subscriptions receive a full WorkloadUpdate immediately, then after
//     each change that alters what the workload would be served (entry
//     added/changed/removed, SVID set or expired, own bundle or one of its
//     federated bundles changed). Delivery coalesces: a slow reader only
//     ever sees the latest state and never blocks a writer.
//   - Values handed out (entries, certificates, keys, bundles) are shared
//     and must not be mutated by callers; values passed in are copied.
//
// # Persistence
//
// With Config.Dir set, every change of entries, bundles or X509-SVIDs is
// written before the setter returns to Dir/workload-cache.json (temporary
// file, fsync, rename, directory fsync; file 0600, Dir created 0700). It
// holds entries, bundles (SPIFFE bundle JSON) with the time each was last
// known current (BundleUpdate: FederatedBundleUpdates reports how old the
// federated ones are, also after a restart while cut off), and workload
// SVIDs with their PKCS#8 keys. Load restores it; SVIDs that have expired
// by then are dropped. The agent's own SVID and key are not part of this
// cache.
//
// JWT-SVIDs are written the same way to Dir/jwt-svids.json whenever one is
// set or dropped: SPIFFE ID, audience set and token, at most
// Config.MaxJWTSVIDs in all and Config.MaxJWTSVIDsPerID per SPIFFE ID
// (defaults 1000 and 100; when full, the token expiring first of the SPIFFE
// ID holding the most makes room, expired ones first). Load keeps a
// persisted token only if it still verifies: signature by a JWT key of our
// trust domain's persisted bundle, subject the SPIFFE ID of an entry the
// cache holds and the one it is filed under, the same audience set, not
// expired at the cache's clock. A JWT-SVID file that does not parse is
// ignored (logged), never a reason for Load to fail.
//
// # JWT-SVIDs
//
// Tokens are keyed by SPIFFE ID and audience set (order and duplicates
// ignored). GetJWTSVID returns one before its half-life: what a connected
// agent serves without minting. OfflineJWTSVID returns one, whatever its
// age, until min(JWTOfflineMargin (30 s), a quarter of its lifetime)
// before its exp, never later: what an agent that cannot reach its server
// serves; otherwise a *NoJWTSVIDError says that none is cached for the
// audience or that the cached one expires too soon. The cache never mints
// one. Tokens of SPIFFE IDs no entry has anymore are dropped (and
// unpersisted) with their entries.
//
// # Revocation
//
// When the server refuses the agent (banned or evicted), the writer calls
// Revoke: everything is dropped at once, subscribers receive a state with
// no entry (the Workload API ends their streams), watchers are signalled
// (filesystem delivery removes its files, see Revoked), the persisted
// files (workload cache and JWT-SVIDs) are deleted and nothing is written
// again until SetEntries, which ends the revocation once the agent has
// attested again.
package cache
