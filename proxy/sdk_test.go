package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/option"
	oai "github.com/openai/openai-go/v3"
	oaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	goopenai "github.com/sashabaranov/go-openai"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// The official and community SDKs, pointed at tollgate with a workspace
// token, parse what tollgate forwards; their own usage view matches the
// provider's numbers. This proves client compatibility beyond byte tests.

func TestAnthropicSDKStreamsAndNot(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "claude-code")
	// Claude Code's way: the token as ANTHROPIC_AUTH_TOKEN (Bearer).
	cli := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAuthToken(tok), anthropicopt.WithMaxRetries(0))
	params := anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 64,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
	}
	want := upstreamtest.DefaultUsage

	msg, err := cli.Messages.New(context.Background(), params)
	if err != nil {
		t.Fatalf("non-streaming: %v", err)
	}
	if msg.Usage.InputTokens != want.InputUncached || msg.Usage.CacheReadInputTokens != want.CacheRead || msg.Usage.OutputTokens != want.Output {
		t.Errorf("SDK usage %+v, want %+v", msg.Usage, want)
	}

	// The x-api-key way (ANTHROPIC_API_KEY) on a stream, accumulated.
	cli2 := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAPIKey(tok), anthropicopt.WithMaxRetries(0))
	st := cli2.Messages.NewStreaming(context.Background(), params)
	var acc anthropic.Message
	for st.Next() {
		if err := acc.Accumulate(st.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if acc.Usage.OutputTokens != want.Output || acc.Usage.InputTokens != want.InputUncached || len(acc.Content) == 0 {
		t.Errorf("accumulated message usage %+v content %d blocks", acc.Usage, len(acc.Content))
	}
	if e.lastFake().Key != canaryAnthropic {
		t.Errorf("provider did not get the real key")
	}
}

func TestOpenAIGoResponsesAndChat(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "")
	cli := oai.NewClient(oaiopt.WithBaseURL(e.URL+"/openai/v1/"), oaiopt.WithAPIKey(tok), oaiopt.WithMaxRetries(0))
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIResponses)
	ctx := context.Background()

	r, err := cli.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("hi")}})
	if err != nil {
		t.Fatalf("responses: %v", err)
	}
	if r.Usage.OutputTokens != want.Output || r.Usage.OutputTokensDetails.ReasoningTokens != want.Reasoning {
		t.Errorf("responses usage %+v", r.Usage)
	}

	st := cli.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "gpt-5", Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("hi")}})
	completed := false
	for st.Next() {
		ev := st.Current()
		if ev.Type == "response.completed" {
			completed = true
			if ev.Response.Usage.InputTokens != want.InputTotal() {
				t.Errorf("streamed usage %+v", ev.Response.Usage)
			}
		}
	}
	if err := st.Err(); err != nil || !completed {
		t.Fatalf("responses stream: err=%v completed=%v", err, completed)
	}

	cs := cli.Chat.Completions.NewStreaming(ctx, oai.ChatCompletionNewParams{
		Model:         "gpt-4o",
		Messages:      []oai.ChatCompletionMessageParamUnion{oai.UserMessage("hi")},
		StreamOptions: oai.ChatCompletionStreamOptionsParam{IncludeUsage: oai.Bool(true)},
	})
	acc := oai.ChatCompletionAccumulator{}
	for cs.Next() {
		acc.AddChunk(cs.Current())
	}
	if err := cs.Err(); err != nil {
		t.Fatalf("chat stream: %v", err)
	}
	wantChat := upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIChat)
	if acc.Usage.CompletionTokens != wantChat.Output || acc.Usage.PromptTokensDetails.CachedTokens != wantChat.CacheRead {
		t.Errorf("chat usage %+v", acc.Usage)
	}
}

