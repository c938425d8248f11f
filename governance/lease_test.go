package governance

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/internal/testkit"
)

// cmdCounter counts the commands a limiter's client sends, by name.
type cmdCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func countCommands(r *RedisLimiter) *cmdCounter {
	c := &cmdCounter{n: map[string]int{}}
	r.rdb.AddHook(c)
	return c
}

func (c *cmdCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *cmdCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") { // go-redis then sends EVAL
			c.mu.Lock()
			c.n[cmd.Name()]++
			c.mu.Unlock()
		}
		return err
	}
}

func (c *cmdCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			c.n[cmd.Name()]++
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// scripts is how many script calls were made (EVALSHA, or EVAL when the
// script was not loaded yet).
func (c *cmdCounter) scripts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n["evalsha"] + c.n["eval"]
}

// String is the counts so far, read under the lock: the sync loop may be
// counting while a test prints them.
func (c *cmdCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.n)
}

func (c *cmdCounter) reset() {
	c.mu.Lock()
	clear(c.n)
	c.mu.Unlock()
}

// leaseRig is miniredis on a fake clock (its TIME and TTLs follow it) and
// limiters on it: replicas sharing one prefix.
type leaseRig struct {
	m     *miniredis.Miniredis
	clock *rateClock
}

func newLeaseRig(t *testing.T) *leaseRig {
	g := &leaseRig{m: miniredis.RunT(t), clock: newRateClock()}
	g.m.SetTime(g.clock.Now())
	g.m.ClockTTL(true)
	return g
}

func (g *leaseRig) advance(d time.Duration) {
	g.clock.Advance(d)
	g.m.SetTime(g.clock.Now())
}

// limiter is one replica; replicas is what it believes the live count is.
func (g *leaseRig) limiter(t *testing.T, replicas int) *RedisLimiter {
	r := newRedis(t, "redis://"+g.m.Addr(), "tg:", -1, g.clock.Now, g.advance)
	r.cfg.Replicas = func() int { return replicas }
	return r
}

// held is what r's batches for limit id hold.
func held(r *RedisLimiter, id string) (rpm, tpm int64) {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	if e := r.entries[id]; e != nil {
		return e.rpm.have, e.tpm.have
	}
	return 0, 0
}

// warm sends n requests every apart (each released at actual tokens),
// then lets the window end and sends one more, which sizes the batches
// and asks for them; the refill has landed when warm returns.
func (g *leaseRig) warm(t *testing.T, r *RedisLimiter, lims []Limit, n int, every time.Duration, tokens, actual int64) {
	t.Helper()
	start := g.clock.Now()
	for i := range n {
		limitAdmits(t, r, "warm", lims, tokens).Release(actual)
		if i < n-1 {
			g.advance(every)
		}
	}
	g.advance(r.leaseWindow - g.clock.Now().Sub(start))
	limitAdmits(t, r, "warm", lims, tokens).Release(actual)
	r.syncRound(false)
}

// Under a big limit, a warm replica admits 1,000 requests with a handful
// of script calls; while it was cold, every request was one.
func TestRedisLeaseBigLimit(t *testing.T) {
	lims := []Limit{{ID: "big", Selector: acmeProject, RPM: 600_000, TPM: 1_000_000_000}}
	t.Run("miniredis", func(t *testing.T) {
		g := newLeaseRig(t)
		r := g.limiter(t, 1)
		cmds := countCommands(r)
		g.warm(t, r, lims, 1000, time.Millisecond, 1000, 900)
		if cold := cmds.scripts(); cold < 1000 {
			t.Fatalf("cold: %d script calls for 1,001 requests, want one each", cold)
		}
		rpm, tpm := held(r, "big")
		// 1,000 requests and 900,000 tokens in the last second: twice that.
		if rpm != 2000 || tpm != 1_800_000 {
			t.Fatalf("batches held: rpm %d tpm %d, want 2000 and 1800000", rpm, tpm)
		}
		cmds.reset()
		for i := range 3000 { // three seconds: refills, no per-request call
			limitAdmits(t, r, "hot", lims, 1000).Release(900)
			g.advance(time.Millisecond)
			if i%100 == 0 {
				// The fake clock runs far faster than the sync loop,
				// which a busy machine may not even schedule before the
				// batch runs dry: a round every 100 fake ms.
				r.syncRound(false)
			}
		}
		if n := cmds.scripts(); n < 1 || n > 20 {
			t.Fatalf("warm: %d script calls for 3,000 requests, want 1..20 (%v)", n, cmds)
		}
		t.Logf("warm: %d script calls for 3,000 requests (%v)", cmds.scripts(), cmds)
	})
	t.Run("redis", func(t *testing.T) {
		url := os.Getenv("TOLLGATE_TEST_REDIS")
		if url == "" {
			t.Skip("TOLLGATE_TEST_REDIS is not set")
		}
		lims := []Limit{{ID: "big", Selector: acmeProject, RPM: 1e9, TPM: 1e12}} // the bench's (tollgate-bench S1g)
		r := newRedis(t, url, testPrefix(t, url), -1, nil, nil)
		r.leaseWindow = 100 * time.Millisecond
		cmds := countCommands(r)
		for start := time.Now(); time.Since(start) < 250*time.Millisecond; {
			limitAdmits(t, r, "warm", lims, 1000).Release(900)
		}
		testkit.Eventually(t, time.Second, "a batch held", func() bool { rpm, tpm := held(r, "big"); return rpm > 0 && tpm > 0 })
		cmds.reset()
		for range 1000 {
			limitAdmits(t, r, "hot", lims, 1000).Release(900)
		}
		if n := cmds.scripts(); n > 20 {
			t.Fatalf("warm: %d script calls for 1,000 requests, want <= 20 (%v)", n, cmds)
		}
		t.Logf("warm: %d script calls for 1,000 requests (%v)", cmds.scripts(), cmds)
	})
}

// Which limits get a batch: small ones (RPM 60 or TPM 8,400 of 140-token
// requests on three replicas, the cluster test's) never do.
func TestRedisLeaseBatchSize(t *testing.T) {
	for _, c := range []struct {
		name             string
		kind             limitKind
		limit, replicas  int64
		used, reqs, want int64
	}{
		{"rpm 60 on 3 replicas, at the limit", kindRPM, 60, 3, 60, 60, 0},
		{"rpm 6000 on 3 replicas, 100/s", kindRPM, 6000, 3, 100, 100, 200}, // the burst
		{"rpm 6000 on 3 replicas, 1/s", kindRPM, 6000, 3, 1, 1, 0},
		{"rpm 1e9 on 1 replica, 500/s", kindRPM, 1e9, 1, 500, 500, 1000},
		{"rpm 2400 on 3 replicas, 500/s", kindRPM, 2400, 3, 500, 500, 80}, // limit/24
		{"tpm 8400 on 3 replicas, 140-token requests", kindTPM, 8400, 3, 420, 3, 0},
		{"tpm 1e6 on 3 replicas, 10 requests of 1000", kindTPM, 1e6, 3, 10_000, 10, 20_000},
		{"tpm 1e6 on 3 replicas, a 20k request", kindTPM, 1e6, 3, 20_000, 1, 0}, // 4 of them do not fit limit/24
		{"tpm unused", kindTPM, 1e6, 1, 0, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &RedisLimiter{cfg: RedisConfig{Replicas: func() int { return int(c.replicas) }}}
			b := &leaseBucket{kind: c.kind, limit: c.limit, prev: c.used, prevReqs: c.reqs}
			if c.kind == kindRPM {
				b.burst = rpmBurst(c.limit)
			}
			if got := r.batchSize(b); got != c.want {
				t.Fatalf("batch %d, want %d", got, c.want)
			}
		})
	}
}

