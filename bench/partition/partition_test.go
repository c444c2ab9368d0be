// Package partition measures how long a real sigil-agent, cut off from its
// real sigil-server by a network partition (network namespaces, see
// testutil.Partition), takes after the heal to deliver an entry created
// while it was cut off. Needs root, ip and nft (skips otherwise).
//
//	go test ./bench/partition -run '^$' -bench . -benchtime 3x
//
// Each iteration holds the partition for holdFor (not timed), heals, and
// times heal -> the new entry's SVID on the workload's open Workload API
// stream. Reported as ms/reconnect.
package partition

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

const holdFor = time.Second

func BenchmarkReconnectAfterHeal(b *testing.B) {
	for _, mode := range []string{"link-down", "silent-drop", "silent-drop+server-restart"} {
		b.Run(mode, func(b *testing.B) {
			p := testutil.NewPartition(b)
			srv := testutil.StartServer(b, testutil.ServerConfig{BindAddress: p.ServerIP, BindPort: 8081, LogLevel: "INFO"}, p.Wrap(p.ServerNS)...)
			cfg := testutil.AgentFor(b, srv, "/device/bench", "")
			cfg.LogLevel = "INFO"
			agent := testutil.StartAgent(b, cfg, p.Wrap(p.AgentNS)...)
			adm := srv.Admin(b)
			parent := srv.ID("/device/bench")
			uid := "unix:uid:" + strconv.Itoa(os.Getuid())
			base := srv.ID("/w/base")
			adm.CreateEntry(b, base, parent, uid)
			updates := testutil.WatchIDs(b, agent.SocketAddr())
			testutil.WaitForID(b, updates, base, time.Minute)

			var total time.Duration
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				switch mode {
				case "link-down":
					p.LinkDown(b)
				default:
					p.Drop(b)
				}
				if mode == "silent-drop+server-restart" {
					srv.Stop(b)
					srv.Start(b)
				}
				id := srv.ID("/w/" + strconv.Itoa(i))
				adm.CreateEntry(b, id, parent, uid)
				time.Sleep(holdFor)
				b.StartTimer()
				healed := time.Now()
				p.Heal(b)
				testutil.WaitForID(b, updates, id, time.Minute)
				total += time.Since(healed)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/reconnect")
		})
	}
}
