package proxy

import (
	"os"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/metering"
)

// captureEvents splits a testdata/sse capture into its events, each ending
// in its blank line.
func captureEvents(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile("../testdata/sse/" + name + ".txt")
	if err != nil {
		t.Fatal(err)
	}
	var evs []string
	for _, ev := range strings.SplitAfter(string(b), "\n\n") {
		if strings.TrimSpace(ev) != "" {
			evs = append(evs, ev)
		}
	}
	return evs
}

// A stream whose provider ran web searches is recorded with the count and
// costed with their fee: the captures' tokens plus 2 × $0.01, worked by
// hand (Sonnet 4.5: 11,873 × $3 + 214 × $15 per 1M = 38,829 µUSD; GPT-5.1:
// 17,374 × $1.25 + 4,096 × $0.125 + 412 × $10 per 1M = 26,350 µUSD).
func TestWebSearchesAreRecordedAndPriced(t *testing.T) {
	for _, tc := range []struct {
		capture, path, body string
		cost                int64
	}{
		{"anthropic-messages_web_search", "/anthropic/v1/messages", anthropicStreamBody, 38_829 + 20_000},
		{"openai-responses_web_search", "/openai/v1/responses", `{"model":"gpt-5.1","input":"hi","stream":true,"tools":[{"type":"web_search"}]}`, 26_350 + 20_000},
	} {
		t.Run(tc.capture, func(t *testing.T) {
			e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, captureEvents(t, tc.capture), false), pricer: metering.DefaultPrices()})
			resp := e.do("POST", tc.path, e.token("ws", "p", "u", ""), tc.body)
			readAll(t, resp.Body)
			resp.Body.Close()
			rec := e.record(resp)
			if rec.Usage == nil || rec.Usage.WebSearchRequests != 2 || rec.CostMicroUSD == nil || *rec.CostMicroUSD != tc.cost {
				t.Errorf("record usage %+v cost %v, want 2 web searches and %d µUSD", rec.Usage, rec.CostMicroUSD, tc.cost)
			}
		})
	}
}
