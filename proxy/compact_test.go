package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	oai "github.com/openai/openai-go/v3"
	oaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// POST /v1/responses/compact compacts a long conversation into one opaque
// item. It is billed like a response (its body carries a usage object), is
// never streamed, and may chain onto a stored response.

// captureBody is an openai-go middleware that keeps the body the SDK sent.
func captureBody(sent *[]byte) oaiopt.RequestOption {
	return oaiopt.WithMiddleware(func(req *http.Request, next oaiopt.MiddlewareNext) (*http.Response, error) {
		if req.Body != nil {
			b, err := io.ReadAll(req.Body)
			if err != nil {
				return nil, err
			}
			*sent = b
			req.Body = io.NopCloser(bytes.NewReader(b))
		}
		return next(req)
	})
}

// TestOpenAIGoCompactIsForwardedAndMetered: the official SDK's Compact
// reaches the provider's /v1/responses/compact with its body unchanged,
// gets the compacted response back, and the usage record holds the
// compaction's tokens and their cost at the requested model's price.
func TestOpenAIGoCompactIsForwardedAndMetered(t *testing.T) {
	prices := metering.DefaultPrices()
	e := newEnv(t, envOptions{pricer: prices, fake: upstreamtest.Config{
		Keys:  canaries,
		Usage: upstreamtest.Usage{InputUncached: 91000, CacheRead: 9000, Output: 1200, Reasoning: 700},
	}})
	tok := e.token("ws-a", "proj-a", "alice", "codex")
	var sent []byte
	var raw *http.Response
	cli := oai.NewClient(oaiopt.WithBaseURL(e.URL+"/openai/v1/"), oaiopt.WithAPIKey(tok), oaiopt.WithMaxRetries(0),
		captureBody(&sent), oaiopt.WithResponseInto(&raw))

	got, err := cli.Responses.Compact(context.Background(), responses.ResponseCompactParams{
		Model:          "gpt-5",
		Instructions:   oai.String("keep the user's goals"),
		PromptCacheKey: oai.String("sess-1"),
		Input: responses.ResponseCompactParamsInputUnion{OfResponseInputItemArray: []responses.ResponseInputItemUnionParam{
			responses.ResponseInputItemParamOfMessage("write a parser", responses.EasyInputMessageRoleUser),
			responses.ResponseInputItemParamOfMessage("here is a parser", responses.EasyInputMessageRoleAssistant),
		}},
	})
	if err != nil {
		t.Fatalf("compact: %v", err)
	}
	if got.ID != upstreamtest.CompactionID || string(got.Object) != "response.compaction" || len(got.Output) != 2 || got.Output[1].Type != "compaction" {
		t.Errorf("compacted response id %q object %q, %d output items", got.ID, got.Object, len(got.Output))
	}
	if got.Usage.InputTokens != 100000 || got.Usage.InputTokensDetails.CachedTokens != 9000 || got.Usage.OutputTokens != 1200 {
		t.Errorf("SDK usage %+v", got.Usage)
	}

	up := e.lastFake()
	if up.Method != http.MethodPost || up.Path != "/v1/responses/compact" || up.Key != canaryOpenAI {
		t.Errorf("provider saw %s %s (real key: %v)", up.Method, up.Path, up.Key == canaryOpenAI)
	}
	if len(sent) == 0 || !bytes.Equal(up.Body, sent) {
		t.Errorf("forwarded body differs from the SDK's:\n got %s\nwant %s", up.Body, sent)
	}
	if strings.Contains(up.Header.Get("Accept"), "event-stream") {
		t.Errorf("compact was asked for as a stream: Accept %q", up.Header.Get("Accept"))
	}

	rec := e.record(raw)
	want := metering.Usage{InputUncached: 91000, CacheRead: 9000, Output: 1200, Reasoning: 700}
	if rec.Path != "/v1/responses/compact" || rec.Dialect != "openai-responses" || rec.Stream || rec.Outcome != metering.OutcomeOK || rec.Source != metering.SourceUpstream {
		t.Errorf("record path %q dialect %q stream %v outcome %q source %q", rec.Path, rec.Dialect, rec.Stream, rec.Outcome, rec.Source)
	}
	if rec.Usage == nil || *rec.Usage != want {
		t.Fatalf("record usage %+v, want %+v", rec.Usage, want)
	}
	if rec.UpstreamID != upstreamtest.CompactionID || rec.Model() != "gpt-5" {
		t.Errorf("record upstream id %q model %q", rec.UpstreamID, rec.Model())
	}
	wantCost, _ := prices.Cost("openai", "gpt-5", "", want)
	if wantCost == nil || *wantCost <= 0 || rec.CostMicroUSD == nil || *rec.CostMicroUSD != *wantCost {
		t.Errorf("record cost %v, want %v micro-USD (gpt-5's price for the compaction's tokens)", ptrText(rec.CostMicroUSD), ptrText(wantCost))
	}
}

