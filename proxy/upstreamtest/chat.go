package upstreamtest

import "encoding/json"

// OpenAI Chat Completions bodies and chunks (wire-formats.md §2).

type chatPromptDetails struct {
	CachedTokens int64 `json:"cached_tokens"`
	AudioTokens  int64 `json:"audio_tokens"`
}

type chatCompletionDetails struct {
	ReasoningTokens          int64 `json:"reasoning_tokens"`
	AudioTokens              int64 `json:"audio_tokens"`
	AcceptedPredictionTokens int64 `json:"accepted_prediction_tokens"`
	RejectedPredictionTokens int64 `json:"rejected_prediction_tokens"`
}

type chatUsage struct {
	PromptTokens            int64                 `json:"prompt_tokens"`
	CompletionTokens        int64                 `json:"completion_tokens"`
	TotalTokens             int64                 `json:"total_tokens"`
	PromptTokensDetails     chatPromptDetails     `json:"prompt_tokens_details"`
	CompletionTokensDetails chatCompletionDetails `json:"completion_tokens_details"`
}

func (rn *renderer) chatUsage() chatUsage {
	u := rn.usage
	return chatUsage{
		PromptTokens:            u.promptTokens(),
		CompletionTokens:        u.Output,
		TotalTokens:             u.promptTokens() + u.Output,
		PromptTokensDetails:     chatPromptDetails{CachedTokens: u.CacheRead},
		CompletionTokensDetails: chatCompletionDetails{ReasoningTokens: u.Reasoning},
	}
}

type chatMessage struct {
	Role        string     `json:"role"`
	Content     string     `json:"content"`
	Refusal     *string    `json:"refusal"`
	Annotations []struct{} `json:"annotations"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             *chatUsage   `json:"usage,omitempty"`
	ServiceTier       string       `json:"service_tier"`
	SystemFingerprint string       `json:"system_fingerprint"`
}

func chatFinishReason(sh shape) string {
	if sh.incomplete {
		return "length"
	}
	return "stop"
}

func (rn *renderer) chatBody(sh shape) []byte {
	c := chatCompletion{
		ID:      ChatCompletionID,
		Object:  "chat.completion",
		Created: CreatedUnix,
		Model:   sh.model,
		Choices: []chatChoice{{
			Message:      chatMessage{Role: "assistant", Content: sh.text(), Annotations: []struct{}{}},
			FinishReason: chatFinishReason(sh),
		}},
		ServiceTier:       "default",
		SystemFingerprint: "fp_fake",
	}
	if !sh.noUsage {
		u := rn.chatUsage()
		c.Usage = &u
	}
	return mustJSON(c)
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatChunk struct {
	ID                string            `json:"id"`
	Object            string            `json:"object"`
	Created           int64             `json:"created"`
	Model             string            `json:"model"`
	ServiceTier       string            `json:"service_tier"`
	SystemFingerprint string            `json:"system_fingerprint"`
	Choices           []chatChunkChoice `json:"choices"`
	// Usage is raw so it can be null, absent (nil) or a usage object.
	Usage json.RawMessage `json:"usage,omitempty"`
}

var jsonNull = json.RawMessage("null")

func (rn *renderer) chatStream(sh shape) [][]byte {
	null := jsonNull
	if rn.nullUsageOnRq && !sh.includeUsage {
		null = nil
	}
	chunk := func(choices []chatChunkChoice, usage json.RawMessage) []byte {
		return dataFrame(chatChunk{
			ID:                ChatCompletionID,
			Object:            "chat.completion.chunk",
			Created:           CreatedUnix,
			Model:             sh.model,
			ServiceTier:       "default",
			SystemFingerprint: "fp_fake",
			Choices:           choices,
			Usage:             usage,
		})
	}
	empty := ""
	frames := [][]byte{chunk([]chatChunkChoice{{Delta: chatDelta{Role: "assistant", Content: &empty}}}, null)}
	for _, d := range sh.deltas() {
		frames = append(frames, chunk([]chatChunkChoice{{Delta: chatDelta{Content: &d}}}, null))
		if sh.midError {
			break
		}
	}
	if sh.midError {
		// Some backends report a failure mid-stream as a bare error object
		// and stop without [DONE].
		return append(frames, dataFrame(openAIErrorEnvelope("server_error", nil,
			"The server had an error while processing your request. Sorry about that!")))
	}
	wantUsage := sh.includeUsage && !sh.noUsage
	var full json.RawMessage
	if wantUsage {
		full = mustJSON(rn.chatUsage())
	}
	finish := chatFinishReason(sh)
	finishUsage := null
	if wantUsage && rn.usageOnFinish {
		finishUsage = full
	}
	frames = append(frames, chunk([]chatChunkChoice{{FinishReason: &finish}}, finishUsage))
	if wantUsage && !rn.usageOnFinish {
		frames = append(frames, chunk([]chatChunkChoice{}, full))
	}
	return append(frames, []byte("data: [DONE]\n\n"))
}
