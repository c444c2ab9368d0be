package ca

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Several servers of one trust domain may share one database (HA). Each
// keeps its own CA and JWT keys (in its own key manager) and so its own
// journal record, under its own name (Config.JournalName), and publishes
// its authorities in the trust domain's one bundle before signing with
// them: an SVID from any server verifies with the bundle every server
// serves. The server records its journal's name in its data_dir; a server
// that has none recorded yet (a new server, or one from a Sigil that used
// the single name DefaultJournalName) claims one with ClaimJournal.

// journalPrefix starts the names ClaimJournal makes up.
const journalPrefix = DefaultJournalName + "-"

// ClaimJournal returns the journal name for a server that has none
// recorded: the name of a journal whose active or prepared X.509 CA key
// is in cfg.Keys (the server's own, e.g. the DefaultJournalName of a
// single server of an earlier Sigil), else a new name no journal has.
// It writes nothing. Like Init, it refuses (*TrustDomainMismatchError) a
// database where any journal holds an unexpired CA of another trust
// domain: the database belongs to that trust domain.
func ClaimJournal(ctx context.Context, cfg Config, journals datastore.CAJournalLister) (string, error) {
	m, err := New(cfg)
	if err != nil {
		return "", err
	}
	all, err := journals.ListCAJournals(ctx)
	if err != nil {
		return "", fmt.Errorf("ca: list CA journals: %w", err)
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	// The single-server name first: an upgraded server keeps it.
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == DefaultJournalName:
			return -1
		case b == DefaultJournalName:
			return 1
		case a < b:
			return -1
		}
		return 1
	})
	now := m.clk.Now()
	docs := make(map[string]journalDoc, len(all))
	for _, n := range names {
		var doc journalDoc
		if err := json.Unmarshal(all[n], &doc); err != nil || doc.Version != journalVersion {
			m.log.Warn("skipping an unreadable CA journal of the database", "journal", n)
			continue
		}
		if err := m.checkTrustDomain(doc, now); err != nil {
			return "", err
		}
		docs[n] = doc
	}
	for _, n := range names {
		doc, ok := docs[n]
		if ok && m.ownsJournal(ctx, doc) {
			m.log.Info("this server's keys sign the CA of an existing journal: taking it", "journal", n)
			return n, nil
		}
	}
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("ca: new journal name: %w", err)
		}
		n := journalPrefix + hex.EncodeToString(b[:])
		if _, taken := all[n]; !taken {
			m.log.Info("new CA journal for this server", "journal", n, "journals_of_other_servers", len(all))
			return n, nil
		}
	}
}

// ownsJournal reports whether the key of an active or prepared X.509 CA
// of doc is in the key manager and matches its certificate.
func (m *Manager) ownsJournal(ctx context.Context, doc journalDoc) bool {
	for _, e := range doc.X509 {
		if e.State == stateOld || validKeyID(x509KeyBase, e.KeyID) != nil || len(e.Chain) == 0 {
			continue
		}
		chain, err := parseDERs(e.Chain[:1])
		if err != nil {
			continue
		}
		signer, err := m.cfg.Keys.GetKey(ctx, e.KeyID)
		if err == nil && publicKeyEqual(signer.Public(), chain[0].PublicKey) {
			return true
		}
	}
	return false
}
