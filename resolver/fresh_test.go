package resolver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// relay forwards TCP to PostgreSQL so a test can cut a Service off from the
// database and heal it, with the server itself untouched: refuse closes
// each new connection at once (a login refused), blackhole holds it
// unanswered (a partition), and both end the connections already open.
type relay struct {
	ln     net.Listener
	target string
	dials  atomic.Int64
	mu     sync.Mutex
	mode   string // "", "refuse" or "blackhole"
	conns  []net.Conn
}

func newRelay(tb testing.TB, target string) *relay {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	tb.Cleanup(func() { ln.Close(); r.cut("refuse") })
	go r.serve()
	return r
}

func (r *relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.dials.Add(1)
		r.mu.Lock()
		mode := r.mode
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		switch mode {
		case "refuse":
			c.Close()
			continue
		case "blackhole":
			continue
		}
		u, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, u)
		r.mu.Unlock()
		go func() { io.Copy(u, c); u.Close() }()
		go func() { io.Copy(c, u); c.Close() }()
	}
}

// cut ends every open connection and treats new ones per mode ("" heals).
func (r *relay) cut(mode string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode = mode
	if mode == "" {
		return
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// pgThroughRelay returns a fresh schema's DSN routed through a relay, and
// the direct DSN of the same schema; it skips without PostgreSQL.
func pgThroughRelay(t *testing.T) (*relay, string, string) {
	t.Helper()
	pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
	if pg == "" {
		t.Skip("TOLLGATE_TEST_POSTGRES not set")
	}
	direct := pgSchemaDSN(t, pg)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	r := newRelay(t, u.Host)
	u.Host = r.ln.Addr().String()
	q := u.Query()
	q.Set("connect_timeout", "2")
	u.RawQuery = q.Encode()
	return r, u.String(), direct
}

// startedService starts e's Service with a poll interval no test waits for:
// the test polls by hand (pollChanges) on its fake clock.
func startedService(t *testing.T, dsn string, opts ...option) *env {
	t.Helper()
	opts = append(opts, withConfig(func(c *Config) { c.MaxStaleness = 5 * time.Second; c.PollOnly = true }))
	e := mustService(t, dsn, opts...)
	// Past Validate, which rightly refuses a bound under two polls.
	e.svc.cfg.PollInterval = time.Hour
	if err := e.svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return e
}

func wantUnavailable(t *testing.T, err error, what string) {
	t.Helper()
	var ue *UnavailableError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &ue) {
		t.Fatalf("%s: got %v, want ErrUnavailable", what, err)
	}
}

// A Service cut off from the database serves its cache for MaxStaleness
// after its last successful poll and then refuses, even a token it holds:
// the token may have been revoked meanwhile (defect 1). Engine-neutral:
// closing the handle makes every poll fail.
func TestFreshnessBoundRefusesCachedAnswers(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := startedService(t, dsn)
		s := e.svc
		if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		tok, _ := mustToken(t, s, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
		if st, bound, ok := s.Freshness(); !ok || st != 0 || bound != 5*time.Second {
			t.Fatalf("Freshness: %s, %s, %v; want 0, 5s, true", st, bound, ok)
		}

		e.db.Close() // every query fails from here on
		e.clock.Advance(5 * time.Second)
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatalf("at the bound: %v, want the cached identity", err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")

		e.clock.Advance(time.Millisecond)
		_, err := s.Authenticate(ctx, tok)
		wantUnavailable(t, err, "Authenticate past the bound")
		_, err = s.Resolve(ctx, ccAnthropic)
		wantUnavailable(t, err, "Resolve past the bound")
		if st, _, ok := s.Freshness(); ok || st <= 5*time.Second {
			t.Fatalf("Freshness past the bound: %s, ok %v; want > 5s, false", st, ok)
		}
	})
}

// Without Start (the CLI) there is no bound: nothing polls.
func TestNoBoundWithoutStart(t *testing.T) {
	t.Parallel()
	e := mustService(t, pathDSN(t))
	tok, _ := mustToken(t, e.svc, TokenSpec{Workspace: "w1", User: "u1"})
	if _, err := e.svc.Authenticate(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	if _, _, ok := e.svc.Freshness(); !ok {
		t.Fatal("Freshness without Start: not ok")
	}
}

func pathDSN(t *testing.T) string { return engines(t)["sqlite"](t) }

func TestMaxStalenessMustExceedTwoPolls(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		poll, bound time.Duration
		ok          bool
	}{
		{0, 0, true}, {time.Second, 0, true}, {0, 2 * time.Second, false}, {0, 2001 * time.Millisecond, true},
		{100 * time.Millisecond, 300 * time.Millisecond, true}, {time.Second, time.Second, false},
	} {
		err := Config{MasterKey: testKey1, PollInterval: tc.poll, MaxStaleness: tc.bound}.Validate()
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "MaxStaleness")) {
			t.Errorf("poll %s, bound %s: %v, want ok=%v", tc.poll, tc.bound, err, tc.ok)
		}
	}
}

