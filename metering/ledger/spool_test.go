package ledger

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

func spoolLine(tb testing.TB, r *metering.Record) []byte {
	tb.Helper()
	line, err := appendSpoolLine(nil, r)
	if err != nil {
		tb.Fatal(err)
	}
	return line
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

// jsonSpoolLine is a spool line as encoding/json writes it, the encoder the
// spool used before appendSpoolLine.
func jsonSpoolLine(tb testing.TB, r *metering.Record) ([]byte, error) {
	tb.Helper()
	var buf bytes.Buffer
	buf.WriteString("00000000 ")
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	c := crc32.Checksum(b[spoolCRCLen:len(b)-1], spoolCRC)
	hex.Encode(b[:8], []byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
	return b, nil
}

// fullRecord sets every Record field, so a field added to Record but not to
// appendSpoolLine fails TestSpoolLineMatchesEncodingJSON.
func fullRecord() *metering.Record {
	r := usageRecordN("full", 2, time.Date(2026, 5, 4, 13, 14, 15, 123456789, time.FixedZone("", -7*3600)))
	r.Session, r.EventOverflow, r.Unpriced, r.Injected, r.Stream = "sess", true, true, true, true
	r.ServiceTier = "flex"
	r.ModelSent, r.Reserved, r.ReservedMicroUSD, r.Governance = "alias-target", true, 2810000, "budget"
	r.Usage = &metering.Usage{InputUncached: 1, CacheRead: 2, CacheWrite5m: 3, CacheWrite1h: 4, InputOther: 5, Output: 6, Reasoning: 7, WebSearchRequests: 8}
	r.CostMicroUSD = costPtr(-42)
	r.Allotted = []metering.Hold{{Allotment: "allot:r-1:b-1:0:1", Amount: 5}, {Allotment: "allot:r-1:b-2:0:2", Amount: 7}}
	r.Attempts = []metering.Attempt{
		{CredentialID: "c-1", Provider: "anthropic", Status: 529, Error: "status 529 <&>", Duration: 3},
		{CredentialID: "c-\"2\"", Provider: "deepseek-anthropic", Error: "header_timeout", Duration: 7, MayBill: true},
		{CredentialID: "c-3", Provider: "anthropic", Status: 200, Duration: 4},
	}
	return r
}

func TestSpoolLineMatchesEncodingJSON(t *testing.T) {
	full := fullRecord()
	v := reflect.ValueOf(full).Elem()
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Errorf("fullRecord leaves %s unset", v.Type().Field(i).Name)
		}
	}
	sparse := usageRecordN("sparse", 3, usageDay) // no usage, no cost
	odd := usageRecordN("odd \"\\ <&> \x00\x1f\x7f \b\f\n\r\t \u2028\u2029 \xff\xc3 é 🦊", 1, usageDay)
	odd.Project = "\xed\xa0\x80" // a UTF-16 surrogate: invalid UTF-8
	for _, tc := range []struct {
		name string
		r    *metering.Record
	}{{"EveryField", full}, {"NullUsageAndCost", sparse}, {"EscapedText", odd}} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := jsonSpoolLine(t, tc.r)
			if err != nil {
				t.Fatal(err)
			}
			if got := spoolLine(t, tc.r); !bytes.Equal(got, want) {
				t.Errorf("spool line:\n got %s\nwant %s", got, want)
			}
		})
	}
}

func TestSpoolLineRejectsUnencodableStart(t *testing.T) {
	r := usageRecordN("y10k", 1, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))
	if _, err := appendSpoolLine(nil, r); err == nil {
		t.Error("a start time encoding/json rejects was encoded")
	}
}

// FuzzSpoolLine checks that a line replays to the record encoding/json
// would have given back, for any text (invalid UTF-8, NUL, quotes, control
// characters, U+2028) and any time, and fails exactly when encoding/json does.
func FuzzSpoolLine(f *testing.F) {
	f.Add("id", "proj", "", "model", int64(1777900000), int64(5), 0, int64(1), false)
	f.Add("a\"b\\c", "\x00\x01\x1f", "\u2028\u2029", "\xff\xfe\xc3", int64(-62135596800), int64(999999999), -1439, int64(-1), true)
	f.Add("<&>", "\xed\xa0\x80", "\t\n\r\b\f", "\x7f é", int64(253402300800), int64(0), 1439, int64(1)<<62, true)
	f.Fuzz(func(t *testing.T, id, project, session, model string, sec, nsec int64, offMin int, n int64, flag bool) {
		r := usageRecordN("r"+id, int(n&0xff), time.Unix(sec, nsec).In(time.FixedZone("", offMin%1440*60)))
		r.Project, r.Session, r.ModelServed, r.UpstreamID = project, session, model, id+model
		r.Duration, r.BytesOut, r.Status = time.Duration(n), -n, int(n>>1)
		r.EventOverflow, r.Unpriced = flag, !flag
		want, wantErr := jsonSpoolLine(t, r)
		got, err := appendSpoolLine(nil, r)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("encode error %v, encoding/json's %v", err, wantErr)
		}
		if err != nil {
			return
		}
		dec, err := decodeSpoolLine(got[:len(got)-1])
		if err != nil {
			t.Fatalf("decode %q: %v", got, err)
		}
		var viaJSON metering.Record
		if err := json.Unmarshal(want[spoolCRCLen:], &viaJSON); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*dec, viaJSON) {
			t.Errorf("replayed record differs from encoding/json's round trip:\n got %+v\nwant %+v", *dec, viaJSON)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("spool line:\n got %q\nwant %q", got, want)
		}
	})
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
	var logs testkit.LogBuffer
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

// BenchmarkSpoolLine compares appendSpoolLine with the encoding/json
// encoder it replaced, on Record's request path.
func BenchmarkSpoolLine(b *testing.B) {
	r := fullRecord()
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendSpoolLine(buf[:0], r)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		for b.Loop() {
			buf.Reset()
			enc.Encode(r)
		}
	})
}
