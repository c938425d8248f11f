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
