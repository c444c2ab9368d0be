package cache_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// BenchmarkSetJWTSVIDPersisted: caching one more JWT-SVID (what each mint
// costs the agent besides the server call) when the cache already holds
// held: persisted, the whole file is rewritten and synced; in memory (the
// baseline, and what the agent did before JWT-SVIDs were persisted), a map
// insert.
func BenchmarkSetJWTSVIDPersisted(b *testing.B) {
	for _, bc := range []struct {
		held      int
		persisted bool
	}{{0, false}, {999, false}, {0, true}, {100, true}, {999, true}} {
		b.Run(fmt.Sprintf("persisted=%v/held=%d", bc.persisted, bc.held), func(b *testing.B) {
			n := bc.held
			dir := ""
			if bc.persisted {
				dir = filepath.Join(b.TempDir(), "d")
			}
			clk := clock.NewFake(time.Now().Truncate(time.Second))
			c := cache.New(cache.Config{Dir: dir, TrustDomain: td, Clock: clk, MaxJWTSVIDsPerID: 2000})
			if err := c.SetEntries([]*cache.Entry{ent("1", "/one", clk.Now(), uid0)}); err != nil {
				b.Fatal(err)
			}
			key := testca.NewJWTKey(b, "k")
			tok, err := key.SignJWTSVIDAt(id("/one"), []string{"audience-of-typical-length.example.org"}, clk.Now(), 5*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			j := cache.JWTSVID{Token: tok, IssuedAt: clk.Now(), ExpiresAt: clk.Now().Add(5 * time.Minute)}
			for i := range n {
				c.SetJWTSVID(id("/one"), []string{fmt.Sprint("held-", i)}, j)
			}
			b.ResetTimer()
			for i := range b.N {
				c.SetJWTSVID(id("/one"), []string{fmt.Sprint("new-", i%2)}, j)
			}
			if bc.persisted {
				fi, err := os.Stat(c.JWTPath())
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(fi.Size()), "file-bytes")
			}
		})
	}
}
