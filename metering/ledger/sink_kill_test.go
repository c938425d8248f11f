package ledger

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
)

// killChildEnv makes the test binary act as the child of
// TestWriterSurvivesKill9; its value is the working directory.
const killChildEnv = "TOLLGATE_METERING_KILL9_CHILD"

// TestWriterSurvivesKill9 runs a Writer in a child process under load,
// SIGKILLs it, then starts a new Writer on the same spool and database:
// every record the child reported accepted (Record had returned) must have
// exactly one row.
func TestWriterSurvivesKill9(t *testing.T) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		runKill9Child(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir := t.TempDir()
	accepted := filepath.Join(dir, "accepted")
	cmd := exec.Command(os.Args[0], "-test.run=^TestWriterSurvivesKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once the child has committed some batches and is mid-load: both
	// committed rows and spool-only records must come through.
	deadline := time.Now().Add(30 * time.Second)
	for countLines(accepted) < 1500 || committedRows(filepath.Join(dir, "usage.db")) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child accepted only %d records in 30s; output:\n%s", countLines(accepted), stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	ids := readIDLines(t, accepted)
	s, err := OpenStore(context.Background(), mustUsageFile(t, filepath.Join(dir, "usage.db")))
	if err != nil {
		t.Fatal(err)
	}
	var before int64
	s.db.QueryRow(`SELECT COUNT(*) FROM usage_records`).Scan(&before)
	w := mustWriter(t, fastWriterConfig(filepath.Join(dir, "spool")), s)
	mustFlush(t, w)
	st := w.Stats()
	t.Logf("child accepted %d; %d rows before replay; replayed %d (inserted %d, duplicates %d, torn %d)",
		len(ids), before, st.Replayed, st.Inserted, st.Duplicates, st.TornLines)
	if st.BadLines != 0 {
		t.Errorf("bad spool lines after kill -9: %d", st.BadLines)
	}
	missing := 0
	for _, id := range ids {
		if n := usageRowCount(t, s, id); n != 1 {
			missing++
			if missing < 5 {
				t.Errorf("accepted record %s: %d rows, want 1", id, n)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d accepted records lost", missing, len(ids))
	}
	raw, daily := usageSums(t, s)
	if raw != daily {
		t.Errorf("rollup disagrees with raw rows after replay: raw %+v, daily %+v", raw, daily)
	}
	// Rows may exceed the accepted ids by the records in flight when the
	// child died (spooled, not yet reported).
	if raw.requests < int64(len(ids)) || raw.requests > int64(len(ids))+64 {
		t.Errorf("rows: %d for %d accepted", raw.requests, len(ids))
	}
}

// runKill9Child records forever from four goroutines, appending each id to
// the accepted file once Record returned. The parent kills it.
func runKill9Child(t *testing.T, dir string) {
	db := mustUsageFile(t, filepath.Join(dir, "usage.db"))
	s, err := OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastWriterConfig(filepath.Join(dir, "spool"))
	cfg.QueueSize = 256 // small, so spills happen under the loop's load too
	w, err := NewWriter(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "accepted"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("k9-%d-%d", g, i)
				w.Record(usageRecordN(id, i, usageDay.Add(time.Duration(i)*time.Second)))
				// One write(2) per line, O_APPEND: lines never interleave,
				// and the kernel keeps them when the process is killed.
				if _, err := f.WriteString(id + "\n"); err != nil {
					panic(err)
				}
				// Pace the load like requests, not a spin loop, so the
				// writer gets CPU (under -race especially) and commits.
				if i%32 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

func countLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte{'\n'})
}

// committedRows counts the rows the child committed so far (0 on error).
func committedRows(path string) int {
	if _, err := os.Stat(path); err != nil {
		return 0
	}
	db, err := store.Open(context.Background(), path)
	if err != nil {
		return 0
	}
	defer db.Close()
	var n int
	db.QueryRow(`SELECT COUNT(*) FROM usage_records`).Scan(&n)
	return n
}

func readIDLines(t *testing.T, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// inflightChildEnv makes the test binary the child of
// TestRequestsInFlightSurviveKill9: "<dir>|<database>", the database a
// SQLite path or a PostgreSQL DSN.
const inflightChildEnv = "TOLLGATE_METERING_INFLIGHT_KILL9_CHILD"

// inflightStreams is how many streams the child holds open when killed.
const inflightStreams = 64

// TestRequestsInFlightSurviveKill9 is issue 12's probe: a child process
// holds streams open (begun, some with progress, never ended) while
// finishing other requests, and is SIGKILLed. After a restart on the same
// spool and database, every request that was begun (sent to the provider)
// has exactly one record: the open streams interrupted with partial or
// missing usage, and usage_daily agrees with the rows.
func TestRequestsInFlightSurviveKill9(t *testing.T) {
	if v := os.Getenv(inflightChildEnv); v != "" {
		dir, dsn, _ := strings.Cut(v, "|")
		runInflightChild(t, dir, dsn)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			dir := t.TempDir()
			dsn := filepath.Join(dir, "usage.db")
			if engine == store.Postgres {
				dsn = testkit.PostgresSchema(t, os.Getenv("TOLLGATE_TEST_POSTGRES"), "metering_kill9_")
			}
			s, err := OpenStore(context.Background(), mustUsageFile(t, dsn))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestRequestsInFlightSurviveKill9$", "-test.count=1")
			cmd.Env = append(os.Environ(), inflightChildEnv+"="+dir+"|"+dsn)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			began, progressed, finished := filepath.Join(dir, "began"), filepath.Join(dir, "progressed"), filepath.Join(dir, "finished")
			deadline := time.Now().Add(30 * time.Second)
			for countLines(progressed) < inflightStreams/2 || countLines(finished) < 500 || usageRows(s) == 0 {
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("child: %d progressed, %d finished in 30s; output:\n%s", countLines(progressed), countLines(finished), out.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()

			ids := readIDLines(t, began)
			withProgress := map[string]bool{}
			for _, id := range readIDLines(t, progressed) {
				withProgress[id] = true
			}
			w := mustWriter(t, fastWriterConfig(filepath.Join(dir, "spool")), s)
			mustFlush(t, w)
			bad, interrupted, partial := 0, 0, 0
			for _, id := range ids {
				if n := usageRowCount(t, s, id); n != 1 {
					if bad++; bad < 5 {
						t.Errorf("request %s sent upstream: %d records, want 1", id, n)
					}
					continue
				}
				v := rowOf(t, s, id)
				if v.outcome == metering.OutcomeInterrupted {
					interrupted++
					if v.source == metering.SourcePartial {
						partial++
					}
					if v.source == metering.SourceMissing && (v.input.Valid || v.cost.Valid) {
						t.Errorf("interrupted %s: missing usage with tokens or cost %+v, want NULL", id, v)
					}
				}
				if strings.HasPrefix(id, "open-") {
					want := metering.SourceMissing
					if withProgress[id] {
						want = metering.SourcePartial
					}
					if v.outcome != metering.OutcomeInterrupted || v.source != want {
						t.Errorf("open stream %s: %s/%s, want interrupted/%s", id, v.outcome, v.source, want)
					}
				}
			}
			raw, daily := usageSums(t, s)
			t.Logf("%s: %d requests sent upstream, %d rows (%d interrupted: %d partial, %d missing usage; %d open streams)",
				engine, len(ids), raw.requests, interrupted, partial, interrupted-partial, inflightStreams)
			if bad > 0 {
				t.Fatalf("%d of %d requests sent upstream without exactly one record", bad, len(ids))
			}
			// A request whose Begin returned just before the kill may lack
			// its began line: one per child goroutine at most.
			if raw.requests < int64(len(ids)) || raw.requests > int64(len(ids))+4 {
				t.Errorf("rows %d, requests sent %d", raw.requests, len(ids))
			}
			if raw != daily {
				t.Errorf("rollup disagrees with raw rows: raw %+v, daily %+v", raw, daily)
			}
			if n := missingUsageDaily(t, s); n < int64(interrupted) {
				t.Errorf("usage_daily missing_usage_requests %d below the %d interrupted rows", n, interrupted)
			}
		})
	}
}

// usageRows counts the committed rows, 0 on error.
func usageRows(s *Store) int {
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM usage_records`).Scan(&n)
	return n
}

// runInflightChild opens inflightStreams streams (Begin, then Progress on
// every other one) that never end, while four goroutines begin and finish
// requests forever. Each id is appended to a file once the call about it
// returned: began (Begin), progressed (Progress), finished (Record).
func runInflightChild(t *testing.T, dir, dsn string) {
	s, err := OpenStore(context.Background(), mustUsageFile(t, dsn))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastWriterConfig(filepath.Join(dir, "spool"))
	cfg.QueueSize = 256
	w, err := NewWriter(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	logTo := func(name string) func(string) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		return func(id string) {
			if _, err := f.WriteString(id + "\n"); err != nil {
				panic(err)
			}
		}
	}
	began, progressed, finished := logTo("began"), logTo("progressed"), logTo("finished")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				if g == 0 && i < inflightStreams {
					// Streams that stay open, begun among the others.
					r := startRecord(fmt.Sprintf("open-%d", i))
					w.Begin(r)
					began(r.RequestID)
					if i%2 == 0 {
						w.Progress(progressRecord(r, int64(100+i)))
						progressed(r.RequestID)
					}
				}
				r := startRecord(fmt.Sprintf("done-%d-%d", g, i))
				r.Start = usageDay.Add(time.Duration(i) * time.Second)
				w.Begin(r)
				began(r.RequestID)
				if i%3 == 0 {
					w.Progress(progressRecord(r, 50))
				}
				w.Record(finalRecord(r))
				finished(r.RequestID)
				if i%32 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}
