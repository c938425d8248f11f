package ledger

import (
	"fmt"
	"testing"
	"time"
)

// TestSpoolBacklogIsZeroOnceEverythingIsCommitted pins what the spool gauge
// reports: records the store does not hold yet. Committed records stay in
// the active segment until it rotates, so the bytes on disk grow with
// nothing waiting, which dashboards read as a backlog (issue 15, B12).
func TestSpoolBacklogIsZeroOnceEverythingIsCommitted(t *testing.T) {
	s := mustUsageStore(t, "sqlite")
	down := &flakyInserter{next: s}
	w := mustWriter(t, fastWriterConfig(t.TempDir()), down)
	down.down.Store(true)
	const n = 50
	for i := range n {
		w.Record(usageRecordN(fmt.Sprintf("req-b-%d", i), i, usageDay.Add(time.Duration(i)*time.Minute)))
	}
	writerEventually(t, 5*time.Second, func() bool { return w.Stats().SpoolBytes > 0 })
	if st := w.Stats(); st.SpoolBytes != st.SpoolDisk {
		t.Errorf("store down: backlog %d bytes, want all %d bytes on disk", st.SpoolBytes, st.SpoolDisk)
	}
	down.down.Store(false)
	mustFlush(t, w)
	st := w.Stats()
	if st.Inserted != n || st.Queued != 0 {
		t.Fatalf("stats %+v: want %d inserted, 0 queued", st, n)
	}
	if st.SpoolDisk == 0 {
		t.Fatalf("stats %+v: the active segment should still hold the committed lines", st)
	}
	if st.SpoolBytes != 0 {
		t.Errorf("backlog %d bytes with every record committed (%d on disk), want 0", st.SpoolBytes, st.SpoolDisk)
	}
}
