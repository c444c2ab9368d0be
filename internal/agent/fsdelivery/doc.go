// Package fsdelivery writes the X509-SVID, private key and trust bundles of
// one of the agent's identities to a directory and keeps them rotated, for
// devices and legacy applications that cannot speak the Workload API. It is
// a Sigil extension: SPIRE has no agent-side equivalent (spiffe-helper
// does this as a separate Workload API client).
//
// # Layout
//
// For a target with directory D:
//
//	D/                                    0700 (+ group/other r-x, see below), created if missing
//	                                      (missing parents are created 0755 before umask)
//	D/current -> .generations/<n>         symlink, replaced atomically on every rotation
//	D/.generations/<n>/                   one complete generation; the last two are kept
//	    svid.pem                          the X509-SVID: leaf first, then intermediates (PEM CERTIFICATE blocks)
//	    svid.key                          its private key, PKCS#8 (PEM "PRIVATE KEY"), always 0600
//	    bundle.pem                        X.509 authorities of our trust domain (PEM)
//	    bundle.json                       our trust domain's bundle in SPIFFE bundle format (a JWKS
//	                                      with the X.509 and JWT authorities), for JWT-SVID validation
//	    federated_bundle.<td>.pem         X.509 authorities of each trust domain the identity federates
//	    federated_bundle.<td>.json        with (and whose bundle the agent has), same formats
//	D/svid.pem -> current/svid.pem        one stable symlink per file of the current generation,
//	D/svid.key -> current/svid.key        so applications can be pointed at D/svid.pem etc.
//	...
//
// <n> is a decimal generation number that only grows (across restarts
// too; after a revocation removed everything it starts again at 1);
// <td> is the trust domain name, e.g. federated_bundle.partner.example.pem.
// The names follow spiffe-helper's defaults (svid.pem, bundle.pem) and the
// federated_bundle prefix of `spire-agent api fetch x509 -write`, but use a
// ".key" suffix for the key and the trust domain name instead of an index,
// so a file keeps its meaning when the federation set changes.
//
// # Rotation and what readers see
//
// Every change of the served state (new or rotated SVID, a bundle or the
// federation set changing) writes a NEW generation directory: each file is
// created (the key with mode 0600 before any byte is written), written and
// fsynced, the directory is fsynced, and only then the current symlink is
// swapped with a single rename(2). Files are never modified in place, so a
// reader that opened a file keeps reading a consistent file, and every
// generation holds a certificate and a key that match. The stable symlinks
// are updated right after the swap: a file name that is new in this
// generation (a federation that just appeared) becomes reachable as D/name
// a moment after it is reachable as D/current/name.
//
// A reader that must never pair a key with the wrong certificate resolves
// the generation once (readlink D/current, or open D/current as a directory
// and read relative to it) and reads every file from that directory. A
// reader that opens D/svid.pem and D/svid.key separately resolves current
// twice and can straddle a rotation that happens between the two opens;
// the previous generation is kept until the next rotation, so retrying
// after a tls.X509KeyPair mismatch always succeeds. Applications that
// watch files should watch D for the current entry being replaced
// (IN_MOVED_TO "current" with inotify).
//
// A restarted agent that finds the current generation identical to what it
// would write (contents, modes and owner) keeps it and only repairs the
// stable symlinks, so a restart is not a rotation for the application.
//
// Nothing is written until the identity has an unexpired SVID and the
// agent has our trust bundle; an SVID that has expired is never written
// (its files stay as they were: nothing is deleted because the server is
// unreachable). When the server revokes the agent (banned or evicted: the
// cache reports Revoked), everything fsdelivery wrote is removed at once:
// the stable links, current and every generation (D itself and files
// fsdelivery did not write stay). Generations other than the current and
// the previous one, and stable symlinks of files the current generation no
// longer has (a federation that went away), are removed after each swap.
//
// # Permissions
//
// svid.key is always 0600. The other files get the target's FileMode
// (default 0600; at most 0644: never writable or executable by others). The
// directories get 0700, plus r-x for group and/or other when FileMode lets
// them read, so the readable files can actually be reached. With UID/GID
// set (-1 leaves that part unchanged) every directory, file and symlink
// written is chowned to the application's user, which then can read the
// key; this needs the agent to run as root. An existing D keeps its mode
// and owner.
//
// # Which SVID
//
// A target names a SPIFFE ID, not an entry: the agent may hold several
// entries for it (e.g. with different selectors). The unexpired SVID with
// the latest NotAfter among them is written (ties broken by entry ID), and
// the federated trust domains are the union of the entries' federates_with.
package fsdelivery
