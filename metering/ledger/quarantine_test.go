package ledger

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// refuseProject makes the real store refuse every record of project, the
// way a constraint the record violates does: a trigger raising ABORT on
// SQLite (SQLITE_CONSTRAINT), a CHECK constraint on PostgreSQL (23514).
// fix lifts it.
func refuseProject(t *testing.T, s *Store, project string) (fix func()) {
	t.Helper()
	ctx := context.Background()
	on, off := fmt.Sprintf(`CREATE TRIGGER test_refuse BEFORE INSERT ON usage_records WHEN NEW.project = '%s'
BEGIN SELECT RAISE(ABORT, 'project %s refused'); END`, project, project), `DROP TRIGGER test_refuse`
	if s.db.Engine == store.Postgres {
		on = fmt.Sprintf(`ALTER TABLE usage_records ADD CONSTRAINT test_refuse CHECK (project <> '%s')`, project)
		off = `ALTER TABLE usage_records DROP CONSTRAINT test_refuse`
	}
	if _, err := s.db.ExecContext(ctx, on); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := s.db.ExecContext(ctx, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestQuarantineImport: a record the store refuses for good is quarantined
// while every other one is written; import-quarantine keeps it (with the
// reason, by line) while the store still refuses it, a dry run changes
// nothing, and once the refusal is lifted it imports it exactly once, also
// when the same file is imported again.
func TestQuarantineImport(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			s := mustUsageStore(t, engine)
			fix := refuseProject(t, s, "refused")
			dir := t.TempDir()
			cfg := fastWriterConfig(dir)
			cfg.RetryMax = 2 * time.Millisecond
			w := mustWriter(t, cfg, s)
			var ids []string
			for i := range 40 {
				id := fmt.Sprint("q-", i)
				r := usageRecordN(id, i, usageDay.Add(time.Duration(i)*time.Minute))
				if i == 17 {
					r.Project = "refused"
				} else {
					ids = append(ids, id)
				}
				w.Record(r)
			}
			mustFlush(t, w)
			assertAllOnce(t, s, ids)
			if st := w.Stats(); st.Quarantined != 1 || st.Dropped != 0 {
				t.Fatalf("stats %+v: want exactly the refused record quarantined", st)
			}
			qpath := filepath.Join(dir, quarantineName)
			orig, err := os.ReadFile(qpath)
			if err != nil || !strings.Contains(string(orig), `"request_id":"q-17"`) {
				t.Fatalf("quarantine file: %q, %v", orig, err)
			}

			rep, err := ImportQuarantine(ctx, dir, s, false)
			if err != nil || rep.Imported != 0 || len(rep.Refused) != 1 || rep.Refused[0].Line != 1 ||
				rep.Refused[0].RequestID != "q-17" || !strings.Contains(rep.Refused[0].Reason, "refuse") {
				t.Fatalf("import while refused: %+v, %v", rep, err)
			}
			if b, _ := os.ReadFile(qpath); string(b) != string(orig) {
				t.Errorf("a still refused record changed the file: %q", b)
			}

			fix()
			rep, err = ImportQuarantine(ctx, dir, s, true)
			if err != nil || rep.Imported != 1 || rep.Present != 0 || usageRowCount(t, s, "q-17") != 0 {
				t.Fatalf("dry run: %+v, %v", rep, err)
			}
			rep, err = ImportQuarantine(ctx, dir, s, false)
			if err != nil || rep.Imported != 1 || len(rep.Refused) != 0 {
				t.Fatalf("import once fixed: %+v, %v", rep, err)
			}
			all := append(ids, "q-17")
			assertAllOnce(t, s, all)
			if _, err := os.Stat(qpath); !os.IsNotExist(err) {
				t.Errorf("quarantine file after a full import: %v; want it removed", err)
			}

			// The same file again (a restored copy, a second operator):
			// nothing is counted twice.
			if err := os.WriteFile(qpath, orig, 0o600); err != nil {
				t.Fatal(err)
			}
			rep, err = ImportQuarantine(ctx, dir, s, false)
			if err != nil || rep.Imported != 0 || rep.Present != 1 {
				t.Fatalf("second import: %+v, %v", rep, err)
			}
			assertAllOnce(t, s, all)
			if rep, err := ImportQuarantine(ctx, dir, s, false); err != nil || rep.Imported+rep.Present+len(rep.Refused) != 0 {
				t.Errorf("import without a quarantine file: %+v, %v", rep, err)
			}
		})
	}
}

