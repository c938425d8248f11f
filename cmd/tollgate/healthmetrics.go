package main

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tollgate/tollgate/health"
	"github.com/tollgate/tollgate/metering"
)

// Credential health metrics, one series per credential the proxy has
// used, labelled by credential id and provider (both from the registry,
// never from a client, and the tracker bounds how many it keeps).
const (
	// metricCredentialCircuit is the circuit breaker: 0 closed, 1 half-open,
	// 2 open (Prometheus: tollgate_credential_circuit).
	metricCredentialCircuit = "tollgate.credential.circuit"
	// metricCredentialRateLimited is 1 while the credential is skipped for
	// a 429 or for no headroom until its reset, else 0.
	metricCredentialRateLimited = "tollgate.credential.rate_limited"
	// metricCredentialRemaining{Requests,Tokens} are the provider's last
	// reported headroom; absent until a response reported it.
	metricCredentialRemainingRequests = "tollgate.credential.remaining.requests"
	metricCredentialRemainingTokens   = "tollgate.credential.remaining.tokens"
	// metricCredentialsUnexported counts credentials past maxHealthSeries.
	metricCredentialsUnexported = "tollgate.credential.health.unexported"

	attrCredentialID = "tollgate.credential_id"
)

// maxHealthSeries bounds the credentials exported per gauge: the tracker
// may hold thousands, a scrape should not carry thousands of series each.
// The first by credential id are exported, so series stay stable.
const maxHealthSeries = 1000

// healthSource is what the gauges read (*health.Tracker).
type healthSource interface{ Each(func(health.State)) }

// registerHealth exports h's per-credential gauges on the telemetry's
// meter, read from memory at each collection. The returned function
// unregisters the callback.
func (t *telemetry) registerHealth(h healthSource) (unregister func() error, err error) {
	return registerHealthOn(t.provider.Meter(meterName), h)
}

func registerHealthOn(meter metric.Meter, h healthSource) (func() error, error) {
	specs := [...]struct{ name, desc string }{
		{metricCredentialCircuit, "Circuit breaker of the credential: 0 closed, 1 half-open (one probe allowed), 2 open (skipped until its cooldown ends)."},
		{metricCredentialRateLimited, "1 while the credential is skipped for a provider 429 or for no headroom until the provider's reset."},
		{metricCredentialRemainingRequests, "Requests the provider last reported left before its rate limit resets."},
		{metricCredentialRemainingTokens, "Tokens the provider last reported left before its rate limit resets (the least of its token limits)."},
		{metricCredentialsUnexported, fmt.Sprintf("Tracked credentials not exported as series because more than %d are tracked.", maxHealthSeries)},
	}
	var g [len(specs)]metric.Int64ObservableGauge
	var errs [len(specs)]error
	instruments := make([]metric.Observable, len(specs))
	for i, s := range specs {
		g[i], errs[i] = meter.Int64ObservableGauge(s.name, metric.WithDescription(s.desc))
		instruments[i] = g[i]
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, fmt.Errorf("health instruments: %w", err)
	}
	circuit, limited, remReq, remTok, unexported := g[0], g[1], g[2], g[3], g[4]
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		n := 0
		h.Each(func(s health.State) {
			n++
			if n > maxHealthSeries {
				return
			}
			opt := metric.WithAttributeSet(attribute.NewSet(
				attribute.String(attrCredentialID, s.CredentialID),
				attribute.String(metering.AttrProvider, s.Provider)))
			o.ObserveInt64(circuit, circuitLevel(s.Circuit), opt)
			rl := int64(0)
			if s.Reason == health.ReasonRateLimited {
				rl = 1
			}
			o.ObserveInt64(limited, rl, opt)
			if s.RemainingRequests >= 0 {
				o.ObserveInt64(remReq, s.RemainingRequests, opt)
			}
			if s.RemainingTokens >= 0 {
				o.ObserveInt64(remTok, s.RemainingTokens, opt)
			}
		})
		o.ObserveInt64(unexported, int64(max(0, n-maxHealthSeries)))
		return nil
	}, instruments...)
	if err != nil {
		return nil, fmt.Errorf("health instruments: %w", err)
	}
	return reg.Unregister, nil
}

// circuitLevel orders the circuit states by how far from usable they are.
func circuitLevel(c string) int64 {
	switch c {
	case health.CircuitHalfOpen:
		return 1
	case health.CircuitOpen:
		return 2
	}
	return 0
}
