package metering

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func spoolLine(tb testing.TB, r *Record) []byte {
	tb.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	line, err := encodeSpoolLine(&buf, enc, r)
	if err != nil {
		tb.Fatal(err)
	}
	return append([]byte(nil), line...)
}

func TestSpoolLineRoundTrip(t *testing.T) {
	r := usageRecordN("rt", 2, usageDay.Add(90*time.Minute))
	r.Session = "s"
	line := spoolLine(t, r)
	if line[len(line)-1] != '\n' || line[8] != ' ' {
		t.Fatalf("line shape: %q", line)
	}
	got, err := decodeSpoolLine(line[:len(line)-1])
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(got)
	if !bytes.Equal(a, b) {
		t.Errorf("round trip:\n got %s\nwant %s", b, a)
	}
	for _, tc := range []struct {
		name string
		line []byte
	}{
		{"FlippedByte", bytes.Replace(line[:len(line)-1], []byte(`"rt"`), []byte(`"ru"`), 1)},
		{"Truncated", line[:len(line)/2]},
		{"NoChecksum", line[spoolCRCLen : len(line)-1]},
		{"Empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeSpoolLine(tc.line); err == nil {
				t.Error("a damaged line was accepted")
			}
		})
	}
}

// writeSegment writes a previous process's segment file by hand.
func writeSegment(tb testing.TB, dir string, seq uint64, parts ...[]byte) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	p := filepath.Join(dir, spoolName(seq))
	if err := os.WriteFile(p, bytes.Join(parts, nil), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestWriterReplaySkipsTornAndCorruptLines(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := filepath.Join(t.TempDir(), "spool")
	rec := func(id string) []byte { return spoolLine(t, usageRecordN(id, 0, usageDay)) }
	torn := rec("torn")
	// Segment 1: a crash mid-append left half a line at the end.
	writeSegment(t, dir, 1, rec("a"), rec("b"), torn[:len(torn)-20])
	// Segment 2: a damaged line in the middle, good lines around it.
	bad := rec("bad")
	bad[20] ^= 0xff
	seg2 := writeSegment(t, dir, 2, rec("c"), bad, rec("d"), []byte("garbage\n"))
	// Segment 3: an oversized line (no newline for > maxSpoolLine) then a good one.
	writeSegment(t, dir, 3, bytes.Repeat([]byte("x"), maxSpoolLine+10), []byte("\n"), rec("e"))
	var logs logBuf
	cfg := fastWriterConfig(dir)
	cfg.Logger = slogTo(&logs)
	w := mustWriter(t, cfg, s)
	mustFlush(t, w)
	assertAllOnce(t, s, []string{"a", "b", "c", "d", "e"})
	st := w.Stats()
	if st.TornLines != 1 || st.BadLines != 3 {
		t.Errorf("torn %d bad %d, want 1 and 3", st.TornLines, st.BadLines)
	}
	// A torn tail is expected after a crash: the segment is done. Corrupt
	// lines are not: that segment is kept aside for a human.
	if _, err := os.Stat(seg2 + spoolBad); err != nil {
		t.Errorf("corrupt segment not kept as %s: %v", spoolBad, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"+spoolSuffix))
	if len(left) != 0 {
		t.Errorf("segments left after replay: %v", left)
	}
	if !strings.Contains(logs.String(), "torn last spool line skipped") || !strings.Contains(logs.String(), "unreadable spool line skipped") {
		t.Errorf("logs do not report the skipped lines:\n%s", logs.String())
	}
}

func TestWriterContinuesSequenceAfterRestart(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := filepath.Join(t.TempDir(), "spool")
	writeSegment(t, dir, 41, spoolLine(t, usageRecordN("old", 0, usageDay)))
	w := mustWriter(t, fastWriterConfig(dir), s)
	w.Record(usageRecordN("new", 1, usageDay))
	w.sp.mu.Lock()
	got := w.sp.active.seq
	w.sp.mu.Unlock()
	if got != 42 {
		t.Errorf("new segment seq: %d, want 42 (after the previous process's 41)", got)
	}
	mustFlush(t, w)
	assertAllOnce(t, s, []string{"new", "old"})
}

func TestSpoolRotatesAndDeletesCommittedSegments(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	cfg := fastWriterConfig(dir)
	cfg.SegmentBytes = 4 << 10 // a few records per segment
	w := mustWriter(t, cfg, s)
	var ids []string
	for i := range 100 {
		ids = append(ids, "rot-"+string(rune('a'+i%26))+strings.Repeat("x", i/26))
		w.Record(usageRecordN(ids[i], i, usageDay))
	}
	mustFlush(t, w)
	assertAllOnce(t, s, ids)
	writerEventually(t, 2*time.Second, func() bool { return w.Stats().Segments <= 1 })
	if st := w.Stats(); st.Spilled != 0 || st.Replayed != 0 {
		t.Errorf("stats %+v: rotation alone should need no replay", st)
	}
}
