package upstreamtest

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
)

func TestGateHoldsAStreamAfterHeadersAndTheFirstEvent(t *testing.T) {
	for _, d := range allDialects {
		t.Run(string(d), func(t *testing.T) {
			gate := NewGate()
			defer gate.Release()
			s, base := MustStart(t, Config{Hold: gate.Hold})

			// Headers arrive while the gate is shut: Do returns.
			resp := send(t, base, call{dialect: d, stream: true})
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			br := bufio.NewReader(resp.Body)
			first := readEvent(t, br)
			select {
			case <-gate.Reached():
			case <-time.After(2 * time.Second):
				t.Fatal("no stream reached the gate")
			}
			if gate.Waiting() != 1 {
				t.Errorf("%d streams waiting, want 1", gate.Waiting())
			}
			if r, _ := s.Last(); string(r.Response) != first || r.Outcome != OutcomeInFlight {
				t.Errorf("record while held: %q (%q), want the first event, in flight", r.Response, r.Outcome)
			}
			gate.Release()
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatal(err)
			}
			if len(parseSSE(t, []byte(first+string(rest)))) < 3 {
				t.Errorf("released stream is short: %q", rest)
			}
			testkit.Eventually(t, 2*time.Second, "the stream to complete", func() bool { return s.Counters().StreamsCompleted == 1 })
		})
	}
}

func TestClientLeavingAHeldStreamCountsAsCancelled(t *testing.T) {
	gate := NewGate()
	defer gate.Release()
	s, base := MustStart(t, Config{Hold: gate.Hold})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/responses",
		strings.NewReader(call{dialect: OpenAIResponses, stream: true}.body()))
	setAuth(req.Header, OpenAIResponses, "k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-gate.Reached()
	cancel()
	testkit.Eventually(t, 2*time.Second, "the held stream to be cancelled", func() bool {
		c := s.Counters()
		return c.StreamsCancelled == 1 && c.StreamsActive == 0 && gate.Waiting() == 0
	})
	if r, _ := s.Last(); r.Outcome != OutcomeCancelled {
		t.Errorf("outcome %q, want cancelled", r.Outcome)
	}
}

func TestGateDoesNotHoldJSONResponses(t *testing.T) {
	gate := NewGate()
	defer gate.Release()
	_, base := MustStart(t, Config{Hold: gate.Hold})
	if resp, _ := do(t, base, call{dialect: Anthropic}); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if gate.Waiting() != 0 {
		t.Error("a JSON response waited at the gate")
	}
}
