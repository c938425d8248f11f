package main

import (
	"bufio"
	"context"
	"database/sql"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// TestKillWithStreamsOpenRecordsEveryRequestTheProviderReceived is issue
// 12's probe (defect 6) on the real binary: tollgate is SIGKILLed with
// streams open (the provider sent message_start, then holds them) after
// some finished requests (whole answers); after a restart, the provider's request count
// equals the records, each id once, and the open streams are interrupted
// with the input tokens message_start carried.
func TestKillWithStreamsOpenRecordsEveryRequestTheProviderReceived(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	const (
		canary   = "sk-ant-api03-CANARYkill0123456789abcdefghij"
		finished = 20
		open     = 64
	)
	gate := upstreamtest.NewGate()
	t.Cleanup(gate.Release)
	// Every stream is held; the finished requests are whole answers.
	fake, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{canary}, RecordLimit: -1, Hold: gate.Hold})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, canary+"\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	tok, _, _ := c.run(ctx, "", "token", "issue", "--workspace", "ws-inflight", "--project", "p", "--user", "u")
	tok = strings.TrimSpace(tok)
	child, base := startChild(t, c.env)

	send := func(stream bool) *http.Response {
		body := `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`
		if stream {
			body = `{"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}`
		}
		req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for range finished {
		resp := send(false)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var openIDs []string
	for range open {
		resp := send(true)
		defer resp.Body.Close()
		// The first event reached the client, so tollgate metered it.
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		openIDs = append(openIDs, resp.Header.Get("X-Tollgate-Request-Id"))
	}
	testkit.Eventually(t, 10*time.Second, "streams held at the provider", func() bool { return gate.Waiting() == open })
	// Progress lines are written as the proxy reads message_start, which
	// the client has seen; SIGKILL now.
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	received := fake.Counters().Requests

	db := restartToReplay(t, c)
	var records, ids int64
	db.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_records WHERE workspace = $1`, "ws-inflight").Scan(&records, &ids)
	t.Logf("provider received %d requests (%d open at the kill); %d records", received, open, records)
	if records != received || ids != received {
		t.Errorf("provider received %d requests; %d records for %d ids", received, records, ids)
	}
	for _, id := range openIDs {
		var outcome, source string
		var input sql.NullInt64
		if err := db.QueryRowContext(ctx, `SELECT outcome, usage_source, input_uncached FROM usage_records WHERE request_id = $1`, id).Scan(&outcome, &source, &input); err != nil {
			t.Errorf("stream %s open at the kill: %v", id, err)
			continue
		}
		if outcome != metering.OutcomeInterrupted || source != metering.SourcePartial || !input.Valid || input.Int64 == 0 {
			t.Errorf("stream %s open at the kill: %s/%s input %v, want interrupted/partial with input tokens", id, outcome, source, input)
		}
	}
}

// restartToReplay starts tollgate again on c's spool and database, so that
// it replays what a killed one left, stops it cleanly, and opens the
// database (closed at cleanup).
func restartToReplay(t *testing.T, c *cli) *store.DB {
	t.Helper()
	child, _ := startChild(t, c.env)
	child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Fatalf("restarted server did not stop cleanly: %v", err)
	}
	db, err := store.Open(context.Background(), c.env["TOLLGATE_DB"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
