package governance

import (
	"fmt"
	"testing"
)

// The in-process state follows the limits in use: idle ones are forgotten
// within two periods, but never one with a request in flight.
func TestLocalForgetsIdleLimits(t *testing.T) {
	rg := localRig()
	l := rg.limiter(t, -1).(*localLimiter)
	for i := range 1000 {
		lims := []Limit{{ID: fmt.Sprint("idle-", i), Selector: acmeProject, RPM: 60, TPM: 1000}}
		limitAdmits(t, l, "r", lims, 10).Release(10)
	}
	conc := []Limit{{ID: "busy", Selector: acmeProject, Concurrency: 1}}
	held := limitAdmits(t, l, "held", conc, 0)
	rg.advance(2 * rg.period)
	limitAdmits(t, l, "x", []Limit{{ID: "new", Selector: acmeProject, RPM: 60}}, 0)
	if n := len(l.states); n != 2 {
		t.Fatalf("%d states after two idle periods, want 2 (busy, new)", n)
	}
	limitRefuses(t, l, "second", conc, 0) // the busy slot survived the sweep
	held.Release(0)
	limitAdmits(t, l, "second", conc, 0)
}

// A replica's share of a limit while Redis is down: limit / replicas, at
// least 1, zero left unlimited.
func TestLimitShare(t *testing.T) {
	l := Limit{RPM: 60, TPM: 100, Concurrency: 2}
	if got := l.share(3); got.RPM != 20 || got.TPM != 33 || got.Concurrency != 1 {
		t.Fatalf("share(3) = %+v", got)
	}
	if got := (Limit{RPM: 1}).share(4); got.RPM != 1 || got.TPM != 0 || got.Concurrency != 0 {
		t.Fatalf("share of 1 = %+v", got)
	}
	if got := l.share(0); got != l {
		t.Fatalf("share(0) = %+v", got)
	}
}

func TestRPMBurstBound(t *testing.T) {
	for rpm, want := range map[int64]int64{1: 1, 6: 1, 30: 1, 31: 2, 60: 2, 600: 20} {
		if got := rpmBurst(rpm); got != want {
			t.Errorf("rpmBurst(%d) = %d, want %d", rpm, got, want)
		}
	}
}
