package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy"
	"github.com/tollgate/tollgate/registry"
)

// meterName is the instrumentation scope of every tollgate instrument.
const meterName = "github.com/tollgate/tollgate"

// telemetry owns the OTel SDK: only cmd installs it (house rule 18).
type telemetry struct {
	provider    *sdkmetric.MeterProvider
	handler     http.Handler
	instruments *metering.Instruments
}

// newTelemetry exposes metrics on /metrics in Prometheus format and, when
// OTEL_EXPORTER_OTLP_ENDPOINT (or the metrics-specific variable) is set to
// something other than white space, also pushes them by OTLP; otlp.go
// checks the standard OTEL_EXPORTER_OTLP_* variables, the periodic reader
// reads OTEL_METRIC_EXPORT_INTERVAL and _TIMEOUT.
func newTelemetry(ctx context.Context, labels []string, reg *registry.Holder, log *slog.Logger) (*telemetry, error) {
	prom := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(prom))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	opts := []sdkmetric.Option{sdkmetric.WithReader(exp)}
	if otlpConfigured() { // blank is unset, as otlpTarget reads it
		otlp, err := newOTLPExporter(ctx, otlpRetry{})
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(otlp)))
	}
	// service.name is "tollgate" unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES say otherwise; the SDK's own default is
	// "unknown_service:<binary>", which dashboards cannot group by.
	res, err := resource.New(ctx, resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", "tollgate")), resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("otel resource: %w", err)
	}
	opts = append(opts, sdkmetric.WithResource(res))
	mp := sdkmetric.NewMeterProvider(opts...)
	inst, err := metering.NewInstruments(mp.Meter(meterName), metering.LabelConfig{Labels: labels, Logger: log, Registry: reg})
	if err != nil {
		return nil, err
	}
	return &telemetry{
		provider:    mp,
		handler:     promhttp.HandlerFor(prom, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, ErrorLog: promLog{log}}),
		instruments: inst,
	}, nil
}

func (t *telemetry) shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }

// metricStaleness is how long ago the resolver last confirmed its view of
// tokens and credentials (Prometheus: tollgate_config_staleness_seconds);
// past TOLLGATE_MAX_STALENESS the replica refuses inference.
const metricStaleness = "tollgate.config.staleness"

// registerStaleness exports f's staleness as an observable gauge, read at
// each collection.
func (t *telemetry) registerStaleness(f proxy.Freshness) error {
	_, err := t.provider.Meter(meterName).Float64ObservableGauge(metricStaleness,
		metric.WithUnit("s"),
		metric.WithDescription("Seconds since the last successful read of the credential change log; inference is refused past TOLLGATE_MAX_STALENESS."),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			st, _, _ := f.Freshness()
			o.Observe(st.Seconds())
			return nil
		}))
	if err != nil {
		return fmt.Errorf("staleness gauge: %w", err)
	}
	return nil
}

// promLog carries the Prometheus handler's gather errors to slog. With
// ContinueOnError a scrape that meets one bad series still serves the rest
// (labels are sanitised where recorded; this is defence in depth), and the
// error is logged rather than turned into a 500 for every scrape.
type promLog struct{ log *slog.Logger }

func (p promLog) Println(v ...any) { p.log.Warn("metrics gather", "err", fmt.Sprint(v...)) }
