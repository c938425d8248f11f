package main

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/health"
)

func newTestTelemetry(t *testing.T) *telemetry {
	t.Helper()
	tel, err := newTelemetry(context.Background(), splitList(""), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.shutdown(context.Background()) })
	return tel
}

func wantSample(t *testing.T, body, metric, cred string, v int) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + metric + `\{[^}]*tollgate_credential_id="` + cred + `"[^}]*\} ` + fmt.Sprint(v) + `$`)
	if !re.MatchString(body) {
		t.Errorf("%s{%s} != %d:\n%s", metric, cred, v, grepLines(body, metric))
	}
}

// TestHealthMetricsOnMetrics: /metrics shows each tracked credential's
// circuit, rate-limited flag and headroom, labelled by credential id and
// provider, and follows the tracker from one scrape to the next.
func TestHealthMetricsOnMetrics(t *testing.T) {
	tel := newTestTelemetry(t)
	now := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	tr := health.New(health.Config{Now: func() time.Time { return now }})
	unregister, err := tel.registerHealth(tr)
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()

	for range 3 {
		tr.Observe(health.Observation{CredentialID: "cred_broken", Provider: "anthropic", Status: 529, Failed: true})
	}
	hdr := map[string]string{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s",
		"x-ratelimit-remaining-tokens": "1200", "x-ratelimit-reset-tokens": "1s"}
	tr.Observe(health.Observation{CredentialID: "cred_spent", Provider: "openai", Status: 200, Header: func(n string) string { return hdr[n] }})
	tr.Observe(health.Observation{CredentialID: "cred_fine", Provider: "openai", Status: 200})

	body := scrape(t, tel)
	if !strings.Contains(body, `tollgate_credential_circuit{gen_ai_provider_name="anthropic",otel_scope_name="github.com/tollgate/tollgate",otel_scope_schema_url="",otel_scope_version="",tollgate_credential_id="cred_broken"} 2`) {
		t.Errorf("broken credential's circuit:\n%s", grepLines(body, "tollgate_credential_circuit"))
	}
	wantSample(t, body, "tollgate_credential_circuit", "cred_fine", 0)
	wantSample(t, body, "tollgate_credential_rate_limited", "cred_spent", 1)
	wantSample(t, body, "tollgate_credential_rate_limited", "cred_broken", 0)
	wantSample(t, body, "tollgate_credential_remaining_requests", "cred_spent", 0)
	wantSample(t, body, "tollgate_credential_remaining_tokens", "cred_spent", 1200)
	if strings.Contains(body, `tollgate_credential_remaining_requests{gen_ai_provider_name="openai",otel_scope_name="github.com/tollgate/tollgate",otel_scope_schema_url="",otel_scope_version="",tollgate_credential_id="cred_fine"}`) {
		t.Error("unknown headroom exported as a number")
	}
	wantUnexported(t, body, 0)

	now = now.Add(5 * time.Minute) // cooldown and reset over: half-open, not limited
	body = scrape(t, tel)
	wantSample(t, body, "tollgate_credential_circuit", "cred_broken", 1)
	wantSample(t, body, "tollgate_credential_rate_limited", "cred_spent", 0)
}

func wantUnexported(t *testing.T, body string, n int) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^tollgate_credential_health_unexported\{[^}]*\} ` + fmt.Sprint(n) + `$`).MatchString(body) {
		t.Errorf("unexported != %d: %s", n, grepLines(body, "unexported"))
	}
}

// TestHealthMetricsBounded: past maxHealthSeries credentials, the rest are
// counted, not exported, and the exported ones are the first by id.
func TestHealthMetricsBounded(t *testing.T) {
	tel := newTestTelemetry(t)
	tr := health.New(health.Config{})
	for i := range maxHealthSeries + 5 {
		tr.Observe(health.Observation{CredentialID: fmt.Sprintf("cred_%05d", i), Provider: "openai", Status: 200})
	}
	unregister, err := registerHealthOn(tel.provider.Meter(meterName), tr)
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	body := scrape(t, tel)
	if n := strings.Count(body, "\ntollgate_credential_circuit{"); n != maxHealthSeries {
		t.Errorf("%d circuit series, want the bound %d", n, maxHealthSeries)
	}
	if strings.Contains(body, fmt.Sprintf(`"cred_%05d"`, maxHealthSeries)) {
		t.Error("a credential past the bound is exported")
	}
	wantUnexported(t, body, 5)
}
