// Package testkit holds the helpers tests of several packages share: a log
// sink safe to read while servers write to it, a poll for conditions that
// come true on real time, and a PostgreSQL schema of a test's own. Only
// test files import it.
package testkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
)

// LogBuffer is an io.Writer for a captured slog handler (or a child's
// output) that the test may read while others still write.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Eventually polls cond every few milliseconds until it holds, and fails
// the test naming what it waited for if within passes first.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(within, 5*time.Millisecond, cond) {
		tb.Fatalf("timed out after %s waiting for %s", within, what)
	}
}

// Poll checks cond every interval until it holds or within passes, and
// reports whether it held. It is for callers that explain a timeout
// better than Eventually can (what they got against what they wanted), or
// whose cond is costly enough to want a slower poll.
func Poll(within, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}

// PostgresSchema creates an empty schema named prefix plus a random suffix
// in the database at dsn, drops it when the test ends, and returns dsn
// with search_path set to it, so tests running at once never see each
// other's tables.
func PostgresSchema(tb testing.TB, dsn, prefix string) string {
	tb.Helper()
	ctx := context.Background()
	admin, err := store.Open(ctx, dsn)
	if err != nil {
		tb.Fatalf("postgres: %v", err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := prefix + hex.EncodeToString(b[:])
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		tb.Fatalf("postgres: %v", err)
	}
	tb.Cleanup(func() {
		admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + schema
}
