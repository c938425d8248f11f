package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestPercentileIsNearestRank(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		var out []time.Duration
		for _, v := range n {
			out = append(out, time.Duration(v)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want float64
	}{
		{"MedianOfOdd", ms(1, 2, 3, 4, 5), 50, 3},
		{"P99OfHundred", ms(seq(100)...), 99, 99},
		{"MaxIsP100", ms(1, 7, 9), 100, 9},
		{"SingleValue", ms(4), 1, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.in, tc.p); got != tc.want {
				t.Errorf("percentile(p%v): got %v, want %v", tc.p, got, tc.want)
			}
		})
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing: want NaN")
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func TestSummarizeSkipsMissingRepetitions(t *testing.T) {
	s := summarize([]float64{3, math.NaN(), 1, 2})
	if s.Median != 2 || s.Min != 1 || s.Max != 3 || s.N != 3 {
		t.Errorf("got %+v, want median 2 over 1–3, n 3", s)
	}
	if s := summarize([]float64{4, 2}); s.Median != 3 {
		t.Errorf("even count: got median %v, want 3", s.Median)
	}
	if s := summarize([]float64{math.NaN()}); s.N != 0 {
		t.Errorf("no values: got n %d", s.N)
	}
}

func TestDataLineFindsFirstDataFieldAcrossReads(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reads []string
		at    int // index of the read that completes "data:", -1 for none
	}{
		{"FirstRead", []string{"data: {}\n\n"}, 0},
		{"AfterComment", []string{": ping\n\n", "event: x\ndata: 1\n"}, 1},
		{"SplitAcrossReads", []string{"da", "ta", ": x"}, 2},
		{"NotAtLineStart", []string{"event: data: x\n"}, -1},
		{"Nothing", []string{": keep-alive\n\n"}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d dataLine
			got := -1
			for i, r := range tc.reads {
				if d.feed([]byte(r)) && got < 0 {
					got = i
				}
			}
			if got != tc.at {
				t.Errorf("found at read %d, want %d", got, tc.at)
			}
		})
	}
}

func TestTopHotParsesPerfReport(t *testing.T) {
	report := strings.Join([]string{
		"# Samples: 12K of event 'cpu-clock:ppp'",
		"# Overhead  Symbol",
		"    12.50%  [.] runtime.mallocgc",
		"     3.25%  [k] entry_SYSCALL_64",
		"    45.00%     1.00%  [.] github.com/tollgate/tollgate/proxy.(*Server).forward",
	}, "\n")
	got := topHot(report, 0, 10)
	want := []hot{{45, "github.com/tollgate/tollgate/proxy.(*Server).forward"}, {12.5, "runtime.mallocgc"}, {3.25, "[kernel] entry_SYSCALL_64"}}
	if len(got) != len(want) {
		t.Fatalf("got %d entries %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if got := topHot(report, 1, 10); got[len(got)-1].Pct != 1 {
		t.Errorf("second column: got %v, want 1", got[2].Pct)
	}
}

func TestConfigDefaultsAndQuickMode(t *testing.T) {
	full, err := parseConfig(nil, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if full.Reps != 3 || full.Duration != 10*time.Second || full.Name != "latest" || len(full.S4N) != 2 || full.S4N[1] != 5000 {
		t.Errorf("full defaults: %+v", full)
	}
	quick, err := parseConfig([]string{"-quick"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if quick.Reps != 1 || quick.Duration > 2*time.Second || quick.Name != "quick" {
		t.Errorf("quick defaults: %+v", quick)
	}
	if _, err := parseConfig([]string{"-scenarios", "S9", "-pin", "maybe"}, &strings.Builder{}); err == nil ||
		!strings.Contains(err.Error(), "S9") || !strings.Contains(err.Error(), "maybe") {
		t.Errorf("bad flags: got %v, want both problems reported", err)
	}
}
