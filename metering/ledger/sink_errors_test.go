package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tollgate/tollgate/internal/testkit"
)

// fullDiskStore is a real SQLite store whose database cannot grow past its
// current size: PRAGMA max_page_count makes SQLite fail every insert with
// SQLITE_FULL, exactly as a full disk does, while it still answers Ping.
// max_page_count is per connection, so the store keeps one.
func fullDiskStore(t *testing.T) (s *Store, setFull func(bool)) {
	t.Helper()
	s = mustUsageStore(t, "sqlite")
	s.db.SetMaxOpenConns(1)
	s.db.SetMaxIdleConns(1)
	ctx := context.Background()
	return s, func(full bool) {
		t.Helper()
		limit := 1 << 30
		if full {
			if err := s.db.QueryRowContext(ctx, "PRAGMA page_count").Scan(&limit); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.db.ExecContext(ctx, fmt.Sprintf("PRAGMA max_page_count = %d", limit)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriterWaitsOutAFullDisk: records that meet a full disk (SQLITE_FULL
// for many more than quarantineAfter attempts, the store answering Ping
// all along) wait in the spool and all reach the database once space
// returns; none is quarantined.
func TestWriterWaitsOutAFullDisk(t *testing.T) {
	s, setFull := fullDiskStore(t)
	var logs testkit.LogBuffer
	dir := t.TempDir()
	cfg := fastWriterConfig(dir)
	cfg.RetryMax = 2 * time.Millisecond
	cfg.Logger = slogTo(&logs)
	w := mustWriter(t, cfg, s)
	setFull(true)
	var ids []string
	for i := range 300 {
		id := fmt.Sprint("full-", i)
		ids = append(ids, id)
		w.Record(usageRecordN(id, i, usageDay.Add(time.Duration(i)*time.Second)))
	}
	writerEventually(t, 10*time.Second, func() bool { return w.Stats().Retries >= 4*quarantineAfter })
	if !strings.Contains(logs.String(), "full") {
		t.Fatalf("the store never failed with a full disk: %s", logs.String())
	}
	if st := w.Stats(); st.Quarantined != 0 {
		t.Fatalf("quarantined %d records for a full disk (stats %+v)", st.Quarantined, st)
	}
	setFull(false)
	mustFlush(t, w)
	assertAllOnce(t, s, ids)
	if st := w.Stats(); st.Quarantined != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v: want nothing quarantined or dropped", st)
	}
	if _, err := readQuarantine(dir); err != nil {
		t.Errorf("quarantine file: %v", err)
	}
}

func TestClassifyStoreErr(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want storeFault
	}{
		{&pgconn.PgError{Code: "53100"}, faultStore}, // disk full
		{&pgconn.PgError{Code: "08006"}, faultStore}, // connection failure
		{&pgconn.PgError{Code: "57P01"}, faultStore}, // admin shutdown
		{&pgconn.PgError{Code: "55P03"}, faultStore}, // lock timeout
		{&pgconn.PgError{Code: "40P01"}, faultStore}, // deadlock
		{&pgconn.PgError{Code: "22001"}, faultRecord},
		{&pgconn.PgError{Code: "23514"}, faultRecord},
		{&pgconn.PgError{Code: "42703"}, faultRecord},
		{syscall.ENOSPC, faultStore},
		{context.DeadlineExceeded, faultStore},
		{errors.New("something else"), faultUnknown},
	} {
		if got := classifyStoreErr(fmt.Errorf("metering insert: %w", tc.err)); got != tc.want {
			t.Errorf("%v: got %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestWriterLogsRecordsItCannotKeep: when the spool cannot take records
// (full) and the store fails until Close gives up, every record is logged
// whole, once as held in memory only and once as dropped, so it can be
// recovered from the logs; none disappears silently.
func TestWriterLogsRecordsItCannotKeep(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	flaky := &flakyInserter{next: s}
	flaky.down.Store(true)
	var logs testkit.LogBuffer
	cfg := fastWriterConfig(t.TempDir())
	cfg.MaxSpoolBytes = 1 // no record fits
	cfg.Logger = slogTo(&logs)
	w, err := NewWriter(cfg, flaky)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := range 5 {
		r := usageRecordN(fmt.Sprint("lost-", i), i, usageDay)
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want[r.RequestID] = string(b)
		w.Record(r)
	}
	writerEventually(t, 5*time.Second, func() bool { return flaky.fails.Load() >= 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Close(ctx); err == nil {
		t.Fatal("Close with the store down returned nil")
	}
	held, dropped := map[string]string{}, map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var e struct {
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
			Record    string `json:"record"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch e.Msg {
		case "metering: spool append failed; record held in memory only":
			held[e.RequestID] = e.Record
		case "metering: usage record dropped":
			dropped[e.RequestID] = e.Record
		}
	}
	for id, rec := range want {
		if held[id] != rec {
			t.Errorf("%s: held-in-memory log carries %q, want the record %s", id, held[id], rec)
		}
		if dropped[id] != rec {
			t.Errorf("%s: dropped log carries %q, want the record %s", id, dropped[id], rec)
		}
	}
	if st := w.Stats(); st.Dropped != uint64(len(want)) || st.Unspooled != uint64(len(want)) {
		t.Errorf("stats %+v: want %d unspooled and dropped", st, len(want))
	}
}
