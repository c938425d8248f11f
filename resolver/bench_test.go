package resolver

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// benchService returns a Service with a platform credential and a token,
// both already cached.
func benchService(tb testing.TB) (*Service, string) {
	tb.Helper()
	e := mustService(tb, filepath.Join(tb.TempDir(), "bench.db"))
	s := e.svc
	ctx := context.Background()
	if _, err := s.SetPlatformKey(ctx, "anthropic", NewSecret("sk-platform-anthropic-bench")); err != nil {
		tb.Fatal(err)
	}
	tok, _ := mustToken(tb, s, TokenSpec{Workspace: "w1", Project: "p1", User: "u1"})
	if _, err := s.Resolve(ctx, ccAnthropic); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, tok); err != nil {
		tb.Fatal(err)
	}
	return s, tok
}

// The cached paths are what every request takes: they must not allocate.
func TestCachedPathsDoNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	s, tok := benchService(t)
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() { s.Resolve(ctx, ccAnthropic) }); n != 0 {
		t.Errorf("Resolve from cache: %v allocs per op, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { s.Authenticate(ctx, tok) }); n != 0 {
		t.Errorf("Authenticate from cache: %v allocs per op, want 0", n)
	}
}

// benchP99 runs op b.N times, timing each call, and reports the 99th
// percentile alongside the mean.
func benchP99(b *testing.B, op func()) {
	b.Helper()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		op()
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkResolveCached(b *testing.B) {
	s, _ := benchService(b)
	ctx := context.Background()
	benchP99(b, func() {
		if _, err := s.Resolve(ctx, ccAnthropic); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkAuthenticateCached(b *testing.B) {
	s, tok := benchService(b)
	ctx := context.Background()
	benchP99(b, func() {
		if _, err := s.Authenticate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkResolveCachedParallel(b *testing.B) {
	s, _ := benchService(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Resolve(ctx, ccAnthropic); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkResolveCachedWeighted is the cost of the per-call draw of a
// binding of three credentials sharing a priority, plus a fallback.
func BenchmarkResolveCachedWeighted(b *testing.B) {
	e := mustService(b, filepath.Join(b.TempDir(), "bench.db"))
	s := e.svc
	ctx := context.Background()
	var cands []BindCandidate
	for i, w := range []int{5, 3, 2, 1} {
		c := mustCred(b, s, "anthropic", "sk-bench-weighted-000"+string(rune('a'+i)))
		cands = append(cands, BindCandidate{CredentialID: c.ID, Weight: w, Priority: i / 3})
	}
	if _, err := s.BindCandidates(ctx, BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}, cands); err != nil {
		b.Fatal(err)
	}
	benchP99(b, func() {
		if _, err := s.Resolve(ctx, ccAnthropic); err != nil {
			b.Fatal(err)
		}
	})
}
