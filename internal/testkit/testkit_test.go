package testkit

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// TestLogBufferTakesConcurrentWrites: run under -race, writers and a
// reader at once; every line arrives whole.
func TestLogBufferTakesConcurrentWrites(t *testing.T) {
	var l LogBuffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				fmt.Fprintf(&l, "w%d-%d\n", i, j)
				_ = l.String()
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSpace(l.String()), "\n")
	if len(lines) != 8*50 {
		t.Fatalf("%d lines, want %d", len(lines), 8*50)
	}
	for _, ln := range lines {
		if !strings.HasPrefix(ln, "w") || strings.Count(ln, "-") != 1 {
			t.Fatalf("torn line %q", ln)
		}
	}
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	var n atomic.Int32
	go func() {
		time.Sleep(20 * time.Millisecond)
		n.Store(1)
	}()
	Eventually(t, 2*time.Second, "the flag", func() bool { return n.Load() == 1 })
}

// TestPollReportsATimeout: a condition that never holds is reported, not
// fatal, once the bound passes, and the poll checks it more than once.
func TestPollReportsATimeout(t *testing.T) {
	var calls atomic.Int32
	start := time.Now()
	if Poll(50*time.Millisecond, 10*time.Millisecond, func() bool { calls.Add(1); return false }) {
		t.Fatal("Poll says a condition that never holds held")
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("Poll gave up after %s, before its bound", took)
	}
	if n := calls.Load(); n < 3 {
		t.Errorf("cond checked %d times in 50 ms at a 10 ms interval", n)
	}
	if !Poll(time.Second, time.Millisecond, func() bool { return true }) {
		t.Error("Poll says a condition that holds at once did not")
	}
}

// TestPostgresSchemaIsolatesAndDrops: a table made through one DSN is not
// seen through another, and the schema is gone after the test.
func TestPostgresSchemaIsolatesAndDrops(t *testing.T) {
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	ctx := context.Background()
	var schema string
	t.Run("use", func(t *testing.T) {
		a, b := PostgresSchema(t, pg, "testkit_test_"), PostgresSchema(t, pg, "testkit_test_")
		da, err := store.Open(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		defer da.Close()
		if _, err := da.ExecContext(ctx, "CREATE TABLE t (x INT)"); err != nil {
			t.Fatal(err)
		}
		if err := da.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			t.Fatal(err)
		}
		db, err := store.Open(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "SELECT * FROM t"); err == nil {
			t.Error("a table of one schema is seen from another")
		}
	})
	admin, err := store.Open(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var n int
	if err := admin.QueryRowContext(ctx, "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(schema, "testkit_test_") || n != 0 {
		t.Errorf("schema %q: %d left after the test", schema, n)
	}
}
