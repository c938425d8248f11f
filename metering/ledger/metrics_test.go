package ledger

import (
	"context"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tollgate/tollgate/metering"
)

// TestWriterStatsReachInstruments runs a real Writer under
// metering.Instruments.RegisterWriter: the counters a dashboard reads are
// the writer's own.
func TestWriterStatsReachInstruments(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { mp.Shutdown(context.Background()) })
	in, err := metering.NewInstruments(mp.Meter("test"), metering.LabelConfig{})
	if err != nil {
		t.Fatal(err)
	}
	w := mustWriter(t, fastWriterConfig(t.TempDir()), mustUsageStore(t, "sqlite"))
	unregister, err := in.RegisterWriter(w)
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	for i := range 3 {
		w.Record(usageRecordN(fmt.Sprint("m-", i), i, usageDay))
	}
	mustFlush(t, w)
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == metering.MetricMeteringRecords {
				for _, p := range s.DataPoints {
					d, _ := p.Attributes.Value(attribute.Key(metering.AttrDisposition))
					got[d.AsString()] = p.Value
				}
			}
		}
	}
	for disp, want := range map[string]int64{"accepted": 3, "inserted": 3, "dropped": 0, "spilled": 0} {
		if got[disp] != want {
			t.Errorf("%s = %d, want %d (all: %v)", disp, got[disp], want, got)
		}
	}
}
