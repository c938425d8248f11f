package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
)

// TestUsageImportQuarantine: "usage import-quarantine" reports a dry run
// without changing anything, imports what the database takes, keeps and
// names by line what it still refuses (exit 1), imports that once fixed,
// and is a no-op when run again; "usage --from" still reports.
func TestUsageImportQuarantine(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testUsageImportQuarantine(t, "") })
	t.Run("postgres", func(t *testing.T) {
		pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if pg == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set (make test-postgres sets it)")
		}
		testUsageImportQuarantine(t, testkit.PostgresSchema(t, pg, "tg_cmd_"))
	})
}

func testUsageImportQuarantine(t *testing.T, dsn string) {
	ctx := context.Background()
	c := newCLI(t, "http://127.0.0.1:1")
	if dsn != "" {
		c.env["TOLLGATE_DB"] = dsn
	}
	db, err := store.Open(ctx, c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := ledger.OpenStore(ctx, db); err != nil {
		t.Fatal(err)
	}
	// A real refusal, as a constraint the record violates.
	refuse := `CREATE TRIGGER test_refuse BEFORE INSERT ON usage_records WHEN NEW.project = 'refused'
BEGIN SELECT RAISE(ABORT, 'project refused'); END`
	fix := `DROP TRIGGER test_refuse`
	if db.Engine == store.Postgres {
		refuse = `ALTER TABLE usage_records ADD CONSTRAINT test_project_refused CHECK (project <> 'refused')`
		fix = `ALTER TABLE usage_records DROP CONSTRAINT test_project_refused`
	}
	if _, err := db.ExecContext(ctx, refuse); err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 5, 4, 15, 0, 0, 0, time.UTC)
	var body []byte
	for _, p := range []string{"p", "refused"} {
		rec := &metering.Record{RequestID: "q-" + p, Start: day, Project: p, User: "u", Harness: "codex", Provider: "openai",
			ModelServed: "gpt-5", Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceUpstream,
			Usage: &metering.Usage{InputUncached: 10, Output: 7}}
		b, err := json.Marshal(map[string]any{"error": "database or disk is full", "record": rec})
		if err != nil {
			t.Fatal(err)
		}
		body = append(append(body, b...), '\n')
	}
	spool := c.env["TOLLGATE_SPOOL"]
	qfile := filepath.Join(spool, "quarantine.jsonl")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(qfile, body, 0o600); err != nil {
		t.Fatal(err)
	}

	out, errs, code := c.run(ctx, "", "usage", "import-quarantine", "--dry-run")
	if code != 0 || !strings.Contains(out, "would import 2, already present 0") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(qfile); string(b) != string(body) {
		t.Fatalf("the dry run changed the file: %q", b)
	}
	out, errs, code = c.run(ctx, "", "usage", "import-quarantine", "--spool", spool)
	if code != 1 || !strings.Contains(out, "imported 1, already present 0, still refused 1") ||
		!strings.Contains(out, "line 2 q-refused: metering insert:") || !strings.Contains(out, "project") {
		t.Fatalf("import while refused: exit %d\n%s%s", code, out, errs)
	}
	if b, _ := os.ReadFile(qfile); strings.Count(string(b), "\n") != 1 || !strings.Contains(string(b), `"q-refused"`) {
		t.Fatalf("quarantine file after a partial import: %q; want only the refused record", b)
	}
	if _, err := db.ExecContext(ctx, fix); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"imported 1, already present 0, still refused 0", "imported 0, already present 0, still refused 0"} {
		out, errs, code = c.run(ctx, "", "usage", "import-quarantine")
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("import: exit %d\n%s%s; want %q", code, out, errs, want)
		}
	}
	out, errs, code = c.run(ctx, "", "usage", "--from", "2026-05-04", "--to", "2026-05-04", "--group-by", "project", "--format", "csv")
	if code != 0 || !strings.Contains(out, "\np,") || !strings.Contains(out, "\nrefused,") {
		t.Errorf("usage after the import: exit %d\n%s%s", code, out, errs)
	}
}
