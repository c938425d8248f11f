package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/registry"
)

// telemetry owns the OTel SDK: only cmd installs it (house rule 18).
type telemetry struct {
	provider    *sdkmetric.MeterProvider
	handler     http.Handler
	instruments *metering.Instruments
}

// newTelemetry exposes metrics on /metrics in Prometheus format and, when
// OTEL_EXPORTER_OTLP_ENDPOINT (or the metrics-specific variable) is set to
// something other than white space, also pushes them by OTLP/HTTP; the
// exporter (otlp.go) reads the standard OTEL_EXPORTER_OTLP_* variables
// itself, the periodic reader OTEL_METRIC_EXPORT_INTERVAL and _TIMEOUT.
func newTelemetry(ctx context.Context, labels []string, reg *registry.Holder, log *slog.Logger) (*telemetry, error) {
	prom := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(prom))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	opts := []sdkmetric.Option{sdkmetric.WithReader(exp)}
	if otlpConfigured() { // blank is unset, as otlpTarget reads it
		otlp, err := newOTLPExporter()
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		// Our exporter keeps the SDK's default aggregation; say so rather
		// than let an operator wonder where their exponential histograms went.
		const aggVar = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
		if v := strings.TrimSpace(os.Getenv(aggVar)); v != "" && !strings.EqualFold(v, "explicit_bucket_histogram") {
			log.Warn("ignored: tollgate exports explicit-bucket histograms only", "variable", aggVar, "value", v)
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
	inst, err := metering.NewInstruments(mp.Meter("github.com/tollgate/tollgate"), metering.LabelConfig{Labels: labels, Logger: log, Registry: reg})
	if err != nil {
		return nil, err
	}
	return &telemetry{
		provider:    mp,
		handler:     promhttp.HandlerFor(prom, promhttp.HandlerOpts{}),
		instruments: inst,
	}, nil
}

func (t *telemetry) shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }
