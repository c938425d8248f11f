package metering

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkStoreInsertBatch measures one 256-record transaction into
// SQLite, rollup included.
func BenchmarkStoreInsertBatch(b *testing.B) {
	s := mustUsageStore(b, "sqlite")
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		recs := make([]*Record, 256)
		for i := range recs {
			recs[i] = usageRecordN(fmt.Sprintf("ib-%d", n), n, usageDay.Add(time.Duration(n)*time.Second))
			n++
		}
		if _, err := s.InsertBatch(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
}
