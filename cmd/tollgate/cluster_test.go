//go:build cluster

// `make test-cluster`: three real tollgate replicas on one PostgreSQL,
// under the faults of issue 12 (a cold start together, revocations and
// binding changes, a partitioned replica, a database outage, kill -9 under
// streams). Each case prints its figures; each pass condition is the
// issue's target, and a failure names the defect it shows.

package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

// TestClusterColdStart: three replicas and a CLI command that migrates,
// started at the same moment on an empty database, 10 times (and 8
// replicas, 3 times): every one comes up, and every component's
// migrations are recorded once each.
func TestClusterColdStart(t *testing.T) {
	t.Run("3-replicas", func(t *testing.T) { testColdStart(t, clusterReplicas, 10) })
	t.Run("8-replicas", func(t *testing.T) { testColdStart(t, 8, 3) })
}

func testColdStart(t *testing.T, replicas, trials int) {
	pg := newPGFixture(t, replicas)
	fake := startFake(t)
	env := clusterEnv(t, fake.url)
	bin := clusterBinary(t)
	var started, cliOK int
	var failures []string
	var slowest time.Duration
	for trial := range trials {
		db := pg.newDatabase()
		release := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var procs []*serveProc
		fail := func(who string, err error) {
			mu.Lock()
			defer mu.Unlock()
			failures = append(failures, fmt.Sprintf("trial %d %s: %v", trial, who, err))
		}
		t0 := time.Now()
		for i := range replicas {
			cmd := serveCmd(bin, env, pg.dsn(db, i, fmt.Sprintf("tollgate-r%d", i)), t.TempDir())
			wg.Go(func() {
				<-release
				sp, err := startServeProc(t, cmd)
				if err == nil {
					err = sp.ready()
				}
				mu.Lock()
				if err == nil {
					started++
					procs = append(procs, sp)
					slowest = max(slowest, time.Since(t0))
				}
				mu.Unlock()
				if err != nil {
					fail(fmt.Sprintf("r%d", i), err)
				}
			})
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), serveStartTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "token", "issue", "--workspace", "ws-cold", "--project", "p", "--user", "u")
			cmd.Env = append(env, "TOLLGATE_DB="+pg.dsn(db, 0, "tollgate-cli"))
			<-release
			out, err := cmd.CombinedOutput()
			if err != nil {
				fail("token issue", fmt.Errorf("%v: %s", err, logTail(string(out), 3)))
				return
			}
			mu.Lock()
			cliOK++
			mu.Unlock()
		})
		close(release)
		wg.Wait()
		checkMigrations(t, pg.open(db), trial)
		var swg sync.WaitGroup
		for _, sp := range procs {
			swg.Go(sp.stop)
		}
		swg.Wait()
	}
	t.Logf("cold start: %d trials of %d replicas + 1 CLI at once on an empty database: %d of %d replicas started (slowest %v), %d of %d CLI commands succeeded",
		trials, replicas, started, trials*replicas, slowest.Round(time.Millisecond), cliOK, trials)
	for _, f := range failures {
		t.Logf("cold start: %s", f)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d processes started together on an empty database failed (store.Migrate takes no lock and reads the version outside its transaction: issue 12 defect 2): first: %s",
			len(failures), trials*(replicas+1), failures[0])
	}
}

// checkMigrations: each component's versions are 1..n, each once.
func checkMigrations(t *testing.T, db *sql.DB, trial int) {
	t.Helper()
	rows, err := db.Query(`SELECT component, COUNT(*), COUNT(DISTINCT version), MIN(version), MAX(version) FROM schema_migrations GROUP BY component ORDER BY component`)
	if err != nil {
		t.Errorf("trial %d: schema_migrations: %v", trial, err)
		return
	}
	defer rows.Close()
	var seen []string
	for rows.Next() {
		var comp string
		var n, distinct, lo, hi int
		if err := rows.Scan(&comp, &n, &distinct, &lo, &hi); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, fmt.Sprintf("%s v%d", comp, hi))
		if n != distinct || lo != 1 || hi != n {
			t.Errorf("trial %d: schema_migrations for %s: %d rows, %d versions, %d..%d; want versions 1..n once each", trial, comp, n, distinct, lo, hi)
		}
	}
	if len(seen) == 0 {
		t.Errorf("trial %d: schema_migrations is empty", trial)
	}
}