func ptrText(p *int64) string {
	if p == nil {
		return "nil"
	}
	return strconv.FormatInt(*p, 10)
}

// TestCompactWithoutUsageIsMissingNotFree: a compaction whose answer has
// no usage is recorded as usage missing, never as zero tokens.
func TestCompactWithoutUsageIsMissingNotFree(t *testing.T) {
	e := newEnv(t, envOptions{pricer: metering.DefaultPrices()})
	resp := e.do("POST", "/openai/v1/responses/compact", e.token("ws", "p", "u", ""),
		`{"model":"gpt-5","input":"hi"}`, upstreamtest.HeaderFault, "no-usage")
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"response.compaction"`)) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	rec := e.record(resp)
	if rec.Source != metering.SourceMissing || rec.Usage != nil || rec.CostMicroUSD != nil {
		t.Errorf("record source %q usage %+v cost %s, want missing with no tokens and no cost", rec.Source, rec.Usage, ptrText(rec.CostMicroUSD))
	}
}

// TestCompactNeedsAModel: compact is metered, so like a response it must
// name the model it is billed at; tollgate refuses it before the provider.
func TestCompactNeedsAModel(t *testing.T) {
	e := newEnv(t, envOptions{})
	before := e.fake.Counters().Requests
	resp := e.do("POST", "/openai/v1/responses/compact", e.token("ws", "p", "u", ""), `{"input":"hi"}`)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), `"invalid_request_error"`) || !strings.Contains(string(body), "model") {
		t.Errorf("status %d body %s, want 400 naming the model in the OpenAI envelope", resp.StatusCode, body)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("the provider saw a compact request without a model")
	}
}

// TestCompactionTriggerStreamIsMetered: Codex's remote compaction (v2) is
// a streamed POST /v1/responses whose input ends in a compaction_trigger
// item and whose only output is a compaction item; it is forwarded as is
// and billed like any response.
func TestCompactionTriggerStreamIsMetered(t *testing.T) {
	e := newEnv(t, envOptions{pricer: metering.DefaultPrices()})
	const body = `{"model":"gpt-5","stream":true,"store":false,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"write a parser"}]},{"type":"compaction_trigger"}]}`
	resp := e.do("POST", "/openai/v1/responses", e.token("ws", "p", "u", "codex"), body)
	got := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(got, []byte(`"type":"compaction"`)) || !bytes.Contains(got, []byte("response.completed")) {
		t.Fatalf("status %d: %s", resp.StatusCode, got)
	}
	if up := e.lastFake(); string(up.Body) != body {
		t.Errorf("forwarded body %s, want the client's", up.Body)
	}
	rec := e.record(resp)
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIResponses)
	if !rec.Stream || rec.Outcome != metering.OutcomeOK || rec.Source != metering.SourceUpstream || rec.Usage == nil ||
		rec.Usage.InputUncached != want.InputUncached || rec.Usage.Output != want.Output || rec.CostMicroUSD == nil {
		t.Errorf("record stream %v outcome %q source %q usage %+v cost %s", rec.Stream, rec.Outcome, rec.Source, rec.Usage, ptrText(rec.CostMicroUSD))
	}
}