// A revocation made elsewhere while a replica is partitioned is never
// accepted past the bound, and is seen at the first poll after healing.
func TestPartitionedReplicaRefusesThenSeesRevocation(t *testing.T) {
	t.Parallel()
	r, viaRelay, direct := pgThroughRelay(t)
	ctx := context.Background()
	w := mustService(t, direct)
	e := startedService(t, viaRelay)
	s := e.svc
	tok, info := mustToken(t, w.svc, TokenSpec{Workspace: "w1", User: "u1"})
	other, _ := mustToken(t, w.svc, TokenSpec{Workspace: "w2", User: "u2"})
	for _, tk := range []string{tok, other} {
		if _, err := s.Authenticate(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}

	r.cut("refuse")
	if err := w.svc.RevokeToken(ctx, info.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.pollChanges(ctx); err == nil {
		t.Fatal("poll through a cut relay succeeded")
	}
	e.clock.Advance(4 * time.Second)
	if _, err := s.Authenticate(ctx, tok); err != nil {
		t.Fatalf("within the bound: %v, want the cached identity (the accepted window)", err)
	}
	dials := r.dials.Load()
	start := time.Now()
	_, err := s.Authenticate(ctx, "tgw_"+strings.Repeat("A", tokenLen-4))
	wantUnavailable(t, err, "a miss while the store is known down")
	if d := time.Since(start); d > 50*time.Millisecond || r.dials.Load() != dials {
		t.Fatalf("a miss while the store is known down took %s and %d dials, want at once and none", d, r.dials.Load()-dials)
	}
	e.clock.Advance(1001 * time.Millisecond)
	for _, tk := range []string{tok, other} {
		start := time.Now()
		_, err := s.Authenticate(ctx, tk)
		wantUnavailable(t, err, "past the bound")
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Fatalf("a refusal past the bound took %s, want at once while the store is known down", d)
		}
	}

	r.cut("")
	if err := s.pollChanges(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, tok); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("after healing: %v, want ErrTokenRevoked", err)
	}
	if _, err := s.Authenticate(ctx, other); err != nil {
		t.Fatalf("after healing, another token: %v", err)
	}
}

// An entry past its TTL whose refresh cannot reach the database is served
// while the Service is within its bound (stale-if-error), not turned into
// an error for every caller at the same moment (defect 4).
func TestStaleIfErrorWithinBound(t *testing.T) {
	t.Parallel()
	r, viaRelay, _ := pgThroughRelay(t)
	ctx := context.Background()
	e := startedService(t, viaRelay)
	s := e.svc
	if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
		t.Fatal(err)
	}
	// The poll applies the platform key's change once more, dropping every
	// resolution: poll before warming.
	if err := s.pollChanges(ctx); err != nil {
		t.Fatal(err)
	}
	tok, _ := mustToken(t, s, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})
	if _, err := s.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
	e.clock.Advance(startedCacheTTL * 12 / 10) // past every jittered TTL
	if err := s.pollChanges(ctx); err != nil {
		t.Fatal(err)
	}
	r.cut("refuse")
	if _, err := s.Authenticate(ctx, tok); err != nil {
		t.Fatalf("expired entry, store unreachable, within the bound: %v, want it served", err)
	}
	wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
	e.clock.Advance(6 * time.Second)
	_, err := s.Authenticate(ctx, tok)
	wantUnavailable(t, err, "past the bound")
}

