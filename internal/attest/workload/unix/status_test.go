package unix

import (
	"context"
	"os"
	"slices"
	"testing"
)

const sampleStatus = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nNgid:\t0\nPid:\t42\nPPid:\t1\nTracerPid:\t0\n" +
	"Uid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\nFDSize:\t64\nGroups:\t4 24 4294967295 \nNStgid:\t42\nNSpid:\t42\n"

func TestParseStatus(t *testing.T) {
	st, err := parseStatus([]byte(sampleStatus), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.uid != 1001 || st.gid != 2001 || !slices.Equal(st.groups, []uint32{4, 24, 4294967295}) {
		t.Fatalf("got %+v", st)
	}
	// No trailing newline, single IDs, no groups.
	st, err = parseStatus([]byte("Uid:\t7\nGid:\t8\nGroups:\t"), nil)
	if err != nil || st.uid != 7 || st.gid != 8 || len(st.groups) != 0 {
		t.Fatalf("got %+v, %v", st, err)
	}
	for name, bad := range map[string]string{
		"no uid":           "Gid:\t1\t1\t1\t1\n",
		"no gid":           "Uid:\t1\t1\t1\t1\n",
		"empty uid":        "Uid:\t\nGid:\t1\n",
		"negative uid":     "Uid:\t1\t-1\t1\t1\nGid:\t1\n",
		"uid overflow":     "Uid:\t1\t4294967296\t1\t1\nGid:\t1\n",
		"bad group":        "Uid:\t1\nGid:\t1\nGroups:\t4 x \n",
		"group overflow":   "Uid:\t1\nGid:\t1\nGroups:\t99999999999 \n",
		"uid in other key": "XUid:\t1\nGid:\t1\n",
	} {
		if _, err := parseStatus([]byte(bad), nil); err == nil {
			t.Errorf("%s: %q parsed", name, bad)
		}
	}
}

// TestReadStatusLongGroups: a status file larger than the pooled buffer
// (a process with many supplementary groups) is read whole.
func TestReadStatusLongGroups(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(dir+"/77", 0o755); err != nil {
		t.Fatal(err)
	}
	content := "Uid:\t5\t5\t5\t5\nGid:\t6\t6\t6\t6\nGroups:\t"
	var want []uint32
	for g := uint32(100000); g < 101000; g++ {
		content += formatID(g) + " "
		want = append(want, g)
	}
	content += "\n"
	if err := os.WriteFile(dir+"/77/status", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := readStatus(dir, 77, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.uid != 5 || st.gid != 6 || !slices.Equal(st.groups, want) {
		t.Fatalf("uid %d gid %d, %d groups", st.uid, st.gid, len(st.groups))
	}
	sels, err := New(Config{ProcDir: dir}).Attest(context.Background(), 77)
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) < 2+len(want) {
		t.Fatalf("%d selectors for %d groups", len(sels), len(want))
	}
}

func TestReadStatusDoesNotAllocate(t *testing.T) {
	pid := int32(os.Getpid())
	if _, err := readStatus("/proc", pid, nil); err != nil {
		t.Skip(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		var groups [32]uint32
		if _, err := readStatus("/proc", pid, groups[:0]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("readStatus allocates %.1f times per call", allocs)
	}
}

func BenchmarkAttest(b *testing.B) {
	a := New(Config{})
	pid := int32(os.Getpid())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(ctx, pid); err != nil {
			b.Fatal(err)
		}
	}
}
