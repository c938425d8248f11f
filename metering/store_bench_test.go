package metering

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkStoreInsertBatch measures one transaction into SQLite, rollup
// included, at the writer's default batch size and at a larger one.
func BenchmarkStoreInsertBatch(b *testing.B) {
	for _, size := range []int{DefaultBatchSize, 256} {
		b.Run(fmt.Sprintf("rows=%d", size), func(b *testing.B) { benchInsertBatch(b, size) })
	}
}

func benchInsertBatch(b *testing.B, size int) {
	s := mustUsageStore(b, "sqlite")
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		recs := make([]*Record, size)
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