// Concurrent misses for one key during a partition share one attempt with
// one budget: they all fail fast with ErrUnavailable, and once the store is
// known down later misses do not dial at all.
func TestMissesDuringOutageShareOneAttempt(t *testing.T) {
	t.Parallel()
	r, viaRelay, _ := pgThroughRelay(t)
	ctx := context.Background()
	e := startedService(t, viaRelay)
	s := e.svc
	tok, _ := mustToken(t, s, TokenSpec{Workspace: "w1", User: "u1"})
	r.cut("blackhole")
	before := r.dials.Load()
	const n = 50
	var wg sync.WaitGroup
	errs := make([]error, n)
	took := make([]time.Duration, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, errs[i] = s.Authenticate(ctx, tok)
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i := range n {
		wantUnavailable(t, errs[i], "a miss during a partition")
		if took[i] > missBudget+300*time.Millisecond {
			t.Fatalf("miss %d took %s, want within the %s budget", i, took[i], missBudget)
		}
	}
	// One attempt; database/sql may open a second connection for it (a
	// dead pooled one retried, or its background opener), never one per
	// caller.
	if d := r.dials.Load() - before; d > 2 {
		t.Fatalf("%d concurrent misses for one token dialled %d times, want one attempt", n, d)
	}
	before = r.dials.Load()
	for i := range n {
		start := time.Now()
		_, err := s.Authenticate(ctx, "tgw_"+strings.Repeat(string(rune('A'+i%26)), tokenLen-4))
		wantUnavailable(t, err, "a miss once the store is known down")
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Fatalf("a miss once the store is known down took %s", d)
		}
	}
	// database/sql's pool may still be opening one connection in the
	// background for the failed attempt; the 50 misses open none.
	if d := r.dials.Load() - before; d > 1 {
		t.Fatalf("%d misses once the store is known down dialled %d times, want none of their own", n, d)
	}
}

// A revocation a second, seen by another replica's poll, sends that one
// token back to the database there and nothing else: no other token and no
// resolution is looked up again (defect 3: every change used to purge
// every cache on every replica).
func TestRevocationDropsOnlyThatToken(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := mustService(t, dsn)
		e := startedService(t, dsn)
		s := e.svc
		if _, err := w.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		if err := s.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		var lookups atomic.Int64
		s.hookBeforeCache = func() { lookups.Add(1) }
		const n = 20
		toks := make([]string, n)
		ids := make([]string, n)
		for i := range n {
			var info TokenInfo
			toks[i], info = mustToken(t, w.svc, TokenSpec{Workspace: "w" + string(rune('a'+i)), Project: "p1", User: "u1"})
			ids[i] = info.ID
		}
		all := func() {
			t.Helper()
			for _, tk := range toks {
				s.Authenticate(ctx, tk)
			}
			wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
		}
		all()
		if got := lookups.Load(); got != n+1 {
			t.Fatalf("warming: %d lookups, want %d", got, n+1)
		}
		for i := range 5 {
			lookups.Store(0)
			if err := w.svc.RevokeToken(ctx, ids[i]); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(time.Second)
			if err := s.pollChanges(ctx); err != nil {
				t.Fatal(err)
			}
			all()
			if got := lookups.Load(); got != 1 {
				t.Fatalf("after revocation %d: %d lookups, want 1 (the revoked token)", i, got)
			}
			if _, err := s.Authenticate(ctx, toks[i]); !errors.Is(err, ErrTokenRevoked) {
				t.Fatalf("revoked token: %v, want ErrTokenRevoked", err)
			}
		}
		// A workspace revocation drops that workspace's tokens only.
		lookups.Store(0)
		if _, err := w.svc.RevokeWorkspaceTokens(ctx, "wt"); err != nil {
			t.Fatal(err)
		}
		if err := s.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		all()
		if got := lookups.Load(); got != 1 {
			t.Fatalf("after a workspace revocation: %d lookups, want 1", got)
		}
		// A hole in the change log (pruned rows) drops everything.
		lookups.Store(0)
		if err := w.svc.RevokeToken(ctx, ids[10]); err != nil {
			t.Fatal(err)
		}
		if _, err := w.db.ExecContext(ctx, `DELETE FROM resolver_change_log`); err != nil {
			t.Fatal(err)
		}
		if err := s.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		all()
		if got := lookups.Load(); got != n-6+1+6 {
			t.Fatalf("after a gap: %d lookups, want every token and the resolution (%d)", got, n+1)
		}
	})
}