// propagationBound is how long a poll for a change waits before the trial
// counts as never propagated.
const propagationBound = 3 * time.Second

// propagationTarget is issue 12's target for a change to reach every
// replica (p99, with LISTEN/NOTIFY).
const propagationTarget = 100 * time.Millisecond

// pollOnlyBound is the poll interval (1 s) plus slack for a loaded
// two-core machine: the most a change may take with TOLLGATE_PG_NOTIFY=off.
const pollOnlyBound = 1250 * time.Millisecond

// unlockPhase sleeps a random part of the poll interval. A trial ends
// just after a replica's poll saw the change, so without it the next
// change would land at the same phase of the 1 s poll every time, and
// every figure would be the worst case.
func unlockPhase() {
	time.Sleep(rand.N(time.Second))
}

// TestClusterRevokePropagation: under a light load spread over the
// replicas, a token revoked through r0 is refused on r1 and r2 within the
// target (p99 100 ms with notifications; within the poll interval with
// them off).
func TestClusterRevokePropagation(t *testing.T) {
	t.Run("notify", func(t *testing.T) { testRevokePropagation(t, "on", 50, propagationTarget) })
	t.Run("poll-only", func(t *testing.T) { testRevokePropagation(t, "off", 20, pollOnlyBound) })
	t.Run("listener-lost", testRevokeListenerLost)
}

// testRevokeListenerLost: the listening sessions of r1 and r2 are
// terminated just before each revocation, which the notification then
// misses; the poll (and the catch-up after reconnecting) still lands it
// within the poll interval.
func testRevokeListenerLost(t *testing.T) {
	c := newCluster(t, []string{"TOLLGATE_PG_NOTIFY=on"})
	const trials = 10
	var lat []time.Duration
	var never []string
	listeners := 0
	for trial := range trials {
		tok, id := c.issueToken(0, "ws-revoke", "p")
		for i := 1; i < clusterReplicas; i++ {
			if _, ok, odd := c.waitFor(i, tok, time.Now(), propagationBound, func(a answer) bool { return a.status == http.StatusOK }); !ok {
				t.Fatalf("trial %d: a new token is not served by r%d within %v (statuses %v)", trial, i, propagationBound, odd)
			}
		}
		unlockPhase()
		for i := 1; i < clusterReplicas; i++ {
			listeners += c.pg.terminate(fmt.Sprintf("tollgate-r%d", i) + "%listen%")
		}
		c.admin(0, "DELETE", "/tokens/"+id, nil, nil)
		revoked := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 1; i < clusterReplicas; i++ {
			wg.Go(func() {
				d, ok, _ := c.waitFor(i, tok, revoked, propagationBound, func(a answer) bool { return a.status == http.StatusUnauthorized })
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					never = append(never, fmt.Sprintf("trial %d r%d", trial, i))
					return
				}
				lat = append(lat, d)
			})
		}
		wg.Wait()
	}
	t.Logf("revoke with the listeners of r1 and r2 just terminated (%d sessions ended over %d trials): first 401 %s", listeners, trials, fmtPct(lat))
	if len(never) > 0 {
		t.Errorf("%d times a revoked token was still accepted %v after the revoke: %v", len(never), propagationBound, never)
	}
	if _, _, top := percentiles(lat); top > pollOnlyBound {
		t.Errorf("with the listener lost, revocation took up to %v, over the poll interval + slack (%v)", top, pollOnlyBound)
	}
	if listeners == 0 {
		t.Errorf("r1 and r2 hold no listening session (application_name tollgate-rN...listen): no LISTEN/NOTIFY (issue 12 defect 3)")
	}
}

