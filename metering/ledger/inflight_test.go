package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// crash stops w the way kill -9 would leave its files: its goroutines end
// without a last fsync, flush or end line, and the spool lock is let go.
func crash(w *Writer) {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.closeOnce.Do(func() {
		w.cancel()
		<-w.done
		close(w.syncStop)
		<-w.syncDone
		w.sp.release()
	})
}

// startRecord is a request as the proxy knows it when it is sent upstream.
func startRecord(id string) *metering.Record {
	return &metering.Record{
		RequestID: id, Start: usageDay.Add(time.Hour), Workspace: "ws", Project: "p", User: "u",
		TokenID: "tok1", Harness: "claude-code", Dialect: "anthropic", Operation: "chat", Path: "/v1/messages",
		Provider: "anthropic", CredTier: "project", CredentialID: "cred1", Stream: true, ModelRequest: "claude-x",
	}
}

// progressRecord is r with the usage a stream showed so far, priced.
func progressRecord(r *metering.Record, input int64) *metering.Record {
	p := *r
	p.Status, p.ModelServed, p.UpstreamID = 200, "claude-x-1", "msg_"+r.RequestID
	p.Usage = &metering.Usage{InputUncached: input}
	p.CostMicroUSD, p.PriceVersion = costPtr(input/10), "v1"
	p.Duration = 3 * time.Second
	return &p
}

func finalRecord(r *metering.Record) *metering.Record {
	f := *r
	f.Status, f.Outcome, f.Source = 200, metering.OutcomeOK, metering.SourceUpstream
	f.Usage, f.CostMicroUSD, f.PriceVersion = &metering.Usage{InputUncached: 40, Output: 7}, costPtr(9), "v1"
	return &f
}

type rowView struct {
	outcome, source string
	input           sql.NullInt64
	cost            sql.NullInt64
	status          int
	upstreamID      string
}

func rowOf(t *testing.T, s *Store, id string) rowView {
	t.Helper()
	var v rowView
	err := s.db.QueryRowContext(context.Background(), `SELECT outcome, usage_source, input_uncached, cost_micro_usd, status, upstream_id FROM usage_records WHERE request_id = $1`, id).
		Scan(&v.outcome, &v.source, &v.input, &v.cost, &v.status, &v.upstreamID)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	return v
}

func journalFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, journalPrefix+"*"+journalSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func missingUsageDaily(t *testing.T, s *Store) int64 {
	t.Helper()
	var n int64
	if err := s.db.QueryRowContext(context.Background(), `SELECT CAST(COALESCE(SUM(missing_usage_requests), 0) AS BIGINT) FROM usage_daily`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRequestsInFlightAtACrashAreRecordedOnce: a request begun and never
// ended becomes one interrupted record (missing, or partial with the
// progress usage and cost), a request whose record was spooled keeps that
// record whether or not its end line was written, and restarting again,
// even with the journal files still there, adds nothing.
func TestRequestsInFlightAtACrashAreRecordedOnce(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			dir := t.TempDir()
			cfg := fastWriterConfig(dir)
			cfg.SyncInterval = time.Hour // end lines only where the test writes them
			w1 := mustWriter(t, cfg, s)
			open, partial, spooled, ended := startRecord("open"), startRecord("partial"), startRecord("spooled"), startRecord("ended")
			for _, r := range []*metering.Record{open, partial, spooled, ended} {
				w1.Begin(r)
			}
			w1.Progress(progressRecord(partial, 100))
			w1.Progress(progressRecord(partial, 120)) // the last values win
			w1.Record(finalRecord(ended))
			if err := w1.jr.writeEnds(w1.jr.takeEnds()); err != nil {
				t.Fatal(err)
			}
			rejected := usageRecordN("rejected", 0, usageDay)
			rejected.Outcome, rejected.Source, rejected.Usage, rejected.CostMicroUSD = metering.OutcomeRejected, metering.SourceNone, nil, nil
			w1.Record(rejected)
			// Spooled, but killed before a tick writes its end line.
			w1.Record(finalRecord(spooled))
			crash(w1)

			saved := map[string][]byte{}
			for _, p := range journalFiles(t, dir) {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				saved[p] = b
			}
			w2 := mustWriter(t, fastWriterConfig(dir), s)
			mustFlush(t, w2)
			check := func(round string) {
				t.Helper()
				if v := rowOf(t, s, "open"); v.outcome != metering.OutcomeInterrupted || v.source != metering.SourceMissing || v.input.Valid || v.cost.Valid {
					t.Errorf("%s: open request: %+v, want interrupted/missing with NULL tokens and cost", round, v)
				}
				if v := rowOf(t, s, "partial"); v.outcome != metering.OutcomeInterrupted || v.source != metering.SourcePartial ||
					v.input.Int64 != 120 || v.cost.Int64 != 12 || v.status != 200 || v.upstreamID != "msg_partial" {
					t.Errorf("%s: request with progress: %+v, want interrupted/partial, 120 input, cost 12, status 200", round, v)
				}
				for _, id := range []string{"spooled", "ended"} {
					if v := rowOf(t, s, id); v.outcome != metering.OutcomeOK || v.input.Int64 != 40 {
						t.Errorf("%s: %s: %+v, want its final record", round, id, v)
					}
				}
				raw, daily := usageSums(t, s)
				if raw.requests != 5 || raw != daily {
					t.Errorf("%s: raw %+v, daily %+v, want 5 requests and equal sums", round, raw, daily)
				}
				if n := missingUsageDaily(t, s); n != 2 {
					t.Errorf("%s: usage_daily missing_usage_requests = %d, want 2 (both interrupted)", round, n)
				}
			}
			check("first restart")
			if files := journalFiles(t, dir); len(files) != 1 {
				t.Errorf("journal files after the restart settled: %v, want this process's one", files)
			}

			// The second process dies after inserting the interrupted
			// records but before deleting the journal: the third adds
			// nothing.
			crash(w2)
			for p, b := range saved {
				if err := os.WriteFile(p, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			w3 := mustWriter(t, fastWriterConfig(dir), s)
			mustFlush(t, w3)
			check("second restart")
			if st := w3.Stats(); st.Inserted != 0 {
				t.Errorf("second restart inserted %d rows, want 0", st.Inserted)
			}
		})
	}
}

// TestCleanCloseLeavesNoJournal: with every request ended, Close deletes
// the journal; a request still open keeps it for the next start.
func TestCleanCloseLeavesNoJournal(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	w := mustWriter(t, fastWriterConfig(dir), s)
	r := startRecord("a")
	w.Begin(r)
	w.Record(finalRecord(r))
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if files := journalFiles(t, dir); len(files) != 0 {
		t.Errorf("journal files after a clean close: %v", files)
	}
	w = mustWriter(t, fastWriterConfig(dir), s)
	w.Begin(startRecord("b"))
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	w = mustWriter(t, fastWriterConfig(dir), s)
	mustFlush(t, w)
	if v := rowOf(t, s, "b"); v.outcome != metering.OutcomeInterrupted {
		t.Errorf("request open at close: %+v, want interrupted", v)
	}
	if n := usageRowCount(t, s, "a"); n != 1 {
		t.Errorf("ended request: %d rows", n)
	}
}

// TestJournalCompactionKeepsOnlyOpenRequests: a long stream open across
// thousands of short requests is carried into each new file, and the files
// it superseded go once it is synced.
func TestJournalCompactionKeepsOnlyOpenRequests(t *testing.T) {
	dir := t.TempDir()
	j, _, err := openJournal(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	j.compactAt = 16 << 10
	long := startRecord("long")
	if err := j.begin(long); err != nil {
		t.Fatal(err)
	}
	if err := j.progress(progressRecord(long, 5)); err != nil {
		t.Fatal(err)
	}
	maxSize := int64(0)
	for i := range 2000 {
		r := startRecord(fmt.Sprintf("short-%d", i))
		if err := j.begin(r); err != nil {
			t.Fatal(err)
		}
		j.end(r.RequestID)
		if i%10 == 9 {
			if err := j.writeEnds(j.takeEnds()); err != nil {
				t.Fatal(err)
			}
			if err := j.sync(); err != nil {
				t.Fatal(err)
			}
			maxSize = max(maxSize, j.size)
		}
		if i == 1000 {
			if err := j.progress(progressRecord(long, 9)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if j.seq < 10 {
		t.Errorf("%d journal files in 2000 requests at a 16 KiB bound: no compaction", j.seq)
	}
	if maxSize > j.compactAt+16<<10 {
		t.Errorf("active journal reached %d bytes; bound %d", maxSize, j.compactAt)
	}
	files := journalFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("journal files: %v, want only the active one", files)
	}
	var st journalReplayStats
	recs, err := readJournal(files, &st, func(string, int64, bool, error) {})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].RequestID != "long" || recs[0].Usage == nil || recs[0].Usage.InputUncached != 9 {
		t.Fatalf("open after compactions: %+v, want long with its last progress", recs)
	}
	if err := j.close(nil); err != nil {
		t.Fatal(err)
	}
}

// TestJournalTornAndCorruptLines: a torn last line (a kill mid-write) and a
// corrupt line are skipped and counted; the rest replays.
func TestJournalTornAndCorruptLines(t *testing.T) {
	dir := t.TempDir()
	j, _, err := openJournal(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := j.begin(startRecord(id)); err != nil {
			t.Fatal(err)
		}
	}
	path := j.path
	j.f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	// b's line corrupt, c's torn.
	lines[1] = strings.Replace(lines[1], `"b"`, `"x"`, 1)
	lines[2] = lines[2][:len(lines[2])/2]
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	var bad []string
	j2, st, err := openJournal(dir, func(_ string, off int64, torn bool, err error) {
		bad = append(bad, fmt.Sprintf("%d torn=%v %v", off, torn, err))
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.torn != 1 || st.corrupt != 1 || len(bad) != 2 {
		t.Errorf("stats %+v, reported %v; want one torn, one corrupt", st, bad)
	}
	recs, ok := j2.interrupted()
	if !ok || len(recs) != 1 || recs[0].RequestID != "a" || recs[0].Outcome != metering.OutcomeInterrupted || recs[0].Source != metering.SourceMissing || recs[0].Usage != nil {
		t.Errorf("interrupted = %+v, want a alone, interrupted/missing", recs)
	}
	if j2.seq <= j.seq {
		t.Errorf("new journal file %d does not follow the old %d", j2.seq, j.seq)
	}
	j2.close(nil)
}

// BenchmarkWriterBeginRecord is a request's whole metering cost on the
// request path with the in-flight journal: Begin (start line), Record
// (spool line, end noted), and the end lines the sync loop writes per
// tick. Compare BenchmarkWriterRecord, the same without Begin.
func BenchmarkWriterBeginRecord(b *testing.B) {
	cfg := fastWriterConfig(b.TempDir())
	cfg.QueueSize = 1 << 16
	w := mustWriter(b, cfg, discardInserter{})
	starts := make([]*metering.Record, 1024)
	finals := make([]*metering.Record, len(starts))
	for i := range starts {
		starts[i] = startRecord(fmt.Sprintf("bench-%d", i))
		finals[i] = finalRecord(starts[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w.Begin(starts[i%len(starts)])
		w.Record(finals[i%len(finals)])
	}
	b.StopTimer()
	if st := w.Stats(); st.Dropped != 0 {
		b.Fatalf("dropped %d", st.Dropped)
	}
}

// BenchmarkWriterProgress is one progress line of an open stream.
func BenchmarkWriterProgress(b *testing.B) {
	w := mustWriter(b, fastWriterConfig(b.TempDir()), discardInserter{})
	r := startRecord("bench")
	w.Begin(r)
	p := progressRecord(r, 1000)
	b.ReportAllocs()
	for b.Loop() {
		w.Progress(p)
	}
}

// BenchmarkJournalBeginEnd is the journal's own cost per request: the
// start line, the end noted, and its share of a tick's end lines (one
// write per 64 requests here).
func BenchmarkJournalBeginEnd(b *testing.B) {
	j, _, err := openJournal(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.close(nil)
	starts := make([]*metering.Record, 1024)
	for i := range starts {
		starts[i] = startRecord(fmt.Sprintf("req_06h3lc03kljb3t9jfufqhk%04d", i))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := starts[i%len(starts)]
		if err := j.begin(r); err != nil {
			b.Fatal(err)
		}
		j.end(r.RequestID)
		if i%64 == 63 {
			if err := j.writeEnds(j.takeEnds()); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// realisticStart is a start record with identifiers of the lengths
// tollgate issues (startRecord's are short): its line is about 780 bytes.
func realisticStart(i int) *metering.Record {
	r := startRecord(fmt.Sprintf("req_06h3lc03kljb3t9jfufqhk%04d", i))
	r.Workspace, r.Project, r.User = "ws_01JD8X3K9QZ7V2M4N6P8R0T2W4", "pj_01JD8X3K9QZ7V2M4N6P8R0T2W4", "alice@example.com"
	r.TokenID, r.CredentialID = "tok_01JD8X3K9QZ7V2M4N6P8R0T2W4", "cred_01JD8X3K9QZ7V2M4N6P8R0T2W4"
	r.Session, r.ModelRequest = "5f0c6f2e-8a51-4c1d-9a2b-3f7e5d9c1b20", "claude-sonnet-4-5-20250929"
	r.Start = r.Start.Add(187264344 * time.Nanosecond)
	return r
}

// BenchmarkJournalBegin is a start line alone (encode, keep, write(2)),
// with realistic identifiers; the ends are written outside the timer.
func BenchmarkJournalBegin(b *testing.B) {
	j, _, err := openJournal(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer j.close(nil)
	starts := make([]*metering.Record, 1024)
	for i := range starts {
		starts[i] = realisticStart(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r := starts[i%len(starts)]
		if err := j.begin(r); err != nil {
			b.Fatal(err)
		}
		j.end(r.RequestID)
		if i%1024 == 1023 {
			b.StopTimer()
			if err := j.writeEnds(j.takeEnds()); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
}

// TestOpenRequestKeepsOneLineOfItsSize: an open request's start and
// progress lines are kept at about their length, not in buffers grown by
// doubling (S4 holds thousands of open streams).
func TestOpenRequestKeepsOneLineOfItsSize(t *testing.T) {
	j, _, err := openJournal(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close(nil)
	r := realisticStart(1)
	if err := j.begin(r); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := j.progress(progressRecord(r, int64(10+i*1000))); err != nil {
			t.Fatal(err)
		}
	}
	o := j.open[r.RequestID]
	for name, b := range map[string][]byte{"start": o.start, "progress": o.progress} {
		if len(b) < 700 || cap(b) > len(b)+len(b)/4 {
			t.Errorf("%s line: %d bytes kept in a buffer of %d", name, len(b), cap(b))
		}
	}
}