// RPM 60 on three replicas keeps the exact per-request path however busy
// the replica: one script call per attempt, no batch.
func TestRedisNoLeaseForRPM60(t *testing.T) {
	g := newLeaseRig(t)
	r := g.limiter(t, 3)
	cmds := countCommands(r)
	lims := []Limit{{ID: "sixty", Selector: acmeProject, RPM: 60}}
	admitted, tries := 0, 0
	for range 100 { // ten seconds, ten tries a second
		tries++
		if p, _, _ := r.Acquire(context.Background(), "s", lims, 0); p != nil {
			admitted++
		}
		g.advance(100 * time.Millisecond)
	}
	r.syncRound(false)
	if n := cmds.scripts(); n != tries {
		t.Fatalf("%d script calls for %d tries, want one each", n, tries)
	}
	if rpm, _ := held(r, "sixty"); rpm != 0 || admitted != 11 {
		t.Fatalf("held %d, admitted %d of %d, want 0 and 11 (burst 2, then one a second)", rpm, admitted, tries)
	}
}

// All or nothing still holds when one of a request's limits is served
// from a batch and the other by Redis: a refusal by either takes nothing
// from the other.
func TestRedisLeaseAllOrNothing(t *testing.T) {
	t.Run("leased rpm, refused by tpm", func(t *testing.T) {
		big := Limit{ID: "big-rpm", Selector: acmeProject, RPM: 600_000}
		small := Limit{ID: "small-tpm", Selector: acmeProject, TPM: 1000}
		r, before := leasedOne(t, big, 0)
		limitAdmits(t, r, "pre", []Limit{small}, 600)
		if ref := limitRefuses(t, r, "both", []Limit{big, small}, 500); ref.Policy != "project:acme/tpm" {
			t.Fatalf("refusal %+v", *ref)
		}
		if after, _ := held(r, "big-rpm"); after != before {
			t.Fatalf("the refused request kept an rpm unit: batch %d, was %d", after, before)
		}
		limitAdmits(t, r, "fits", []Limit{big, small}, 400)
		if after, _ := held(r, "big-rpm"); after != before-1 {
			t.Fatalf("admitted: batch %d, want %d", after, before-1)
		}
		if ref := limitRefuses(t, r, "probe", []Limit{small}, 1000); ref.Remaining != 0 {
			t.Fatalf("tpm left %d, want 0 (600 + 400 of 1000)", ref.Remaining)
		}
	})
	t.Run("leased tpm, refused by rpm", func(t *testing.T) {
		big := Limit{ID: "big-tpm", Selector: acmeProject, TPM: 100_000_000}
		small := Limit{ID: "small-rpm", Selector: acmeProject, RPM: 60}
		r, before := leasedOne(t, big, 100)
		limitAdmits(t, r, "a", []Limit{big, small}, 100)
		limitAdmits(t, r, "b", []Limit{big, small}, 100)
		if ref := limitRefuses(t, r, "c", []Limit{big, small}, 100); ref.Policy != "project:acme/rpm" {
			t.Fatalf("refusal %+v", *ref)
		}
		if _, after := held(r, "big-tpm"); after != before-200 {
			t.Fatalf("tpm batch %d, want %d: two admitted, the refused one took nothing", after, before-200)
		}
	})
}

// leasedOne is a replica warmed (requests of tokens) until it holds a
// batch of big's one rate part, and what the batch holds.
func leasedOne(t *testing.T, big Limit, tokens int64) (*RedisLimiter, int64) {
	t.Helper()
	g := newLeaseRig(t)
	r := g.limiter(t, 1)
	g.warm(t, r, []Limit{big}, 100, 10*time.Millisecond, tokens, tokens)
	rpm, tpm := held(r, big.ID)
	if big.TPM > 0 {
		rpm = tpm
	}
	if rpm == 0 {
		t.Fatalf("no batch of %s", big.ID)
	}
	return r, rpm
}