func testRevokePropagation(t *testing.T, notify string, trials int, bound time.Duration) {
	c := newCluster(t, []string{"TOLLGATE_PG_NOTIFY=" + notify})
	loadTok, _ := c.issueToken(0, "ws-load", "p")
	l := c.startLoad(loadTok, clusterReplicas, 30*time.Millisecond, false)
	lat := map[int][]time.Duration{}
	var never []string
	for trial := range trials {
		tok, id := c.issueToken(0, "ws-revoke", "p")
		for i := 1; i < clusterReplicas; i++ {
			if _, ok, odd := c.waitFor(i, tok, time.Now(), propagationBound, func(a answer) bool { return a.status == http.StatusOK }); !ok {
				t.Fatalf("trial %d: a new token is not served by r%d within %v (statuses %v)", trial, i, propagationBound, odd)
			}
		}
		unlockPhase()
		c.admin(0, "DELETE", "/tokens/"+id, nil, nil)
		revoked := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 1; i < clusterReplicas; i++ {
			wg.Go(func() {
				d, ok, odd := c.waitFor(i, tok, revoked, propagationBound, func(a answer) bool { return a.status == http.StatusUnauthorized })
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					never = append(never, fmt.Sprintf("trial %d r%d (statuses other than 200: %v)", trial, i, odd))
					return
				}
				lat[i] = append(lat[i], d)
			})
		}
		wg.Wait()
	}
	as := l.finish()
	var all []time.Duration
	for i := 1; i < clusterReplicas; i++ {
		t.Logf("revoke through r0 (notify %s), first 401 on r%d after the revoke returned: %s", notify, i, fmtPct(lat[i]))
		all = append(all, lat[i]...)
	}
	t.Logf("revoke (notify %s): all replicas %s; background load statuses %v", notify, fmtPct(all), statusCounts(as))
	if len(never) > 0 {
		t.Errorf("%d times a revoked token was still accepted %v after the revoke: %v", len(never), propagationBound, never)
	}
	if _, p99, top := percentiles(all); notify == "on" && p99 > bound {
		t.Errorf("revocation reaches the other replicas in p99 %v (max %v), over the %v target: propagation is by the 1 s poll only (no LISTEN/NOTIFY push: issue 12 defect 3)", p99, top, bound)
	} else if notify == "off" && top > bound {
		t.Errorf("with notifications off, revocation took up to %v, over the poll interval + slack (%v)", top, bound)
	}
	if n := len(as) - statusCounts(as)[http.StatusOK]; n > 0 {
		t.Errorf("%d of %d background requests were not answered 200: %v", n, len(as), statusCounts(as))
	}
}

// TestClusterBindingPropagation: a project's binding moved to another
// credential, deactivated and activated through r0: how long until r1 and
// r2 use the new credential, or refuse (403, halted).
func TestClusterBindingPropagation(t *testing.T) {
	c := newCluster(t, nil)
	keys := []string{"sk-ant-api03-CLUSTERcredA0123456789abcdefghij", "sk-ant-api03-CLUSTERcredB0123456789abcdefghij"}
	var creds []string
	for n, k := range keys {
		var cr struct {
			ID string `json:"id"`
		}
		c.admin(0, "POST", "/credentials", map[string]string{"name": fmt.Sprintf("cred-%d", n), "provider": "anthropic", "key": k}, &cr)
		creds = append(creds, cr.ID)
	}
	binding := map[string]string{"tier": "project", "scope_id": "p-bind", "dialect": "anthropic-messages"}
	bind := func(cred int) {
		b := map[string]string{"credential_id": creds[cred]}
		for k, v := range binding {
			b[k] = v
		}
		c.admin(0, "POST", "/bindings", b, nil)
	}
	bind(0)
	tok, _ := c.issueToken(0, "ws-bind", "p-bind")
	servedBy := func(cred int) func(answer) bool {
		return func(a answer) bool { return a.status == http.StatusOK && a.tag == keyTag(keys[cred]) }
	}
	for i := range clusterReplicas {
		if _, ok, odd := c.waitFor(i, tok, time.Now(), propagationBound, servedBy(0)); !ok {
			t.Fatalf("r%d does not serve the project's token with credential 0 (statuses %v)", i, odd)
		}
	}
	loadTok, _ := c.issueToken(0, "ws-load", "p")
	l := c.startLoad(loadTok, clusterReplicas, 30*time.Millisecond, false)
	lat := map[string][]time.Duration{}
	var never []string
	cur := 0
	const changes = 60
	for n := range changes {
		var kind string
		var want func(answer) bool
		unlockPhase()
		switch n % 3 {
		case 0:
			kind, cur = "moved", 1-cur
			bind(cur)
			want = servedBy(cur)
		case 1:
			kind = "deactivated"
			c.admin(0, "POST", "/bindings/deactivate", binding, nil)
			want = func(a answer) bool { return a.status == http.StatusForbidden }
		case 2:
			kind = "activated"
			c.admin(0, "POST", "/bindings/activate", binding, nil)
			want = servedBy(cur)
		}
		changed := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 1; i < clusterReplicas; i++ {
			wg.Go(func() {
				d, ok, odd := c.waitFor(i, tok, changed, propagationBound, want)
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					never = append(never, fmt.Sprintf("change %d (%s) on r%d, statuses %v", n, kind, i, odd))
					return
				}
				lat[kind] = append(lat[kind], d)
				lat["all"] = append(lat["all"], d)
			})
		}
		wg.Wait()
	}
	as := l.finish()
	for _, kind := range []string{"moved", "deactivated", "activated", "all"} {
		t.Logf("binding %s through r0, seen on r1 and r2 after the call returned: %s", kind, fmtPct(lat[kind]))
	}
	t.Logf("binding changes: background load statuses %v", statusCounts(as))
	if len(never) > 0 {
		t.Errorf("%d binding changes not seen within %v: %v", len(never), propagationBound, never)
	}
	if _, p99, top := percentiles(lat["all"]); p99 > propagationTarget {
		t.Errorf("binding changes reach the other replicas in p99 %v (max %v), over the %v target: propagation is by the 1 s poll only (no LISTEN/NOTIFY push: issue 12 defect 3)", p99, top, propagationTarget)
	}
	if n := len(as) - statusCounts(as)[http.StatusOK]; n > 0 {
		t.Errorf("%d of %d background requests were not answered 200: %v", n, len(as), statusCounts(as))
	}
}

