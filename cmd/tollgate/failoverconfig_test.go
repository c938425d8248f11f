package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/proxy"
)

func TestFailoverSettings(t *testing.T) {
	var o options
	o.bindServe(newFlags("serve", io.Discard))
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	if got, want := o.failover(), (proxy.FailoverConfig{HeaderTimeout: proxy.DefaultFailoverHeaderTimeout,
		RetryAfterMax: proxy.DefaultRetryAfterMax, Deadline: proxy.DefaultFailoverDeadline}); got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	t.Setenv("TOLLGATE_UPSTREAM_HEADER_TIMEOUT", "20s")
	t.Setenv("TOLLGATE_RETRY_AFTER_MAX", "0")
	t.Setenv("TOLLGATE_FAILOVER_DEADLINE", "5s")
	t.Setenv("TOLLGATE_FAILOVER_AFTER_MAYBE_BILLED", "true")
	t.Setenv("TOLLGATE_HEALTH_FAILURES", "3")
	t.Setenv("TOLLGATE_HEALTH_COOLDOWN", "2s")
	o = options{}
	o.bindServe(newFlags("serve", io.Discard))
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	// 0 turns same-credential retries off, which the proxy spells negative.
	if got, want := o.failover(), (proxy.FailoverConfig{HeaderTimeout: 20 * time.Second, RetryAfterMax: -1, Deadline: 5 * time.Second, AfterMaybeBilled: true}); got != want {
		t.Errorf("from the environment %+v, want %+v", got, want)
	}
	if h := o.healthConfig(); h.FailureThreshold != 3 || h.BaseCooldown != 2*time.Second || h.MaxCooldown != 0 {
		t.Errorf("health %+v", h)
	}
	t.Setenv("TOLLGATE_FAILOVER_DEADLINE", "30")
	o = options{}
	o.bindServe(newFlags("serve", io.Discard))
	if err := o.check(); err == nil || !strings.Contains(err.Error(), "TOLLGATE_FAILOVER_DEADLINE") {
		t.Errorf("a deadline without a unit: %v", err)
	}
}
