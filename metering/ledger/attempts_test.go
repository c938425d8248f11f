package ledger

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/tollgate/tollgate/metering"
)

// TestStoreKeepsAttempts checks the attempts column on both engines: the
// JSON array of a failed-over request's attempts, and empty for a request
// that made one.
func TestStoreKeepsAttempts(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			s := mustUsageStore(t, engine)
			ctx := context.Background()
			failed := usageRecordN("fo-1", 2, usageDay)
			failed.Attempts = []metering.Attempt{
				{CredentialID: "cred-a", Provider: "anthropic", Error: "header_timeout", Duration: 60 * time.Second, MayBill: true},
				{CredentialID: "cred-b", Provider: "deepseek-anthropic", Status: 200, Duration: 300 * time.Millisecond},
			}
			single := usageRecordN("fo-2", 4, usageDay)
			if n, err := s.InsertBatch(ctx, []*metering.Record{failed, single}); err != nil || n != 2 {
				t.Fatalf("InsertBatch: %d, %v", n, err)
			}
			for _, r := range []*metering.Record{failed, single} {
				var text string
				if err := s.db.QueryRowContext(ctx, `SELECT attempts FROM usage_records WHERE request_id = $1`, r.RequestID).Scan(&text); err != nil {
					t.Fatal(err)
				}
				if len(r.Attempts) == 0 {
					if text != "" {
						t.Errorf("%s: attempts %q, want ''", r.RequestID, text)
					}
					continue
				}
				var got []metering.Attempt
				if err := json.Unmarshal([]byte(text), &got); err != nil || !reflect.DeepEqual(got, r.Attempts) {
					t.Errorf("%s: attempts %s (%v), want %+v", r.RequestID, text, err, r.Attempts)
				}
			}
		})
	}
}
