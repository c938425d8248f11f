package governance

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
)

// startPolicyWatcher starts a watcher over st until the test ends.
func startPolicyWatcher(t *testing.T, st *Store, cfg WatchConfig) *Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := NewWatcher(st, cfg)
	if err := w.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-w.Done() })
	return w
}

// seen waits until w's snapshot holds limit id and returns how long that
// took, or fails after within.
func seenLimit(t *testing.T, w *Watcher, id string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		for _, l := range w.Current().Limits {
			if l.ID == id {
				return time.Since(start)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("limit %s not seen within %s", id, within)
	return 0
}

// TestWatcherAcrossReplicasPostgres: two processes' stores on one
// PostgreSQL schema; a write on one reaches the other's snapshot within
// 100 ms by NOTIFY, and within about two polls with notifications off.
func TestWatcherAcrossReplicasPostgres(t *testing.T) {
	url := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if url == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES is not set")
	}
	dsn := testkit.PostgresSchema(t, url, "gov_watch_")
	open := func() *Store {
		db, err := store.Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return policyStore(t, db)
	}
	a, b := open(), open()
	ctx := context.Background()

	t.Run("notify", func(t *testing.T) {
		// A poll far longer than the bound: only the notification can win.
		w := startPolicyWatcher(t, b, WatchConfig{Poll: time.Minute})
		time.Sleep(300 * time.Millisecond) // the listener's connect and self-test
		for i := range 5 {
			l, err := a.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopeProject, ScopeID: "p"}, RPM: int64(i + 1)})
			if err != nil {
				t.Fatal(err)
			}
			d := seenLimit(t, w, l.ID, 100*time.Millisecond)
			t.Logf("write %d seen by the other replica after %s", i, d)
		}
	})
	t.Run("poll only", func(t *testing.T) {
		const poll = 100 * time.Millisecond
		w := startPolicyWatcher(t, b, WatchConfig{Poll: poll, PollOnly: true})
		l, err := a.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, RPM: 9})
		if err != nil {
			t.Fatal(err)
		}
		d := seenLimit(t, w, l.ID, 2*poll+100*time.Millisecond)
		t.Logf("seen after %s polling every %s", d, poll)
	})
}

// TestWatcherPollsSQLite: SQLite has no notifications; a write by another
// Store on the file is seen within two polls, and Refresh is immediate.
func TestWatcherPollsSQLite(t *testing.T) {
	db := policyDB(t, false)
	ctx := context.Background()
	writer, reader := policyStore(t, db), policyStore(t, db)
	const poll = 100 * time.Millisecond
	w := startPolicyWatcher(t, reader, WatchConfig{Poll: poll})
	if p := w.Current(); p == nil || !p.Empty() {
		t.Fatalf("first snapshot %+v", p)
	}
	l, err := writer.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, RPM: 5})
	if err != nil {
		t.Fatal(err)
	}
	seenLimit(t, w, l.ID, 2*poll+100*time.Millisecond)
	if w.Current().Version != 1 {
		t.Errorf("version %d", w.Current().Version)
	}

	// Refresh, as the admin API calls it after its write: no wait at all.
	w2 := NewWatcher(reader, WatchConfig{Poll: time.Hour})
	l2, _ := writer.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, TPM: 5})
	if err := w2.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if got := w2.Current().Limits; len(got) != 2 || got[1].ID != l2.ID && got[0].ID != l2.ID {
		t.Errorf("after Refresh: %+v", got)
	}
}

// TestWatcherKeepsPoliciesThroughAnOutage: while the store cannot be read
// the last snapshot stays in force, one warning is logged for the whole
// outage, and the watcher catches up once the store is back.
func TestWatcherKeepsPoliciesThroughAnOutage(t *testing.T) {
	db := policyDB(t, false)
	ctx := context.Background()
	st := policyStore(t, db)
	if _, err := st.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, RPM: 5}); err != nil {
		t.Fatal(err)
	}
	logs := &testkit.LogBuffer{}
	const poll = 20 * time.Millisecond
	w := startPolicyWatcher(t, st, WatchConfig{Poll: poll, Log: slog.New(slog.NewTextHandler(logs, nil))})
	before := w.Current()
	if _, err := db.ExecContext(ctx, `ALTER TABLE gov_version RENAME TO gov_version_away`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * poll)
	if w.Current() != before || len(w.Current().Limits) != 1 {
		t.Errorf("snapshot changed during the outage: %+v", w.Current())
	}
	if n := strings.Count(logs.String(), "policy reload failed"); n != 1 {
		t.Errorf("%d warnings for one outage:\n%s", n, logs)
	}
	if _, err := db.ExecContext(ctx, `ALTER TABLE gov_version_away RENAME TO gov_version`); err != nil {
		t.Fatal(err)
	}
	l, err := st.PutLimit(ctx, Limit{Selector: Selector{ScopeType: ScopePlatform}, RPM: 6})
	if err != nil {
		t.Fatal(err)
	}
	seenLimit(t, w, l.ID, 5*poll)
	testkit.Eventually(t, time.Second, "a recovery line", func() bool { return strings.Contains(logs.String(), "policy reload succeeded again") })
}

// TestWatcherStartFailsWithoutStore: a replica that cannot read its
// policies does not start enforcing none.
func TestWatcherStartFailsWithoutStore(t *testing.T) {
	db := policyDB(t, false)
	st := policyStore(t, db)
	db.Close()
	w := NewWatcher(st, WatchConfig{})
	if err := w.Start(context.Background()); err == nil {
		t.Fatal("Start succeeded on a closed database")
	}
	if w.Current() == nil {
		t.Fatal("Current is nil")
	}
}

// TestCurrentDoesNotAllocate: Current is on every request's path.
func TestCurrentDoesNotAllocate(t *testing.T) {
	w := NewWatcher(nil, WatchConfig{})
	if n := testing.AllocsPerRun(100, func() { _ = w.Current() }); n != 0 {
		t.Errorf("Current allocates %.0f times", n)
	}
}
