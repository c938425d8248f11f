package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"math"
	"os"
	"strings"
	"testing"
)

func TestScenariosAcceptS1gAnyCase(t *testing.T) {
	for _, in := range []string{"S1,S1g", "s1,s1G", " S1G "} {
		c, err := parseConfig([]string{"-scenarios", in}, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if !c.Scenarios["S1g"] {
			t.Errorf("%q: S1g not selected: %v", in, c.Scenarios)
		}
	}
	c, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Scenarios["S1g"] || c.RedisURL != "redis://127.0.0.1:6379/0" {
		t.Errorf("default run: S1g %v, -redis %q", c.Scenarios["S1g"], c.RedisURL)
	}
	if _, err := parseConfig([]string{"-s1g-rate", "0"}, io.Discard); err == nil || !strings.Contains(err.Error(), "-s1g-rate") {
		t.Errorf("-s1g-rate 0: got %v, want an error naming the flag", err)
	}
}

// govBench is a finished S1g with the given per-repetition figures for
// governance off and on.
func govBench(off, on []float64, key, point string) *bench {
	cfg := &config{Reps: len(off), S1Conns: 64, S1gRate: 500, Scenarios: map[string]bool{"S1g": true}}
	b := &bench{cfg: cfg, gov: &govRun{}, totals: map[string]*tally{}, fakeVia: map[string]int64{}}
	if point == "" {
		point = b.s1gClosed()
	}
	for i := range off {
		b.runs = append(b.runs,
			&runRec{Scenario: "S1g", Point: point, Target: "tollgate", Rep: i + 1, Metrics: map[string]float64{key: off[i]}},
			&runRec{Scenario: "S1g", Point: point, Target: govTarget, Rep: i + 1, Metrics: map[string]float64{key: on[i]}})
	}
	return b
}

func TestGovCellsPairWithinRepetition(t *testing.T) {
	// Pairing within a repetition: a drift that hits both runs of a
	// repetition leaves its ratio alone, which a ratio of medians would not.
	b := govBench([]float64{1000, 2000, 4000}, []float64{950, 1900, 3800}, "rps", "")
	c, ok := findGovCell(b.govCells(), b.s1gClosed(), "throughput req/s")
	if !ok {
		t.Fatal("no throughput cell")
	}
	if math.Abs(c.Ratio.Median-0.95) > 1e-9 || math.Abs(c.Ratio.Min-0.95) > 1e-9 || math.Abs(c.Ratio.Max-0.95) > 1e-9 {
		t.Errorf("ratio %+v, want 0.95 in every repetition", c.Ratio)
	}
	if c.Added.Median != -100 || c.Off.Median != 2000 || c.On.Median != 1900 {
		t.Errorf("added %+v off %+v on %+v", c.Added, c.Off, c.On)
	}
}

func TestGovVerdictsJudgeTheIssueGate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		off, on   []float64
		key, pt   string
		verdict   string
		wantPass  bool
		failuresN int
	}{
		{"ThroughputWithin10Percent", []float64{1000}, []float64{905}, "rps", "", "S1g throughput", true, 0},
		{"ThroughputBelow", []float64{1000}, []float64{890}, "rps", "", "S1g throughput", false, 0},
		{"AddedP50Within", []float64{0.40}, []float64{0.69}, "p50_ms", "open", "S1g added p50", true, 0},
		{"AddedP50Over", []float64{0.40}, []float64{0.71}, "p50_ms", "open", "S1g added p50", false, 0},
		{"RefusalFails", []float64{1000}, []float64{1000}, "rps", "", "S1g: every request", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := govBench(tc.off, tc.on, tc.key, "")
			if tc.pt == "open" {
				b = govBench(tc.off, tc.on, tc.key, b.s1gOpen())
			}
			for range tc.failuresN {
				b.gov.failures = append(b.gov.failures, "1 of 9 requests non-2xx")
			}
			var found bool
			for _, v := range b.govVerdicts() {
				if !strings.HasPrefix(v.Target, tc.verdict) {
					continue
				}
				found = true
				if v.Pass == nil || *v.Pass != tc.wantPass {
					t.Errorf("%s: measured %q, pass %v, want %v", v.Target, v.Measured, v.Pass, tc.wantPass)
				}
			}
			if !found {
				t.Errorf("no verdict %q", tc.verdict)
			}
		})
	}
}

// TestRedisConnAgainstRealRedis runs the bench's RESP client against
// TOLLGATE_TEST_REDIS: it must count commands and find and delete exactly
// the keys under its prefix.
func TestRedisConnAgainstRealRedis(t *testing.T) {
	url := os.Getenv("TOLLGATE_TEST_REDIS")
	if url == "" {
		t.Skip("TOLLGATE_TEST_REDIS not set")
	}
	ctx := context.Background()
	if err := pingRedis(ctx, url); err != nil {
		t.Fatal(err)
	}
	r, err := dialRedis(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	var p [6]byte
	_, _ = rand.Read(p[:])
	prefix := "tgbench-test-" + hex.EncodeToString(p[:]) + ":"
	other := "tgbench-test-" + hex.EncodeToString(p[:]) + "-other"
	t.Cleanup(func() { r.do("DEL", other) })
	c0, err := r.calls()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1200 {
		if _, err := r.do("SET", prefix+string(rune('a'+i%26))+hex.EncodeToString([]byte{byte(i >> 8), byte(i)}), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.do("SET", other, "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.do("EVAL", "return redis.call('GET', KEYS[1])", "1", other); err != nil {
		t.Fatal(err)
	}
	c1, _ := r.calls()
	if c1.commands-c0.commands < 1204 || c1.scripts-c0.scripts < 1 {
		t.Errorf("calls went %+v → %+v, want at least 1204 more commands (1201 SET, an EVAL, its GET, the INFO) and a script", c0, c1)
	}
	ks, err := r.keys(prefix)
	if err != nil || len(ks) != 1200 {
		t.Fatalf("keys: %d, %v; want 1200", len(ks), err)
	}
	n, err := r.deleteKeys(prefix)
	if err != nil || n != 1200 {
		t.Fatalf("deleteKeys: %d, %v; want 1200", n, err)
	}
	if v, _ := r.do("EXISTS", other); v != int64(1) {
		t.Errorf("a key outside the prefix was touched: EXISTS %v", v)
	}
	if ks, _ := r.keys(prefix); len(ks) != 0 {
		t.Errorf("%d keys left under the prefix", len(ks))
	}
}

func TestRedisAddrNeedsPlainRedisURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://127.0.0.1:6379/0": "127.0.0.1:6379",
		"redis://localhost/3":      "localhost:6379",
		"redis://:pw@[::1]:7000":   "[::1]:7000",
	} {
		if _, got, err := redisAddr(in); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"rediss://h:1", "http://h:1", "127.0.0.1:6379", "redis://"} {
		if _, _, err := redisAddr(in); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
}

func TestFmtNumHasNoNegativeZero(t *testing.T) {
	for v, want := range map[float64]string{-0.2: "0", -0.0004: "0", -1.6: "-2", 0.4: "0"} {
		if got := fmtNum(v, 0); got != want {
			t.Errorf("fmtNum(%v, 0) = %q, want %q", v, got, want)
		}
	}
	if got := fmtNum(-0.0004, 3); got != "0.000" {
		t.Errorf("fmtNum(-0.0004, 3) = %q, want 0.000", got)
	}
}
