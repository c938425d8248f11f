package governance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/internal/testkit"
)

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// newRedis returns a limiter on url; with a clock, its waits advance the
// clock (and whatever else advance moves) instead of sleeping. Its calls
// may take a second: on a loaded machine the 50 ms default times out, and
// the fallback (each replica its own limit) then fails accounting tests
// that are not about outages.
func newRedis(t testing.TB, url, prefix string, maxWait time.Duration, now func() time.Time, advance func(time.Duration)) *RedisLimiter {
	t.Helper()
	r, err := NewRedisLimiter(RedisConfig{URL: url, Prefix: prefix, MaxWait: maxWait, Timeout: time.Second, Log: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	if now != nil {
		r.now, r.fallback.now = now, now
		r.sleep = func(ctx context.Context, d time.Duration) error { advance(d); return ctx.Err() }
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// miniRig runs the Redis limiter on miniredis with TIME and TTLs both
// following a fake clock (SetTime + ClockTTL: FastForward alone would
// move TTLs but not TIME).
func miniRig(t *testing.T) *rateRig {
	m := miniredis.RunT(t)
	c := newRateClock()
	m.SetTime(c.Now())
	m.ClockTTL(true)
	advance := func(d time.Duration) { c.Advance(d); m.SetTime(c.Now()) }
	return &rateRig{
		name: "miniredis", exact: true, period: ratePeriod, now: c.Now, advance: advance,
		limiter: func(t *testing.T, maxWait time.Duration) Limiter {
			return newRedis(t, "redis://"+m.Addr(), "tg:", maxWait, c.Now, advance)
		},
	}
}

func miniLimiter(t *testing.T, m *miniredis.Miniredis) *RedisLimiter {
	if m == nil {
		m = miniredis.RunT(t)
	}
	return newRedis(t, "redis://"+m.Addr(), "tg:", -1, nil, nil)
}

// realRig is real Redis in real time, a period of one second, and a key
// prefix of its own that is deleted afterwards.
func realRig(t *testing.T) *rateRig {
	url := os.Getenv("TOLLGATE_TEST_REDIS")
	if url == "" {
		return nil
	}
	prefix := testPrefix(t, url)
	return &rateRig{
		name: "redis", period: time.Second, now: time.Now, advance: time.Sleep,
		limiter: func(t *testing.T, maxWait time.Duration) Limiter {
			r := newRedis(t, url, prefix, maxWait, nil, nil)
			r.period = time.Second
			return r
		},
	}
}

// testPrefix is a random key prefix whose keys are deleted when t ends.
func testPrefix(t testing.TB, url string) string {
	b := make([]byte, 6)
	rand.Read(b)
	prefix := "tgtest:" + hex.EncodeToString(b) + ":"
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c := redis.NewClient(opt)
		defer c.Close()
		ctx := context.Background()
		keys, _ := c.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return prefix
}

func TestRedisKeysAreTaggedAndExpire(t *testing.T) {
	m := miniredis.RunT(t)
	r := miniLimiter(t, m)
	lims := []Limit{{ID: "lim_1", Selector: acmeProject, RPM: 60, TPM: 1000, Concurrency: 3}}
	limitAdmits(t, r, "req-1", lims, 10)
	for key, ttl := range map[string]time.Duration{
		"tg:{limit:lim_1}:rpm":   2 * time.Minute,
		"tg:{limit:lim_1}:tpm":   2 * time.Minute,
		"tg:{limit:lim_1}:conc":  4 * time.Minute,
		"tg:{limit:lim_1}:clock": 2 * time.Minute,
	} {
		if !m.Exists(key) {
			t.Fatalf("%s missing; keys %v", key, m.Keys())
		}
		if got := m.TTL(key); got != ttl {
			t.Errorf("%s: ttl %v, want %v", key, got, ttl)
		}
	}
	if len(m.Keys()) != 4 {
		t.Fatalf("keys %v", m.Keys())
	}
}

// The script clamps Redis's clock: a step back does not refill a bucket.
func TestRedisClockStepBackIsClamped(t *testing.T) {
	rg := miniRig(t)
	l := rg.limiter(t, -1)
	lims := []Limit{{ID: "clock", Selector: acmeProject, RPM: 60}}
	limitAdmits(t, l, "a", lims, 0)
	limitAdmits(t, l, "b", lims, 0)
	rg.advance(-time.Hour)
	if ref := limitRefuses(t, l, "c", lims, 0); ref.RetryAfter != time.Second {
		t.Fatalf("after the clock stepped back an hour: %+v", *ref)
	}
}

// A permit never released (its replica crashed) frees its slot when the
// lease ends; a held permit's lease is renewed.
func TestRedisConcurrencyLease(t *testing.T) {
	lims := []Limit{{ID: "lease", Selector: acmeProject, Concurrency: 1}}
	t.Run("expiry", func(t *testing.T) {
		rg := miniRig(t)
		l := rg.limiter(t, -1)
		limitAdmits(t, l, "crashed", lims, 0) // never released
		rg.advance(concurrencyLease - time.Second)
		limitRefuses(t, l, "early", lims, 0)
		rg.advance(time.Second + time.Microsecond)
		limitAdmits(t, l, "after", lims, 0)
	})
	t.Run("renewal", func(t *testing.T) {
		rg := miniRig(t)
		r := rg.limiter(t, -1).(*RedisLimiter)
		r.renew = 10 * time.Millisecond
		p := limitAdmits(t, r, "streaming", lims, 0)
		for range 3 { // three times 90 s: well past one lease
			rg.advance(90 * time.Second)
			time.Sleep(50 * time.Millisecond) // the renewer runs on real time
			limitRefuses(t, r, "other", lims, 0)
		}
		p.Release(0)
		limitAdmits(t, r, "other", lims, 0)
	})
	t.Run("real", func(t *testing.T) {
		url := os.Getenv("TOLLGATE_TEST_REDIS")
		if url == "" {
			t.Skip("TOLLGATE_TEST_REDIS is not set")
		}
		r := newRedis(t, url, testPrefix(t, url), -1, nil, nil)
		r.lease = 300 * time.Millisecond
		limitAdmits(t, r, "crashed", lims, 0)
		limitRefuses(t, r, "early", lims, 0)
		time.Sleep(350 * time.Millisecond)
		limitAdmits(t, r, "after", lims, 0)
	})
}

func TestRateCancelWhileWaiting(t *testing.T) {
	t.Run("local", func(t *testing.T) { testCancelWhileWaiting(t, NewLocalLimiter(LocalConfig{})) })
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		testCancelWhileWaiting(t, newRedis(t, "redis://"+m.Addr(), "tg:", 0, nil, nil))
	})
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// N17: Redis down → soft limits fall back to this replica's share, hard
// limits refuse retryably, one log line per outage; Redis back → shared
// again.
func TestRedisDownFallsBackN17(t *testing.T) {
	addr := closedAddr(t)
	logs := &testkit.LogBuffer{}
	r, err := NewRedisLimiter(RedisConfig{URL: "redis://" + addr, MaxWait: -1, Replicas: func() int { return 3 },
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.probe = 20 * time.Millisecond
	if r.Healthy() {
		t.Fatal("healthy with nothing listening")
	}
	soft := []Limit{{ID: "soft", Selector: acmeProject, RPM: 60, Mode: ModeSoft}}
	hard := []Limit{{ID: "hard", Selector: acmeProject, RPM: 60, Mode: ModeHard}}
	// 60 / 3 replicas = 20 RPM here: a burst of one, then a 3 s wait.
	limitAdmits(t, r, "s", soft, 0).Release(0)
	for range 3 {
		ref := limitRefuses(t, r, "s2", soft, 0)
		if ref.Kind != RefuseRateLimit || ref.Limit != 60 || ref.RetryAfter < 2900*time.Millisecond || !strings.Contains(ref.Message, "60 requests/min") {
			t.Fatalf("fallback refusal %+v", *ref)
		}
		ref = limitRefuses(t, r, "h", hard, 0)
		if ref.Kind != RefuseUnavailable || ref.RetryAfter != UnavailableRetryAfter || ref.Policy != "project:acme/rpm" {
			t.Fatalf("hard refusal %+v", *ref)
		}
		time.Sleep(25 * time.Millisecond) // let the next try reach for Redis
	}
	// A slot taken in fallback: were the timed-out call to have run in
	// Redis after all, its release frees the Redis slot too.
	slot := []Limit{{ID: "slot", Selector: acmeProject, Concurrency: 3}}
	held := limitAdmits(t, r, "ambiguous", slot, 0)
	if n := strings.Count(logs.String(), "redis unreachable"); n != 1 {
		t.Fatalf("%d outage lines, want 1:\n%s", n, logs.String())
	}

	m := miniredis.NewMiniRedis()
	if err := m.StartAddr(addr); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	testkit.Eventually(t, 3*time.Second, "shared again", func() bool {
		p, _, _ := r.Acquire(context.Background(), "h", hard, 0)
		return p != nil
	})
	m.ZAdd("tg:{limit:slot}:conc", float64(time.Now().Add(time.Minute).UnixMicro()), "ambiguous")
	held.Release(0)
	if ok, _ := m.SortedSet("tg:{limit:slot}:conc"); len(ok) != 0 {
		t.Fatalf("the fallback permit left its Redis slot: %v", ok)
	}
	if !r.Healthy() || !m.Exists("tg:{limit:hard}:rpm") || !strings.Contains(logs.String(), "redis reachable again") {
		t.Fatalf("after recovery: healthy %v keys %v logs %s", r.Healthy(), m.Keys(), logs.String())
	}
}

// A Redis that accepts and never answers costs a request the timeout,
// then the fallback, and later requests not even that.
func TestRedisTimeoutFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	start := time.Now()
	r, err := NewRedisLimiter(RedisConfig{URL: "redis://" + ln.Addr().String(), Timeout: 50 * time.Millisecond, MaxWait: -1, Log: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.healthy.Store(true) // as if the ping had passed: the first request pays
	r.retryAt.Store(0)
	lims := []Limit{{ID: "t", Selector: acmeProject, RPM: 600}}
	limitAdmits(t, r, "a", lims, 0)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("first request took %v with a 50 ms timeout", d)
	}
	start = time.Now()
	for i := range 10 {
		limitAdmits(t, r, "b"+string(rune('0'+i)), lims, 0)
	}
	if d := time.Since(start); d > 20*time.Millisecond || r.Healthy() {
		t.Fatalf("ten requests during the outage took %v (healthy %v)", d, r.Healthy())
	}
}

// RPM accuracy on real Redis: three limiters (three replicas) and six
// goroutines overloading RPM 60 over a one-second period for four periods.
// Each period admits 60 ± 2, as a minute does at full scale.
func TestRedisRealRPMAccuracy(t *testing.T) {
	rg := realRig(t)
	if rg == nil {
		t.Skip("TOLLGATE_TEST_REDIS is not set")
	}
	lims := []Limit{{ID: "accuracy", Selector: acmeProject, RPM: 60}}
	replicas := []Limiter{rg.limiter(t, 500*time.Millisecond), rg.limiter(t, 500*time.Millisecond), rg.limiter(t, 500*time.Millisecond)}
	var mu sync.Mutex
	var at, tries []time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	for g := range 6 {
		l := replicas[g%3]
		wg.Go(func() {
			for time.Since(start) < 4*time.Second {
				try := time.Since(start)
				p, _, _ := l.Acquire(context.Background(), "acc", lims, 0)
				mu.Lock()
				tries = append(tries, try)
				if p != nil {
					at = append(at, time.Since(start))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	checkRPMWindows(t, at, time.Second, 60, 4, 1, tries)
}

// BenchmarkRedisAcquireRelease is one request's rate-limit cost on real
// Redis under big RPM and TPM limits (the S1g shape: every request passes
// both, none is refused): an Acquire and a Release that corrects TPM.
func BenchmarkRedisAcquireRelease(b *testing.B) {
	benchAcquireRelease(b, []Limit{{ID: "bench", Selector: acmeProject, RPM: 1 << 40, TPM: 1 << 50}})
}

// BenchmarkRedisAcquireReleaseConcurrency adds a concurrency limit, which
// stays exact per request: a slot taken and freed in Redis each time.
func BenchmarkRedisAcquireReleaseConcurrency(b *testing.B) {
	benchAcquireRelease(b, []Limit{{ID: "bench", Selector: acmeProject, RPM: 1 << 40, TPM: 1 << 50, Concurrency: 1 << 20}})
}

func benchAcquireRelease(b *testing.B, lims []Limit) {
	url := os.Getenv("TOLLGATE_TEST_REDIS")
	if url == "" {
		b.Skip("TOLLGATE_TEST_REDIS is not set")
	}
	r := newRedis(b, url, testPrefix(b, url), -1, nil, nil)
	ctx := context.Background()
	// A second of traffic first: a lease is sized from the last second's use.
	for start := time.Now(); time.Since(start) < 1100*time.Millisecond; {
		p, _, _ := r.Acquire(ctx, "warm", lims, 1000)
		if p != nil {
			p.Release(900)
		}
	}
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		p, ref, err := r.Acquire(ctx, "bench", lims, 1000)
		if p == nil {
			b.Fatal(ref, err)
		}
		p.Release(900)
		lat = append(lat, time.Since(t0))
	}
	if !r.Healthy() {
		b.Fatal("fell back during the benchmark")
	}
	reportLatency(b, lat)
}

// The same keys and TTLs on real Redis (Lua 5.1's string.format, not
// gopher-lua's, renders the numbers).
func TestRedisRealKeysExpire(t *testing.T) {
	url := os.Getenv("TOLLGATE_TEST_REDIS")
	if url == "" {
		t.Skip("TOLLGATE_TEST_REDIS is not set")
	}
	prefix := testPrefix(t, url)
	r := newRedis(t, url, prefix, -1, nil, nil)
	lims := []Limit{{ID: "lim_1", Selector: acmeProject, RPM: 60, TPM: 1000, Concurrency: 3}}
	p := limitAdmits(t, r, "req-1", lims, 10)
	opt, _ := redis.ParseURL(url)
	c := redis.NewClient(opt)
	defer c.Close()
	ctx := context.Background()
	if got, _ := c.PTTL(ctx, prefix+"{limit:lim_1}:conc").Result(); got <= 4*time.Minute-2*time.Second || got > 4*time.Minute {
		t.Errorf("conc: pttl %v, want about 4m", got)
	}
	p.Release(2000) // 1990 tokens of debt: the TPM key must outlive it
	// The debt is owed until the next flush (leaseFlush).
	testkit.Eventually(t, time.Second, "the debt flushed", func() bool {
		got, _ := c.PTTL(ctx, prefix+"{limit:lim_1}:tpm").Result()
		return got > 2*time.Minute
	})
	for key, ttl := range map[string]time.Duration{"rpm": 2 * time.Minute, "tpm": 180 * time.Second, "clock": 2 * time.Minute} {
		got, err := c.PTTL(ctx, prefix+"{limit:lim_1}:"+key).Result()
		if err != nil || got <= ttl-2*time.Second || got > ttl {
			t.Errorf("%s: pttl %v (%v), want about %v", key, got, err, ttl)
		}
	}
	if n, _ := c.ZCard(ctx, prefix+"{limit:lim_1}:conc").Result(); n != 0 {
		t.Errorf("released slot still in the set (%d)", n)
	}
}

// BenchmarkRedisAcquireRPM is the common case: an RPM-only limit, one
// script call and no Release call.
func BenchmarkRedisAcquireRPM(b *testing.B) {
	url := os.Getenv("TOLLGATE_TEST_REDIS")
	if url == "" {
		b.Skip("TOLLGATE_TEST_REDIS is not set")
	}
	r := newRedis(b, url, testPrefix(b, url), -1, nil, nil)
	lims := []Limit{{ID: "bench-rpm", Selector: acmeProject, RPM: 1 << 40}}
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		t0 := time.Now()
		p, ref, err := r.Acquire(ctx, "bench", lims, 0)
		if p == nil {
			b.Fatal(ref, err)
		}
		p.Release(0)
		lat = append(lat, time.Since(t0))
	}
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
