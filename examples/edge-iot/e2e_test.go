package edgeiot

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// TestStoreAndForward runs the example against real sigil-server and
// sigil-agent processes, each service identified by its binary's path
// (unix:path selectors). The sensor sends N readings; the cloud is killed
// mid-way, the gateway is killed (crash) and restarted while readings are
// still arriving, and the cloud comes back only after the sensor is done.
// The cloud must end up with exactly the N readings: none lost, none
// stored twice.
func TestStoreAndForward(t *testing.T) {
	const n = 120
	bins := testutil.Build(t, "./examples/edge-iot/sensor", "./examples/edge-iot/gateway", "./examples/edge-iot/cloud")
	sensorBin, gatewayBin, cloudBin := bins[0], bins[1], bins[2]

	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/edge/node-1", "")
	cfg.DiscoverWorkloadPath = true
	agent := testutil.StartAgent(t, cfg)
	node := srv.ID("/edge/node-1")
	adm := srv.Admin(t)
	adm.CreateEntry(t, srv.ID("/sensor/sensor-1"), node, "unix:path:"+sensorBin)
	adm.CreateEntry(t, srv.ID("/edge/gateway"), node, "unix:path:"+gatewayBin)
	adm.CreateEntry(t, srv.ID("/cloud/ingest"), node, "unix:path:"+cloudBin)

	dir := t.TempDir()
	env := []string{"SPIFFE_ENDPOINT_SOCKET=" + agent.SocketAddr()}
	cloudPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	gwPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cloudCmd := testutil.Command{Name: "cloud", Path: cloudBin, Env: env, LogPath: filepath.Join(dir, "cloud.log"),
		Args: []string{"-listen", "127.0.0.1:" + strconv.Itoa(cloudPort), "-data", filepath.Join(dir, "cloud"), "-gatewayPrefix", "/edge/gateway"}}
	gwCmd := testutil.Command{Name: "gateway", Path: gatewayBin, Env: env, LogPath: filepath.Join(dir, "gateway.log"),
		Args: []string{"-listen", "127.0.0.1:" + strconv.Itoa(gwPort), "-data", filepath.Join(dir, "gateway"),
			"-cloud", "https://127.0.0.1:" + strconv.Itoa(cloudPort), "-cloudID", srv.ID("/cloud/ingest").String(), "-retryMax", "500ms", "-batch", "10"}}
	sensorCmd := testutil.Command{Name: "sensor", Path: sensorBin, Env: env, LogPath: filepath.Join(dir, "sensor.log"),
		Args: []string{"-name", "sensor-1", "-count", strconv.Itoa(n), "-interval", "10ms",
			"-gateway", "https://127.0.0.1:" + strconv.Itoa(gwPort), "-gatewayID", srv.ID("/edge/gateway").String()}}

	const wait = testutil.ReadyTimeout
	cloud := testutil.Start(t, cloudCmd)
	cloud.WaitForLog(t, "Cloud ingest listening", wait)
	gw := testutil.Start(t, gwCmd)
	gw.WaitForLog(t, "Gateway listening", wait)
	sensor := testutil.Start(t, sensorCmd)

	// Partition the gateway from the cloud a quarter of the way in...
	sensor.WaitForLog(t, "id="+readingID(n/4), wait)
	cloud.Kill()
	// ...and crash the gateway two thirds of the way in.
	sensor.WaitForLog(t, "id="+readingID(2*n/3), wait)
	gw.Kill()
	if !strings.Contains(gw.Logs(), "Cloud unreachable; keeping readings buffered") {
		t.Error("the gateway never found the cloud unreachable: the partition was not exercised")
	}
	gw = testutil.Start(t, gwCmd)
	gw.WaitForLog(t, "Gateway listening", wait)

	select {
	case <-sensor.Done():
	case <-t.Context().Done():
	}
	if err := sensor.Err(); err != nil {
		t.Fatalf("sensor: %v", err)
	}
	if !strings.Contains(sensor.Logs(), "Gateway did not acknowledge the reading; retrying") {
		t.Error("the sensor never had to retry: the gateway crash was not exercised")
	}

	// The cloud comes back; the gateway drains its buffer.
	cloud = testutil.Start(t, cloudCmd)
	cloud.WaitForLog(t, "Cloud ingest listening", wait)
	gw.WaitForLog(t, "pending_bytes=0", wait)
	if err := cloud.Stop(); err != nil {
		t.Fatalf("cloud: %v", err)
	}

	f, err := os.Open(filepath.Join(dir, "cloud", "readings.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	lines := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct {
			ID   string `json:"id"`
			From string `json:"from"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("cloud store line %d: %v", lines+1, err)
		}
		if r.From != srv.ID("/sensor/sensor-1").String() {
			t.Errorf("reading %s from %q", r.ID, r.From)
		}
		seen[r.ID]++
		lines++
	}
	if lines != n {
		t.Errorf("cloud stored %d readings, want exactly %d", lines, n)
	}
	for i := 1; i <= n; i++ {
		if c := seen[readingID(i)]; c != 1 {
			t.Errorf("reading %s stored %d times", readingID(i), c)
		}
	}
}

func readingID(seq int) string { return fmt.Sprintf("sensor-1-%08d", seq) }
