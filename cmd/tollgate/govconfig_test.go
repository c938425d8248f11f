package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestGovernanceSettingsAreStrict: a governance setting that does not
// parse stops serve, naming the variable and what is accepted; a URL that
// may hold a password is named but never echoed.
func TestGovernanceSettingsAreStrict(t *testing.T) {
	cases := []struct {
		env   map[string]string
		want  string
		quote bool // the message quotes the value
	}{
		{map[string]string{"TOLLGATE_RATE_MAX_WAIT": "5"}, "did you mean 5s?", true},
		{map[string]string{"TOLLGATE_RATE_MAX_WAIT": "-1s"}, "more than zero", true},
		{map[string]string{"TOLLGATE_BUDGET_LEASE": "soon"}, "use e.g. 30s", true},
		{map[string]string{"TOLLGATE_BUDGET_HEARTBEAT": "5"}, "did you mean 5s?", true},
		{map[string]string{"TOLLGATE_BUDGET_LEASE": "6s", "TOLLGATE_BUDGET_HEARTBEAT": "5s"}, "at least 2 x TOLLGATE_BUDGET_HEARTBEAT", false},
		{map[string]string{"TOLLGATE_REPLICA_ID": "a b"}, "letters, digits", true},
		{map[string]string{"TOLLGATE_REDIS_PREFIX": "has space"}, "without spaces", true},
		{map[string]string{"TOLLGATE_REDIS_URL": "http://:hunter2@127.0.0.1:6379"}, "TOLLGATE_REDIS_URL is not a Redis URL", false},
		{map[string]string{"TOLLGATE_ALERT_WEBHOOK_URL": "ftp://x/hook?secret=hunter2"}, "TOLLGATE_ALERT_WEBHOOK_URL is not an http(s) URL", false},
		{map[string]string{"TOLLGATE_ALERT_WEBHOOK_SECRET": "s"}, "without TOLLGATE_ALERT_WEBHOOK_URL", false},
		{map[string]string{"TOLLGATE_ALERT_WEBHOOK_URL": "https://hooks.example/x", "TOLLGATE_ALERT_WEBHOOK_SECRET": "s", "TOLLGATE_ALERT_WEBHOOK_SECRET_FILE": "/nonexistent"}, "set one", false},
	}
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range cases {
		var name []string
		for k, v := range tc.env {
			name = append(name, k+"="+v)
		}
		t.Run(strings.Join(name, ","), func(t *testing.T) {
			c := newCLI(t, fakeURL)
			for k, v := range tc.env {
				c.env[k] = v
			}
			_, errs, code := c.run(ctx, "", "serve")
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("code %d, stderr %s; want %q", code, errs, tc.want)
			}
			for k, v := range tc.env {
				if tc.quote && !strings.Contains(errs, k+`="`+v+`"`) {
					t.Fatalf("stderr %s does not name %s=%q", errs, k, v)
				}
			}
			if strings.Contains(errs, "hunter2") {
				t.Fatalf("a secret in a URL was echoed: %s", errs)
			}
		})
	}
	t.Run("zero wait and valid values are accepted", func(t *testing.T) {
		c := newCLI(t, fakeURL)
		c.env["TOLLGATE_RATE_MAX_WAIT"] = "0"
		c.env["TOLLGATE_BUDGET_LEASE"] = "20s"
		c.env["TOLLGATE_BUDGET_HEARTBEAT"] = "2s"
		c.env["TOLLGATE_REPLICA_ID"] = "replica-1"
		c.env["TOLLGATE_REDIS_PREFIX"] = "tgtest:"
		// The cancelled context stops serve after its settings are
		// checked: none of them may be the reason.
		_, errs, _ := c.run(ctx, "", "serve")
		for _, k := range []string{"TOLLGATE_RATE_MAX_WAIT", "TOLLGATE_BUDGET", "TOLLGATE_REPLICA_ID", "TOLLGATE_REDIS"} {
			if strings.Contains(errs, k) {
				t.Fatalf("stderr %s", errs)
			}
		}
	})
}
