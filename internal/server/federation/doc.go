// Package federation federates the server's trust domain with others
// (SPIFFE Federation), as SPIRE's server does and on its wire format:
//
//   - Endpoint serves the server's own trust bundle as a SPIFFE bundle
//     (JWKS with spiffe_sequence and spiffe_refresh_hint) through go-spiffe's
//     federation handler, over TLS authenticated either with the server's
//     own X509-SVID, spiffe://<trust domain>/spire/server (profile
//     https_spiffe), or with a Web PKI certificate read from files and
//     reloaded (https_web).
//   - Manager keeps one refresher per federation relationship (those of the
//     server configuration, which take precedence, and those created through
//     the trustdomain API, read from the datastore): each fetches its peer's
//     bundle with go-spiffe's FetchBundle at the peer's refresh hint (bounded,
//     jittered, with backoff on failure), authenticating an https_spiffe
//     endpoint by the peer's bundle stored now (so a rotated peer CA, once
//     published in that bundle, is followed), and stores the bundle only when
//     its content changed. An unreachable peer leaves its last bundle in place
//     and in use; each relationship's status (last success, last error, next
//     attempt, bundle age) is kept for the API, logs and metrics.
package federation