// limitAdmitsAll counts admissions until the first refusal (at most max).
func limitAdmitsAll(r Limiter, id string, lims []Limit, max int) int {
	for n := range max {
		p, _, _ := r.Acquire(context.Background(), id, lims, 0)
		if p == nil {
			return n
		}
	}
	return max
}

// A replica that goes quiet gives its batch back, and so does one that
// closes: another replica can then use it.
func TestRedisLeaseReturn(t *testing.T) {
	// RPM 3000: a burst of 100 at 20 ms each. Sixty requests in the first
	// second size the batch at 100, of which 89 still fit the burst.
	lims := []Limit{{ID: "ret", Selector: acmeProject, RPM: 3000}}
	for _, how := range []string{"idle", "close"} {
		t.Run(how, func(t *testing.T) {
			g := newLeaseRig(t)
			a, b := g.limiter(t, 1), g.limiter(t, 1)
			a.leaseIdle = 10 * time.Millisecond
			g.warm(t, a, lims, 60, time.Millisecond, 0, 0)
			lent, _ := held(a, "ret")
			if lent != 89 {
				t.Fatalf("batch %d, want 89", lent)
			}
			limitRefuses(t, b, "b", lims, 0)
			if how == "idle" {
				g.advance(a.leaseIdle)
				a.syncRound(false)
			} else {
				a.Close()
			}
			if rpm, _ := held(a, "ret"); rpm != 0 {
				t.Fatalf("still held %d", rpm)
			}
			if n := limitAdmitsAll(b, "b", lims, 200); n != 89 {
				t.Fatalf("the other replica admitted %d, want the 89 given back", n)
			}
		})
	}
	t.Run("redis", func(t *testing.T) {
		// On real Redis (its Lua) in real time, where refill blurs what
		// another replica could admit: the return shows in the TAT, which
		// only admissions move forward.
		url := os.Getenv("TOLLGATE_TEST_REDIS")
		if url == "" {
			t.Skip("TOLLGATE_TEST_REDIS is not set")
		}
		prefix := testPrefix(t, url)
		a := newRedis(t, url, prefix, -1, nil, nil)
		a.leaseWindow, a.leaseIdle = 25*time.Millisecond, 100*time.Millisecond
		// Demand over the lease window sizes the batch; a loaded machine
		// may run only a few of these admissions in 30 ms, so keep asking
		// (bounded) until a round has sized one.
		opt, _ := redis.ParseURL(url)
		c := redis.NewClient(opt)
		defer c.Close()
		tat := func() float64 {
			v, err := c.Get(context.Background(), prefix+"{limit:ret}:rpm").Float64()
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		// Demand over the lease window sizes the batch; a loaded machine
		// may run only a few of these admissions in 30 ms, so keep asking
		// (bounded) until a round has sized one. The TAT is read while the
		// batch is still held, before and after: a give-back between the
		// two reads (the sync loop runs meanwhile) would hide the return.
		var lent int64
		var before float64
		for deadline := time.Now().Add(3 * time.Second); lent == 0; {
			if time.Now().After(deadline) {
				t.Fatal("no batch held after 3 s of demand")
			}
			for start := time.Now(); time.Since(start) < 30*time.Millisecond; {
				a.Acquire(context.Background(), "a", lims, 0) // a refusal past the burst is fine here
				time.Sleep(time.Millisecond)
			}
			a.Acquire(context.Background(), "a", lims, 0)
			a.syncRound(false)
			lent, _ = held(a, "ret")
			before = tat()
			if still, _ := held(a, "ret"); still != lent {
				lent = 0 // it moved while the TAT was read: ask again
			}
		}
		testkit.Eventually(t, 2*time.Second, "the batch given back", func() bool { rpm, _ := held(a, "ret"); return rpm == 0 })
		step := float64((ratePeriod / 3000).Microseconds())
		if back := before - tat(); back < float64(lent)*step-1 || back > float64(lent)*step+1 {
			t.Fatalf("the TAT moved back %.0f µs, want %d × %.0f", back, lent, step)
		}
	})
}

// Debt past a leased TPM batch still makes later requests wait: this
// replica's next call carries it, and the flush brings it to the others
// within leaseFlush.
func TestRedisLeaseTPMDebt(t *testing.T) {
	// TPM 80,000 (0.75 ms a token); forty 100-token requests in a second
	// size the batch at 8,000.
	lims := []Limit{{ID: "debt", Selector: acmeProject, TPM: 80_000}}
	perToken := ratePeriod / 80_000
	for _, how := range []string{"next call", "flush"} {
		t.Run(how, func(t *testing.T) {
			g := newLeaseRig(t)
			a, b := g.limiter(t, 1), g.limiter(t, 1)
			if how == "next call" {
				a.leaseFlush = time.Hour
			}
			g.warm(t, a, lims, 40, 25*time.Millisecond, 100, 100)
			if _, tpm := held(a, "debt"); tpm != 8000 {
				t.Fatalf("batch %d, want 8000", tpm)
			}
			// 4,100 tokens used and 8,000 leased, a second's refill (1,333)
			// back: 69,233 left. Then 100 reserved, 100,000 used.
			limitAdmits(t, a, "big", lims, 100).Release(100_000)
			var ref *Refusal
			if how == "next call" {
				ref = limitRefuses(t, a, "after", lims, 100)
			} else {
				testkit.Eventually(t, time.Second, "the other replica waits", func() bool {
					p, r, _ := b.Acquire(context.Background(), "other", lims, 100)
					if p != nil {
						p.Release(100)
					}
					ref = r
					return r != nil
				})
			}
			// 99,900 of debt, 7,900 of it from the batch: the bucket is
			// 92,000 − 69,233 tokens past empty, and 100 more are asked.
			want := time.Duration(92_000-69_233+100) * perToken
			if ref.Policy != "project:acme/tpm" || ref.RetryAfter < want-time.Second || ref.RetryAfter > want+time.Second {
				t.Fatalf("after the debt: %+v, want a wait of about %v", *ref, want)
			}
		})
	}
}

// TPM corrections of a limit too small to lease cost no call at Release:
// they ride the next acquire for the key (or the flush).
func TestRedisTPMCorrectionsRide(t *testing.T) {
	g := newLeaseRig(t)
	r := g.limiter(t, 3)
	cmds := countCommands(r)
	lims := []Limit{{ID: "ride", Selector: acmeProject, TPM: 6000}} // 6000/24 < 4 requests of 150
	for range 30 {
		limitAdmits(t, r, "x", lims, 100).Release(150)
		g.advance(20 * time.Millisecond)
	}
	// 30 acquires; a flush (every 50 ms of real time) carries what no
	// acquire did yet.
	if n := cmds.scripts(); n < 30 || n > 40 {
		t.Fatalf("%d script calls for 30 requests, want 30 (+ a few flushes)", n)
	}
	// 4,500 charged (the last 50 owed until the probe carries them), and
	// 0.6 s of refill (60): 1,560 left.
	if ref := limitRefuses(t, r, "probe", lims, 6000); ref.Remaining != 1560 {
		t.Fatalf("left %d, want 1560", ref.Remaining)
	}
}

// Redis down while a batch is held: the batch is spent (even under a hard
// limit: it was taken from the shared bucket), a failed give-back keeps it,
// and only then does the limit's outage mode apply.
func TestRedisLeaseRedisDown(t *testing.T) {
	g := newLeaseRig(t)
	r := g.limiter(t, 1)
	logs := &testkit.LogBuffer{}
	r.log = slogTo(logs)
	r.probe = 0 // every call tries Redis
	lims := []Limit{{ID: "down", Selector: acmeProject, RPM: 3000, Mode: ModeHard}}
	g.warm(t, r, lims, 60, time.Millisecond, 0, 0)
	lent, _ := held(r, "down")
	if lent != 89 {
		t.Fatalf("batch %d, want 89", lent)
	}
	g.m.Close()
	setIdle(r, time.Millisecond)
	g.advance(time.Millisecond)
	r.syncRound(false) // the give-back fails
	if rpm, _ := held(r, "down"); rpm != lent || r.Healthy() {
		t.Fatalf("after a failed give-back: held %d of %d, healthy %v", rpm, lent, r.Healthy())
	}
	setIdle(r, time.Hour)
	for i := range lent {
		limitAdmits(t, r, "spend", lims, 0)
		if i%10 == 0 {
			r.syncRound(false) // refills fail too
		}
	}
	if ref := limitRefuses(t, r, "then", lims, 0); ref.Kind != RefuseUnavailable {
		t.Fatalf("after the batch: %+v, want the hard limit's unavailable refusal", *ref)
	}
	if n := strings.Count(logs.String(), "redis unreachable"); n != 1 {
		t.Fatalf("%d outage lines, want 1:\n%s", n, logs.String())
	}
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Close hung with Redis down")
	}
}

