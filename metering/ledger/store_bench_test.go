package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// BenchmarkStoreInsertBatch measures one transaction into SQLite, rollup
// included, at the writer's default batch size and at a smaller and a
// larger one.
func BenchmarkStoreInsertBatch(b *testing.B) {
	for _, size := range []int{64, DefaultBatchSize, 2 * DefaultBatchSize} {
		b.Run(fmt.Sprintf("rows=%d", size), func(b *testing.B) { benchInsertBatch(b, size) })
	}
}

func benchInsertBatch(b *testing.B, size int) {
	s := mustUsageStore(b, "sqlite")
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	// Only InsertBatch's CPU counts: building the records is the caller's.
	var cpu time.Duration
	for b.Loop() {
		recs := make([]*metering.Record, size)
		for i := range recs {
			recs[i] = usageRecordN(fmt.Sprintf("ib-%d", n), n, usageDay.Add(time.Duration(n)*time.Second))
			n++
		}
		c0, _ := processCPU()
		if _, err := s.InsertBatch(ctx, recs); err != nil {
			b.Fatal(err)
		}
		c1, _ := processCPU()
		cpu += c1 - c0
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
	reportCPUPerRecord(b, cpu, n)
}

// reportCPUPerRecord reports process CPU (user and system, all goroutines)
// per record: on one core that, not wall time, is what the writer takes
// from request handling.
func reportCPUPerRecord(b *testing.B, cpu time.Duration, records int) {
	if _, ok := processCPU(); !ok || records == 0 {
		return
	}
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(records), "cpu-µs/record")
}