// TestClusterPartition: r2 is cut off from the database and a token is
// revoked through r0. Past the freshness bound r2 never accepts it: it
// answers 503 with Retry-After, and /readyz says store-stale. Healed, it
// refuses the token with 401 within 2 s and serves the others.
func TestClusterPartition(t *testing.T) {
	c := newCluster(t, nil)
	const cut = 2
	revokee, id := c.issueToken(0, "ws-part", "p")
	other, _ := c.issueToken(0, "ws-part", "p")
	for i := range clusterReplicas {
		for _, tok := range []string{revokee, other} {
			if _, ok, odd := c.waitFor(i, tok, time.Now(), propagationBound, func(a answer) bool { return a.status == http.StatusOK }); !ok {
				t.Fatalf("r%d does not serve a new token (statuses %v)", i, odd)
			}
		}
	}
	for _, admin := range []bool{false, true} {
		if code, body := c.readyz(cut, admin); code != http.StatusOK {
			t.Fatalf("r%d /readyz (admin port %v) before the partition: %d %s", cut, admin, code, body)
		}
	}
	c.pg.partition(cut)
	healed := false
	defer func() {
		if !healed {
			c.pg.heal(cut)
		}
	}()
	c.admin(0, "DELETE", "/tokens/"+id, nil, nil)
	revoked := time.Now()
	bound := revoked.Add(clusterStaleness + time.Second)
	hold := clusterStaleness + 3*time.Second

	// During the partition: r2 with the revoked token, r2's /readyz.
	var after []answer
	var lastAccepted time.Duration = -1
	// The first store-stale /readyz on the proxy port and on the admin
	// port, and what they said past the bound.
	firstUnready := [2]time.Duration{-1, -1}
	var readyAfter []string
	var wg sync.WaitGroup
	wg.Go(func() {
		for time.Since(revoked) < hold {
			for p, admin := range []bool{false, true} {
				code, body := c.readyz(cut, admin)
				if time.Now().After(bound) && len(readyAfter) < 4 {
					readyAfter = append(readyAfter, fmt.Sprintf("%d %s", code, body))
				}
				if code == http.StatusServiceUnavailable && strings.Contains(body, `"store-stale"`) && firstUnready[p] < 0 {
					firstUnready[p] = time.Since(revoked)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	for time.Since(revoked) < hold {
		a := c.infer(context.Background(), cut, revokee, inferOpts{})
		if a.status == http.StatusOK {
			lastAccepted = time.Since(revoked)
		}
		if a.sent.After(bound) {
			after = append(after, a)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	var accepted, unavailable, noRetryAfter int
	for _, a := range after {
		switch {
		case a.status == http.StatusOK:
			accepted++
		case a.status == http.StatusServiceUnavailable:
			unavailable++
			if a.retryAfter == "" {
				noRetryAfter++
			}
		}
	}
	c.pg.heal(cut)
	healed = true
	heal := time.Now()
	var refusedIn, servedIn time.Duration
	var refusedOK, servedOK bool
	var odd, oddOther []int
	wg.Go(func() {
		refusedIn, refusedOK, odd = c.waitFor(cut, revokee, heal, 10*time.Second, func(a answer) bool { return a.status == http.StatusUnauthorized })
	})
	wg.Go(func() {
		servedIn, servedOK, oddOther = c.waitFor(cut, other, heal, 10*time.Second, func(a answer) bool { return a.status == http.StatusOK })
	})
	wg.Wait()

	t.Logf("partition of r%d (bound %v), revoked token: last accepted %s after the revoke; from bound+1 s on %d requests, statuses %v (%d of the 503s without Retry-After)",
		cut, clusterStaleness, orNever(lastAccepted), len(after), statusCounts(after), noRetryAfter)
	t.Logf("partition: /readyz store-stale %s (admin port %s) after the revoke; past the bound it said %q", orNever(firstUnready[0]), orNever(firstUnready[1]), readyAfter)
	t.Logf("partition healed: revoked token 401 after %v (%v, statuses before %v); other token 200 after %v (%v, %v)",
		refusedIn.Round(time.Millisecond), refusedOK, odd, servedIn.Round(time.Millisecond), servedOK, oddOther)

	if accepted > 0 {
		t.Errorf("the partitioned replica accepted the revoked token %d times past the freshness bound (last %s after the revoke): it answers from its cache without knowing it is fresh (issue 12 defect 1)", accepted, orNever(lastAccepted))
	}
	if len(after) == 0 || unavailable != len(after) || noRetryAfter > 0 {
		t.Errorf("past the bound the partitioned replica must answer 503 with Retry-After: got %v, %d without Retry-After", statusCounts(after), noRetryAfter)
	}
	if u := slices.Max(firstUnready[:]); slices.Min(firstUnready[:]) < 0 || u > clusterStaleness+time.Second {
		t.Errorf("/readyz of the partitioned replica did not say 503 store-stale on both ports within the bound + 1 s (first %s, admin port %s; it said %q): a load balancer keeps routing to it (issue 12 defect 1)",
			orNever(firstUnready[0]), orNever(firstUnready[1]), readyAfter)
	}
	if !refusedOK || refusedIn > 2*time.Second {
		t.Errorf("healed, the replica refused the revoked token only after %v (%v), want 401 within 2 s", refusedIn, refusedOK)
	}
	if !servedOK || servedIn > 2*time.Second {
		t.Errorf("healed, the replica served another token only after %v (%v), want 200 within 2 s", servedIn, servedOK)
	}
}

// orNever formats a time since an event, or "never" for a negative one.
func orNever(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}

// TestClusterOutage: the database refuses every replica for 20 s under
// load. Clients get 200 within the freshness bound, then 503 with
// Retry-After, never 500, answered fast; after healing, the writers commit
// their backlog within 2 s and no usage record is lost.
func TestClusterOutage(t *testing.T) {
	c := newCluster(t, nil)
	db := c.pg.open(c.db)
	tok, _ := c.issueToken(0, "ws-outage", "p")
	for i := range clusterReplicas {
		if _, ok, odd := c.waitFor(i, tok, time.Now(), propagationBound, func(a answer) bool { return a.status == http.StatusOK }); !ok {
			t.Fatalf("r%d does not serve a new token (statuses %v)", i, odd)
		}
	}
	coldTok, _ := c.issueToken(0, "ws-outage", "p")
	const outage = 20 * time.Second
	l := c.startLoad(tok, 2*clusterReplicas, 40*time.Millisecond, false)
	time.Sleep(2 * time.Second)
	all := []int{0, 1, 2}
	c.pg.partition(all...)
	down := time.Now()
	healed := false
	defer func() {
		if !healed {
			c.pg.heal(all...)
		}
	}()
	// A token never used before the outage is a cache miss on every
	// replica: the database error path, not the cache.
	time.Sleep(clusterStaleness + time.Second)
	var miss []answer
	for i := range clusterReplicas {
		for range 3 {
			miss = append(miss, c.infer(context.Background(), i, coldTok, inferOpts{}))
		}
	}
	time.Sleep(time.Until(down.Add(outage)))
	c.pg.heal(all...)
	healed = true
	up := time.Now()
	sawAtHeal := c.fake.counters().Requests
	caughtUp := time.Duration(-1)
	var recs int
	caught := testkit.Poll(40*time.Second, 50*time.Millisecond, func() bool {
		recs = recordCount(t, db)
		return recs >= int(sawAtHeal)
	})
	if caught {
		caughtUp = time.Since(up)
	}
	time.Sleep(time.Until(up.Add(3 * time.Second)))
	as := l.finish()
	c.stopAll()

	var pre, within, past, post []answer
	var pastLat []time.Duration
	for _, a := range as {
		switch {
		case a.sent.Before(down):
			pre = append(pre, a)
		case a.sent.Before(down.Add(clusterStaleness)):
			within = append(within, a)
		case a.sent.Before(up):
			past = append(past, a)
			if a.sent.After(down.Add(clusterStaleness + time.Second)) {
				pastLat = append(pastLat, a.took)
			}
		default:
			post = append(post, a)
		}
	}
	var missLat []time.Duration
	for _, a := range miss {
		missLat = append(missLat, a.took)
	}
	var accepted, errors500, noRetryAfter int
	for _, a := range append(slices.Clone(miss), past...) {
		if a.sent.Before(down.Add(clusterStaleness + time.Second)) {
			continue
		}
		switch a.status {
		case http.StatusOK:
			accepted++
		case http.StatusServiceUnavailable:
			if a.retryAfter == "" {
				noRetryAfter++
			}
		}
	}
	for _, a := range append(miss, as...) {
		if a.status == http.StatusInternalServerError {
			errors500++
		}
	}
	saw := c.fake.counters().Requests
	final := recordCount(t, db)
	t.Logf("outage %v of all %d replicas (bound %v), %d requests: before %v; within the bound %v; past it %v; after healing %v",
		outage, clusterReplicas, clusterStaleness, len(as), statusCounts(pre), statusCounts(within), statusCounts(past), statusCounts(post))
	t.Logf("outage: latency from bound+1 s to healing %s; %d of those 503s without Retry-After", fmtPct(pastLat), noRetryAfter)
	t.Logf("outage: a token not cached anywhere, past the bound: statuses %v, latency %s", statusCounts(miss), fmtPct(missLat))
	t.Logf("outage: writers caught up with the %d requests the provider had seen at healing %s after it (%d records at the end of the wait); in the end %d records for %d requests the provider saw",
		sawAtHeal, orNever(caughtUp), recs, final, saw)

	// The last good poll may be up to 1 s before the outage began, so the
	// bound may end 1 s early: "early" leaves that and half a second more.
	var early, lateAfterHeal []answer
	for _, a := range within {
		if a.sent.Before(down.Add(clusterStaleness-1500*time.Millisecond)) && a.status != http.StatusOK {
			early = append(early, a)
		}
	}
	for _, a := range post {
		if a.sent.After(up.Add(2*time.Second)) && a.status != http.StatusOK {
			lateAfterHeal = append(lateAfterHeal, a)
		}
	}
	if len(early) > 0 {
		t.Errorf("%d requests failed early in the outage, within the freshness bound (statuses %v): a cached answer known fresh enough must be served (stale-if-error, issue 12 defect 4)", len(early), statusCounts(early))
	}
	if len(lateAfterHeal) > 0 {
		t.Errorf("%d requests failed more than 2 s after healing (statuses %v)", len(lateAfterHeal), statusCounts(lateAfterHeal))
	}
	if errors500 > 0 {
		t.Errorf("%d requests answered 500 during the outage: database errors are internal errors, not 503 (issue 12 defect 4)", errors500)
	}
	if accepted > 0 {
		t.Errorf("%d requests accepted past the freshness bound while no replica could reach the database: caches serve without knowing they are fresh (issue 12 defect 1)", accepted)
	}
	if noRetryAfter > 0 {
		t.Errorf("%d 503s past the bound without Retry-After", noRetryAfter)
	}
	if _, p99, _ := percentiles(pastLat); p99 > 300*time.Millisecond {
		t.Errorf("p99 latency during the outage %v, want under 300 ms: each request waits on the unreachable database (issue 12 defect 4)", p99)
	}
	if n := statusCounts(miss)[http.StatusServiceUnavailable]; n != len(miss) {
		t.Errorf("a token not cached anywhere got %v during the outage, want 503 with Retry-After every time: the replica cannot tell, so it must not answer as if it could (issue 12 defect 4)", statusCounts(miss))
	}
	if _, p99, _ := percentiles(missLat); p99 > 300*time.Millisecond {
		t.Errorf("a cache miss during the outage took p99 %v, want under 300 ms: it waits on the unreachable database (issue 12 defect 4)", p99)
	}
	if !caught || caughtUp > 2*time.Second {
		t.Errorf("the writers committed the backlog %s after healing, want within 2 s: their backoff sleeps up to 30 s without probing (issue 12 defect 5)", orNever(caughtUp))
	}
	if final != int(saw) {
		t.Errorf("%d usage records for %d requests the provider saw: %d lost", final, saw, int(saw)-final)
	}
}

// TestClusterKillStreams: kill -9 of one replica under streaming load
// (2.5 s streams, about 40 in flight), restarted on the same spool: every
// request the provider saw has exactly one record, the streams cut by the
// kill as outcome "interrupted".
func TestClusterKillStreams(t *testing.T) {
	c := newCluster(t, nil, "-gap", "50ms", "-events", "50")
	db := c.pg.open(c.db)
	tok, _ := c.issueToken(0, "ws-kill", "p")
	const victim = 1
	l := c.startLoad(tok, 40, 10*time.Millisecond, true)
	time.Sleep(4 * time.Second)
	inflight := c.fake.counters().StreamsActive
	c.rep(victim).kill9()
	killed := time.Now()
	time.Sleep(1500 * time.Millisecond)
	as := l.finish()
	c.start(victim)
	c.stopAll()

	ids := c.fake.clientIDs()
	counters := c.fake.counters()
	type row struct {
		n       int
		outcome string
	}
	rows := map[string]row{}
	q, err := db.Query(`SELECT request_id, outcome FROM usage_records WHERE outcome <> 'rejected'`)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for q.Next() {
		var id, outcome string
		if err := q.Scan(&id, &outcome); err != nil {
			t.Fatal(err)
		}
		r := rows[id]
		rows[id] = row{r.n + 1, outcome}
		total++
	}
	q.Close()
	var cut, cutRecorded, cutInterrupted, seenMissing, doubled, complete int
	outcomes := map[string]int{}
	for _, a := range as {
		if a.reqID == "" {
			continue
		}
		if ids[a.clientID].Seen == 0 {
			continue
		}
		r := rows[a.reqID]
		if r.n > 1 {
			doubled++
		}
		if r.n == 0 {
			seenMissing++
		}
		if a.complete {
			complete++
			continue
		}
		if a.replica == victim && a.sent.Before(killed) {
			cut++
			outcomes[r.outcome]++
			if r.n > 0 {
				cutRecorded++
			}
			if r.outcome == "interrupted" {
				cutInterrupted++
			}
		}
	}
	var rolled, raw int
	if err := db.QueryRow(`SELECT (SELECT COALESCE(SUM(requests), 0) FROM usage_daily), (SELECT COUNT(*) FROM usage_records)`).Scan(&rolled, &raw); err != nil {
		t.Fatal(err)
	}
	var provSeen, provAnswered int
	for _, v := range ids {
		provSeen += v.Seen
		provAnswered += v.Answered
	}
	t.Logf("kill -9 of r%d with %d streams open at the provider; %d requests, statuses %v, %d complete", victim, inflight, len(as), statusCounts(as), complete)
	t.Logf("kill: the provider saw %d requests (%d client ids, %d answered to the end; counters %+v); %d usage records",
		counters.Requests, provSeen, provAnswered, counters, total)
	t.Logf("kill: %d streams cut by the kill (headers seen by the client): %d have a record, %d as interrupted (outcomes %v); %d requests the provider saw without a record, %d doubled",
		cut, cutRecorded, cutInterrupted, outcomes, seenMissing, doubled)
	t.Logf("kill: usage_daily counts %d requests, usage_records holds %d rows", rolled, raw)

	if cut == 0 {
		t.Errorf("no stream was in flight on r%d at the kill: the run proves nothing", victim)
	}
	if total != int(counters.Requests) {
		t.Errorf("%d usage records for %d requests the provider saw: the streams in flight at kill -9 are lost (no start entry in the spool: issue 12 defect 6)", total, counters.Requests)
	}
	if cutInterrupted != cut {
		t.Errorf("%d of %d streams cut by the kill are recorded as interrupted (outcomes %v)", cutInterrupted, cut, outcomes)
	}
	if rolled != raw {
		t.Errorf("usage_daily counts %d requests for %d usage records: the rollup and the raw rows disagree", rolled, raw)
	}
	if seenMissing > 0 || doubled > 0 {
		t.Errorf("of the requests the provider saw, %d have no record and %d more than one", seenMissing, doubled)
	}
}