// TestQuarantineImportKeepsUnreadableLines: a line that holds no record is
// reported by number and kept; the good ones around it are imported.
func TestQuarantineImportKeepsUnreadableLines(t *testing.T) {
	ctx := context.Background()
	s := mustUsageStore(t, "sqlite")
	dir := t.TempDir()
	var good []string
	for _, id := range []string{"u-1", "u-2"} {
		b, err := jsonLine(quarantineEntry{"earlier error", usageRecordN(id, 1, usageDay)})
		if err != nil {
			t.Fatal(err)
		}
		good = append(good, b)
	}
	body := good[0] + "{not json\n" + good[1]
	if err := os.WriteFile(filepath.Join(dir, quarantineName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := ImportQuarantine(ctx, dir, s, false)
	if err != nil || rep.Imported != 2 || len(rep.Refused) != 1 || rep.Refused[0].Line != 2 {
		t.Fatalf("import: %+v, %v", rep, err)
	}
	assertAllOnce(t, s, []string{"u-1", "u-2"})
	if b, _ := os.ReadFile(filepath.Join(dir, quarantineName)); string(b) != "{not json\n" {
		t.Errorf("kept lines: %q, want only the unreadable one", b)
	}
}

// TestQuarantineImportStopsOnAFullDisk: an import that meets a store
// outage stops with an error and keeps every line it did not import.
func TestQuarantineImportStopsOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	s, setFull := fullDiskStore(t)
	dir := t.TempDir()
	var body string
	for i := range 50 {
		l, err := jsonLine(quarantineEntry{"earlier error", usageRecordN(fmt.Sprint("d-", i), i, usageDay)})
		if err != nil {
			t.Fatal(err)
		}
		body += l
	}
	qpath := filepath.Join(dir, quarantineName)
	if err := os.WriteFile(qpath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	setFull(true)
	rep, err := ImportQuarantine(ctx, dir, s, false)
	if err == nil || classifyStoreErr(err) != faultStore {
		t.Fatalf("import on a full disk: %+v, %v; want the store's error", rep, err)
	}
	lines, rerr := readQuarantine(dir)
	if rerr != nil || len(lines)+rep.Imported != 50 || len(rep.Refused) != 0 {
		t.Fatalf("after the failed import: %d lines kept, %d imported (%+v), %v", len(lines), rep.Imported, rep, rerr)
	}
	setFull(false)
	if rep, err := ImportQuarantine(ctx, dir, s, false); err != nil || len(rep.Refused) != 0 {
		t.Fatalf("import once space returned: %+v, %v", rep, err)
	}
	var ids []string
	for i := range 50 {
		ids = append(ids, fmt.Sprint("d-", i))
	}
	assertAllOnce(t, s, ids)
}

// jsonLine is v as one JSON line.
func jsonLine(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b) + "\n", err
}

// TestWriterKeepsARefusedRecordItCannotQuarantine: when the quarantine
// file cannot be written (here a directory stands in its way, as a full
// disk would), a refused record is not dropped: it stays in the spool and
// is quarantined once the file can be written.
func TestWriterKeepsARefusedRecordItCannotQuarantine(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	refuseProject(t, s, "refused")
	dir := t.TempDir()
	qpath := filepath.Join(dir, quarantineName)
	if err := os.Mkdir(qpath, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := fastWriterConfig(dir)
	cfg.RetryMax = 2 * time.Millisecond
	w := mustWriter(t, cfg, s)
	r := usageRecordN("stuck", 1, usageDay)
	r.Project = "refused"
	w.Record(r)
	writerEventually(t, 10*time.Second, func() bool {
		st := w.Stats()
		return st.Retries >= 2*quarantineAfter || st.Dropped+st.Quarantined > 0
	})
	if st := w.Stats(); st.Dropped != 0 || st.Quarantined != 0 {
		t.Fatalf("stats %+v: want the record neither dropped nor quarantined yet", st)
	}
	if err := os.Remove(qpath); err != nil {
		t.Fatal(err)
	}
	mustFlush(t, w)
	if st := w.Stats(); st.Dropped != 0 || st.Quarantined != 1 {
		t.Errorf("stats %+v: want the record quarantined once the file can be written", st)
	}
	if lines, err := readQuarantine(dir); err != nil || len(lines) != 1 || lines[0].entry.Record.RequestID != "stuck" {
		t.Errorf("quarantine file: %+v, %v", lines, err)
	}
}
