package main

import (
	"io"
	"math"
	"strings"
	"testing"
)

func TestScenariosAcceptS1f(t *testing.T) {
	c, err := parseConfig([]string{"-scenarios", "s1,S1F"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Scenarios["S1f"] || c.S1fRate != 200 {
		t.Errorf("S1f %v, -s1f-rate %d", c.Scenarios["S1f"], c.S1fRate)
	}
	if _, err := parseConfig([]string{"-s1f-rate", "-1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "-s1f-rate") {
		t.Errorf("-s1f-rate -1: got %v, want an error naming the flag", err)
	}
}

func TestNoWorse(t *testing.T) {
	r := func(med, lo, hi float64) spread { return spread{Median: med, Min: lo, Max: hi, N: 3} }
	// Throughput: higher is better.
	holds := []spread{r(0.83, 0.72, 1.07), r(0.96, 0.955, 0.97), r(1.2, 1.1, 1.3)}
	fails := []spread{r(0.94, 0.93, 0.95)}
	for _, s := range holds {
		if !noWorse(s, true) {
			t.Errorf("throughput ratio %+v judged worse", s)
		}
	}
	for _, s := range fails {
		if noWorse(s, true) {
			t.Errorf("throughput ratio %+v, steadily 6 %% fewer, judged no worse", s)
		}
	}
	// Latency and CPU: lower is better; faster is no cost.
	if noWorse(r(1.06, 1.055, 1.2), false) {
		t.Error("steadily 6 % slower judged no worse")
	}
	if !noWorse(r(0.91, 0.89, 0.94), false) || !noWorse(r(1.04, 1.01, 1.3), false) {
		t.Error("faster, or within 5 %, judged worse")
	}
}

// foBench is a finished S1f whose single-credential and failover runs of
// point carry key's figures per repetition.
func foBench(point func(*bench) string, fo string, key string, single, over []float64) *bench {
	cfg := &config{Reps: len(single), S1Conns: 64, S1fRate: 200, Scenarios: map[string]bool{"S1f": true}}
	b := &bench{cfg: cfg, fo: &foRun{}, totals: map[string]*tally{}}
	for i := range single {
		b.runs = append(b.runs,
			&runRec{Scenario: "S1f", Point: point(b), Target: "tollgate", Rep: i + 1, Metrics: map[string]float64{key: single[i]}},
			&runRec{Scenario: "S1f", Point: point(b), Target: fo, Rep: i + 1, Metrics: map[string]float64{key: over[i]}})
	}
	return b
}

func TestFoCellsPairWithinRepetitionAndJudge(t *testing.T) {
	b := foBench((*bench).foClosed, foTarget, "rps", []float64{1000, 2000, 4000}, []float64{900, 1800, 3600})
	c, ok := findFoCell(b.foCells(), b.foClosed(), "throughput req/s")
	if !ok {
		t.Fatal("no throughput cell")
	}
	if math.Abs(c.Ratio.Min-0.9) > 1e-9 || math.Abs(c.Ratio.Max-0.9) > 1e-9 || c.Added.Median != -200 {
		t.Errorf("ratio %+v added %+v, want 0.9 and -200 in the middle repetition", c.Ratio, c.Added)
	}
	for _, v := range b.foVerdicts() {
		if strings.Contains(v.Target, "throughput no worse") {
			if v.Pass == nil || *v.Pass {
				t.Errorf("a steady 0.9× judged %v: %+v", v.Pass, v)
			}
			return
		}
	}
	t.Error("no throughput verdict")
}

func TestFoVerdictCircuitOpens(t *testing.T) {
	for _, tc := range []struct {
		on   float64
		want bool
	}{{0.05, true}, {30, false}} {
		b := foBench((*bench).fo529Off, fo529NBTarget, "p50_ms", []float64{0.5, 0.5, 0.5}, []float64{50.5, 50.5, 50.5})
		for i := range 3 {
			b.runs = append(b.runs,
				&runRec{Scenario: "S1f", Point: b.fo529On(), Target: "tollgate", Rep: i + 1, Metrics: map[string]float64{"p50_ms": 0.5}},
				&runRec{Scenario: "S1f", Point: b.fo529On(), Target: fo529Target, Rep: i + 1, Metrics: map[string]float64{"p50_ms": 0.5 + tc.on}})
		}
		found := false
		for _, v := range b.foVerdicts() {
			if strings.Contains(v.Target, "the circuit opens") {
				found = true
				if v.Pass == nil || *v.Pass != tc.want {
					t.Errorf("breaker on adds %.2f ms, off 50 ms: verdict %+v, want pass %v", tc.on, v, tc.want)
				}
			}
		}
		if !found {
			t.Error("no circuit verdict")
		}
	}
}
