package wal

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestAppendPendingAckSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := w.Append(fmt.Appendf(nil, `{"id":"r%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	recs, next, err := w.Pending(3)
	if err != nil || len(recs) != 3 || string(recs[0]) != `{"id":"r0"}` {
		t.Fatalf("Pending(3) = %q, %v", recs, err)
	}
	if err := w.Ack(next); err != nil {
		t.Fatal(err)
	}
	w.Close()

	w, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	recs, _, err = w.Pending(10)
	if err != nil || len(recs) != 2 || string(recs[0]) != `{"id":"r3"}` || string(recs[1]) != `{"id":"r4"}` {
		t.Fatalf("after reopen Pending = %q, %v; want r3, r4", recs, err)
	}
}

func TestTornTailIsCutOff(t *testing.T) {
	for name, tail := range map[string]string{
		"no newline":   "0000abcd half",
		"bad checksum": "00000000 oops\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			w, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Append([]byte("good")); err != nil {
				t.Fatal(err)
			}
			w.Close()
			f, _ := os.OpenFile(filepath.Join(dir, "readings.wal"), os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString(tail)
			f.Close()
			w, err = Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			recs, _, err := w.Pending(10)
			if err != nil || len(recs) != 1 || string(recs[0]) != "good" {
				t.Fatalf("Pending = %q, %v; want only the good record", recs, err)
			}
			if err := w.Append([]byte("next")); err != nil {
				t.Fatal(err)
			}
			recs, _, _ = w.Pending(10)
			if len(recs) != 2 || string(recs[1]) != "next" {
				t.Fatalf("after append Pending = %q", recs)
			}
		})
	}
}

func TestRejectsBadRecordsAndAcks(t *testing.T) {
	w, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, p := range []string{"", "two\nlines", string(make([]byte, MaxRecord+1))} {
		if err := w.Append([]byte(p)); err == nil {
			t.Errorf("Append(%.20q) succeeded", p)
		}
	}
	if err := w.Ack(1); err == nil {
		t.Error("Ack past the end succeeded")
	}
}