// setIdle changes leaseIdle under the lock the sync loop reads it under.
func setIdle(r *RedisLimiter, d time.Duration) {
	r.lmu.Lock()
	r.leaseIdle = d
	r.lmu.Unlock()
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// Accuracy where batches are allowed, on real Redis: three replicas
// overloading RPM 2,400 (a one-second period; burst 80, batches of up to
// 80) for four periods. From the second on (the first is cold: no batch
// yet), each period admits the limit, give or take the burst and what the
// batches hold (limit/8). At the limit, refills get little (the bucket has
// no room) and refusals go to Redis for their exact wait.
func TestRedisRealLeaseAccuracy(t *testing.T) {
	rg := realRig(t)
	if rg == nil {
		t.Skip("TOLLGATE_TEST_REDIS is not set")
	}
	const rpm = 2400
	lims := []Limit{{ID: "lease-accuracy", Selector: acmeProject, RPM: rpm}}
	var replicas []*RedisLimiter
	var cmds []*cmdCounter
	for range 3 {
		r := rg.limiter(t, -1).(*RedisLimiter)
		r.cfg.Replicas = func() int { return 3 }
		replicas = append(replicas, r)
		cmds = append(cmds, countCommands(r))
	}
	var mu sync.Mutex
	var at, tried []time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 6 {
		l := replicas[g%3]
		wg.Go(func() {
			for time.Since(start) < 4*time.Second {
				try := time.Since(start)
				p, _, _ := l.Acquire(context.Background(), "acc", lims, 0)
				mu.Lock()
				tried = append(tried, try)
				if p != nil {
					at = append(at, time.Since(start))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	counts := make([]int, 4)
	for _, a := range at {
		if p := int(a / time.Second); p < 4 {
			counts[p]++
		}
	}
	scripts := 0
	for _, c := range cmds {
		scripts += c.scripts()
	}
	t.Logf("admitted per period %v of %d tries, %d script calls", counts, len(tried), scripts)
	slack := rpmBurst(rpm) + rpm/leaseShare
	for p, c := range counts[1:] {
		// Fewer is allowed only for the slots the clients' own gaps lost
		// (a loaded machine; see checkRPMWindows); more never is.
		lost := starvedSlots(tried, time.Duration(p+1)*time.Second, time.Duration(p+2)*time.Second, time.Second, rpm)
		if c < rpm-int(slack)-lost || c > rpm+int(slack) {
			t.Errorf("period %d admitted %d, want %d ± %d (%d fewer allowed: the clients did not ask for that long)", p+1, c, rpm, slack, lost)
		}
	}
}