// A resolution depends on the credentials it skipped too: enabling the
// user's disabled credential elsewhere must move the answer from the
// platform tier to the user tier, though the cached answer named only the
// platform credential.
func TestSkippedCredentialChangeReachesResolution(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := mustService(t, dsn)
		e := startedService(t, dsn)
		s := e.svc
		if _, err := w.svc.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		u := mustCred(t, w.svc, "anthropic", "sk-user-anthropic-1")
		mustBind(t, w.svc, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}, u.ID)
		if err := w.svc.DisableCredential(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
		if err := w.svc.EnableCredential(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.pollChanges(ctx); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-user-anthropic-1")
	})
}

// A hot entry is renewed in the background before its deadline, so the
// request that finds it near expiry, and the ones after its old deadline,
// never wait on the database (replicas.md §3: refresh hot entries before
// they expire).
func TestHotEntriesRefreshBeforeTheyExpire(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := startedService(t, dsn)
		s := e.svc
		if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-1")); err != nil {
			t.Fatal(err)
		}
		tok, _ := mustToken(t, s, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})
		var lookups atomic.Int64
		s.hookBeforeCache = func() { lookups.Add(1) }
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1")
		if got := lookups.Load(); got != 2 {
			t.Fatalf("warming: %d lookups, want 2", got)
		}
		hitToken := func() {
			t.Helper()
			if _, err := s.Authenticate(ctx, tok); err != nil {
				t.Fatal(err)
			}
		}
		hitResolution := func() { t.Helper(); wantSecret(t, s, ccAnthropic, "sk-platform-anthropic-1") }
		mac := s.keys.Load().current.mac.sum(tok)
		te, _ := s.tokens.Peek(mac)
		re, _ := s.resolved.Peek(resolveKey{ccAnthropic.Project, ccAnthropic.User, ccAnthropic.Harness, ccAnthropic.Dialect})
		// The TTLs are jittered: visit each entry's last refreshAhead in
		// deadline order. Each hit there is answered from memory, and the
		// first one starts the entry's one background refresh.
		type hot struct {
			until time.Time
			hit   func()
		}
		entries := []hot{{te.until, hitToken}, {re.until, hitResolution}}
		if re.until.Before(te.until) {
			entries[0], entries[1] = entries[1], entries[0]
		}
		for i, h := range entries {
			e.clock.Advance(h.until.Add(-refreshAhead / 2).Sub(e.clock.Now()))
			for range 3 {
				h.hit()
			}
			want := int64(3 + i)
			testkit.Eventually(t, 5*time.Second, "the background refresh", func() bool { return lookups.Load() == want })
		}
		// Past the old deadlines, the renewed entries answer without a read.
		e.clock.Advance(refreshAhead)
		hitToken()
		hitResolution()
		if got := lookups.Load(); got != 4 {
			t.Fatalf("after the old deadlines: %d lookups, want 4 (no read on the request path)", got)
		}
	})
}