func TestGoOpenAIChat(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.token("ws", "p", "u", "opencode")
	cfg := goopenai.DefaultConfig(tok)
	cfg.BaseURL = e.URL + "/openai/v1"
	cli := goopenai.NewClientWithConfig(cfg)
	resp, err := cli.CreateChatCompletion(context.Background(), goopenai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []goopenai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.OpenAIChat)
	if int64(resp.Usage.PromptTokens) != want.InputTotal() || len(resp.Choices) != 1 {
		t.Errorf("usage %+v choices %d", resp.Usage, len(resp.Choices))
	}
	// A token tied to another harness is refused in OpenAI's envelope, which
	// the SDK parses into a typed error a program can act on.
	cfg = goopenai.DefaultConfig(e.token("ws", "p", "u", "claude-code"))
	cfg.BaseURL = e.URL + "/openai/v1"
	_, err = goopenai.NewClientWithConfig(cfg).CreateChatCompletion(context.Background(), goopenai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []goopenai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
	})
	var apiErr *goopenai.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatusCode != 403 || !strings.Contains(apiErr.Message, "does not speak") {
		t.Errorf("wrong-harness error as the SDK sees it: %v", err)
	}
}

// A stream the provider cuts ends, for each SDK, in an error that says
// why, read from the dialect's own error event (harness-clients.md §7.3),
// not in a bare network fault.
func TestSDKsReadWhyAStreamWasCut(t *testing.T) {
	e := newEnv(t, envOptions{fake: upstreamtest.Config{Keys: canaries, Fault: "cut=3"}})
	tok := e.token("ws", "p", "u", "")
	ctx := context.Background()
	const why = "stream broke off before its end"

	t.Run("anthropic-sdk-go", func(t *testing.T) {
		cli := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAPIKey(tok), anthropicopt.WithMaxRetries(0))
		st := cli.Messages.NewStreaming(ctx, anthropic.MessageNewParams{
			Model: "claude-sonnet-4-5", MaxTokens: 64,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
		})
		for st.Next() {
		}
		if err := st.Err(); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("stream error = %v, want one saying %q", err, why)
		}
	})
	t.Run("go-openai chat", func(t *testing.T) {
		if err := chatStreamEnd(t, e.URL, tok); !strings.Contains(err.Error(), why) {
			t.Errorf("stream error = %v, want one saying %q", err, why)
		}
	})
	t.Run("openai-go responses", func(t *testing.T) {
		failed, err := responsesFailedEvent(e.URL, tok)
		if failed == nil || failed.Response.Status != "failed" || !strings.Contains(failed.Response.Error.Message, why) || failed.Response.ID == "" {
			t.Errorf("response.failed event = %+v (stream error %v)", failed, err)
		}
	})
}

// A provider cut inside an event: the SDK still reports why, not a JSON
// error on the broken event's start (which tollgate no longer forwards).
func TestSDKsReadWhyAStreamWasCutInsideAnEvent(t *testing.T) {
	ctx := context.Background()
	const why = "stream broke off before its end"
	t.Run("anthropic-sdk-go", func(t *testing.T) {
		start := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n"
		partial := "event: content_block_start\ndata: {\"type\":\"content_bl"
		e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, []string{start, partial}, true)})
		cli := anthropic.NewClient(anthropicopt.WithBaseURL(e.URL+"/anthropic"), anthropicopt.WithAPIKey(e.token("ws", "p", "u", "")), anthropicopt.WithMaxRetries(0))
		st := cli.Messages.NewStreaming(ctx, anthropic.MessageNewParams{
			Model: "claude-sonnet-4-5", MaxTokens: 64,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
		})
		for st.Next() {
		}
		if err := st.Err(); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("stream error = %v, want one saying %q", err, why)
		}
	})
	t.Run("go-openai chat", func(t *testing.T) {
		ev := "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
		e := newEnv(t, envOptions{upstreamURL: burstUpstream(t, []string{ev, ev[:30]}, true)})
		if err := chatStreamEnd(t, e.URL, e.token("ws", "p", "u", "")); !strings.Contains(err.Error(), why) {
			t.Errorf("stream error = %v, want one saying %q", err, why)
		}
	})
}

// chatStreamEnd reads a go-openai chat stream through tollgate at url to
// its end and returns the error that ended it (io.EOF for a clean end).
func chatStreamEnd(t *testing.T, url, token string) error {
	t.Helper()
	cfg := goopenai.DefaultConfig(token)
	cfg.BaseURL = url + "/openai/v1"
	st, err := goopenai.NewClientWithConfig(cfg).CreateChatCompletionStream(context.Background(), goopenai.ChatCompletionRequest{
		Model: "gpt-4o", Messages: []goopenai.ChatCompletionMessage{{Role: "user", Content: "hi"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for err == nil {
		_, err = st.Recv()
	}
	return err
}
