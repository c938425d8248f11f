package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestRefusalCounterAggregatesPerMinute(t *testing.T) {
	for _, engine := range usageEngines(t) {
		t.Run(engine, func(t *testing.T) {
			ctx := context.Background()
			s := mustUsageStore(t, engine)
			c := NewRefusalCounter(s, nil)
			now := time.Date(2026, 12, 2, 17, 30, 10, 0, time.UTC)
			c.now = func() time.Time { return now }
			bad := Refusal{Client: "192.0.2.1", Reason: "invalid", Dialect: "anthropic-messages"}
			revoked := Refusal{Client: "192.0.2.1", TokenID: "tok_1", Workspace: "ws-1", Reason: "revoked", Dialect: "openai-chat"}
			for range 1000 {
				c.Add(bad)
			}
			c.Add(revoked)
			if err := c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// The same minute again adds to its row; the next minute is a row.
			for range 500 {
				c.Add(bad)
			}
			now = now.Add(time.Minute)
			c.Add(bad)
			c.Start()
			if err := c.Close(ctx); err != nil {
				t.Fatal(err)
			}
			rows, err := s.Refusals(ctx, now.Add(-time.Hour), now.Add(time.Hour), "", 10)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int64{}
			for _, r := range rows {
				got[fmt.Sprintf("%s %s %s %s %s", r.Minute.Format("15:04"), r.Client, r.Reason, r.TokenID, r.Workspace)] = r.Count
			}
			want := map[string]int64{
				"17:30 192.0.2.1 invalid  ":          1500,
				"17:30 192.0.2.1 revoked tok_1 ws-1": 1,
				"17:31 192.0.2.1 invalid  ":          1,
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("refusal rows\n got %v\nwant %v", got, want)
			}
			ws, err := s.Refusals(ctx, now.Add(-time.Hour), now.Add(time.Hour), "ws-1", 10)
			if err != nil || len(ws) != 1 || ws[0].TokenID != "tok_1" {
				t.Errorf("refusals of ws-1: %v, %v", ws, err)
			}
		})
	}
}

func TestRefusalCounterIsBoundedAcrossAddresses(t *testing.T) {
	s := mustUsageStore(t, usageEngines(t)[0])
	c := NewRefusalCounter(s, nil)
	now := time.Date(2026, 12, 2, 17, 30, 10, 0, time.UTC)
	c.now = func() time.Time { return now }
	for i := range maxPendingRefusals + 500 {
		c.Add(Refusal{Client: fmt.Sprintf("10.%d.%d.%d", i>>16, byte(i>>8), byte(i)), Reason: "invalid", Dialect: "gemini"})
	}
	c.mu.Lock()
	n, other := len(c.pending), c.pending[refusalKey{minute: c.now().UTC().Truncate(time.Minute), Refusal: Refusal{Client: refusalOverflowClient, Reason: "invalid", Dialect: "gemini"}}]
	c.mu.Unlock()
	if n > maxPendingRefusals+1 || other != 500 {
		t.Errorf("%d pending rows (cap %d), %d under %s, want 500", n, maxPendingRefusals, other, refusalOverflowClient)
	}
	// Never started, Close still flushes at once.
	c = NewRefusalCounter(s, nil)
	c.Add(Refusal{Client: "192.0.2.9", Reason: "missing", Dialect: "gemini"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := c.Close(ctx); err != nil || time.Since(t0) > 2*time.Second {
		t.Errorf("Close of a counter never started: %v after %s", err, time.Since(t0))
	}
}
