package tpm

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKinds describes the node selectors of tpm attestation:
// pub_hash:<64 hex digits> (as the community SPIRE TPM plugin) and
// pcr:sha256:<index 0-23>:<64 hex digits> (Sigil's measured boot).
func SelectorKinds() []selector.Kind {
	return []selector.Kind{{
		Type:     Type,
		Producer: `NodeAttestor "tpm"`,
		Check:    checkSelector,
	}}
}

func checkSelector(v string) error {
	switch {
	case strings.HasPrefix(v, "pub_hash:"):
		if err := checkHash(strings.TrimPrefix(v, "pub_hash:")); err != nil {
			return fmt.Errorf("tpm selector %s: %w", clip.Quote(v), err)
		}
		return nil
	case strings.HasPrefix(v, "pcr:"):
		if _, _, err := parsePCRValue(strings.TrimPrefix(v, "pcr:")); err != nil {
			return fmt.Errorf("tpm selector %s: %w", clip.Quote(v), err)
		}
		return nil
	}
	return fmt.Errorf("tpm selector %s: want pub_hash:<EK public key hash> or pcr:sha256:<index>:<value>", clip.Quote(v))
}

// parsePCRValue parses "sha256:<index>:<hex>" (the form of pcr selectors
// after "pcr:" and of pcr_allowed entries), returning the index and the
// lowercase hex value.
func parsePCRValue(s string) (int, string, error) {
	bank, rest, ok := strings.Cut(s, ":")
	if !ok || bank != "sha256" {
		return 0, "", errors.New("want sha256:<index>:<value> (only the SHA-256 bank is supported)")
	}
	idx, val, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, "", errors.New("want sha256:<index>:<value>")
	}
	i, err := parsePCRIndex(idx)
	if err != nil {
		return 0, "", err
	}
	b, err := hex.DecodeString(val)
	if err != nil || len(b) != 32 || strings.ToLower(val) != val {
		return 0, "", errors.New("a SHA-256 PCR value is 64 lowercase hex digits")
	}
	return i, val, nil
}

// parsePCRIndex parses a PCR index 0..MaxPCR written in decimal without
// sign or leading zeros.
func parsePCRIndex(s string) (int, error) {
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i > MaxPCR || strconv.Itoa(i) != s {
		return 0, fmt.Errorf("a PCR index is 0 to %d", MaxPCR)
	}
	return i, nil
}

// pcrSelector is tpm:pcr:sha256:<index>:<hex>.
func pcrSelector(index int, value []byte) selector.Selector {
	return selector.Selector{Type: Type, Value: fmt.Sprintf("pcr:sha256:%d:%s", index, hex.EncodeToString(value))}
}

// pubHashSelector is tpm:pub_hash:<hash>.
func pubHashSelector(hash string) selector.Selector {
	return selector.Selector{Type: Type, Value: "pub_hash:" + hash}
}
