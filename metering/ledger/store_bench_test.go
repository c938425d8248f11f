package ledger

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// BenchmarkStoreInsertBatch measures one transaction, rollup included, on
// every engine of usageEngines: at DefaultMinBatch (what light load
// commits), at 64, and at DefaultBatchSize (what a full queue commits);
// with one writer and with three sharing the store, as three replicas share
// one PostgreSQL (a SQLite file has one writer at a time).
func BenchmarkStoreInsertBatch(b *testing.B) {
	for _, engine := range usageEngines(b) {
		for _, writers := range []int{1, 3} {
			for _, size := range []int{DefaultMinBatch, 64, DefaultBatchSize} {
				b.Run(fmt.Sprintf("%s/writers=%d/rows=%d", engine, writers, size), func(b *testing.B) {
					benchInsertBatch(b, engine, writers, size)
				})
			}
		}
	}
}

// benchInsertBatch runs b.N batches of size records on writers goroutines.
func benchInsertBatch(b *testing.B, engine string, writers, size int) {
	s := mustUsageStore(b, engine)
	ctx := context.Background()
	// Building the records is the caller's work, so it happens before the
	// timer; every batch has its own request ids.
	batches := make([][]*metering.Record, b.N)
	n := 0
	for i := range batches {
		recs := make([]*metering.Record, size)
		for j := range recs {
			recs[j] = usageRecordN(fmt.Sprintf("ib-%d", n), n, usageDay.Add(time.Duration(n)*time.Second))
			n++
		}
		batches[i] = recs
	}
	b.ReportAllocs()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	c0, _ := processCPU()
	for range writers {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(batches)); i = next.Add(1) - 1 {
				if _, err := s.InsertBatch(ctx, batches[i]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	c1, _ := processCPU()
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
	reportCPUPerRecord(b, c1-c0, n)
}

// reportCPUPerRecord reports process CPU (user and system, all goroutines)
// per record: on one core that, not wall time, is what the writer takes
// from request handling. PostgreSQL's own CPU is another process's and not
// in it.
func reportCPUPerRecord(b *testing.B, cpu time.Duration, records int) {
	if _, ok := processCPU(); !ok || records == 0 {
		return
	}
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(records), "cpu-µs/record")
}
