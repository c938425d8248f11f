package upstreamtest

// Anthropic Messages bodies and events (wire-formats.md §4).

type anthropicCacheCreation struct {
	Ephemeral5m int64 `json:"ephemeral_5m_input_tokens"`
	Ephemeral1h int64 `json:"ephemeral_1h_input_tokens"`
}

type anthropicUsage struct {
	InputTokens              int64                  `json:"input_tokens"`
	CacheCreationInputTokens int64                  `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64                  `json:"cache_read_input_tokens"`
	CacheCreation            anthropicCacheCreation `json:"cache_creation"`
	OutputTokens             int64                  `json:"output_tokens"`
	ServiceTier              string                 `json:"service_tier"`
}

type anthropicBlock struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type anthropicMessage struct {
	ID           string           `json:"id"`
	Type         string           `json:"type"`
	Role         string           `json:"role"`
	Model        string           `json:"model"`
	Content      []anthropicBlock `json:"content"`
	StopReason   *string          `json:"stop_reason"`
	StopSequence *string          `json:"stop_sequence"`
	Usage        *anthropicUsage  `json:"usage,omitempty"`
}

func (rn *renderer) anthropicUsage(output int64) *anthropicUsage {
	u := rn.usage
	return &anthropicUsage{
		InputTokens:              u.InputUncached,
		CacheCreationInputTokens: u.CacheWrite5m + u.CacheWrite1h,
		CacheReadInputTokens:     u.CacheRead,
		CacheCreation:            anthropicCacheCreation{Ephemeral5m: u.CacheWrite5m, Ephemeral1h: u.CacheWrite1h},
		OutputTokens:             output,
		ServiceTier:              "standard",
	}
}

func anthropicStopReason(sh shape) *string {
	r := "end_turn"
	if sh.incomplete {
		r = "max_tokens"
	}
	return &r
}

func (rn *renderer) anthropicBody(sh shape) []byte {
	m := anthropicMessage{
		ID:         AnthropicMessageID,
		Type:       "message",
		Role:       "assistant",
		Model:      sh.model,
		Content:    []anthropicBlock{{Type: "text", Text: sh.text()}},
		StopReason: anthropicStopReason(sh),
	}
	if !sh.noUsage {
		m.Usage = rn.anthropicUsage(rn.usage.Output)
	}
	return mustJSON(m)
}

func (rn *renderer) anthropicStream(sh shape) [][]byte {
	start := anthropicMessage{
		ID:      AnthropicMessageID,
		Type:    "message",
		Role:    "assistant",
		Model:   sh.model,
		Content: []anthropicBlock{},
	}
	if !sh.noUsage {
		// message_start carries the input side and a placeholder output of
		// 1; message_delta's output is cumulative and replaces it.
		start.Usage = rn.anthropicUsage(1)
	}
	frames := [][]byte{
		eventFrame("message_start", struct {
			Type    string           `json:"type"`
			Message anthropicMessage `json:"message"`
		}{"message_start", start}),
		eventFrame("content_block_start", struct {
			Type         string         `json:"type"`
			Index        int            `json:"index"`
			ContentBlock anthropicBlock `json:"content_block"`
		}{"content_block_start", 0, anthropicBlock{Type: "text"}}),
		eventFrame("ping", struct {
			Type string `json:"type"`
		}{"ping"}),
	}
	type textDelta struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	for _, d := range sh.deltas() {
		frames = append(frames, eventFrame("content_block_delta", struct {
			Type  string    `json:"type"`
			Index int       `json:"index"`
			Delta textDelta `json:"delta"`
		}{"content_block_delta", 0, textDelta{"text_delta", d}}))
		if sh.midError {
			break
		}
	}
	if sh.midError {
		return append(frames, eventFrame("error", anthropicErrorEnvelope("overloaded_error", "Overloaded")))
	}
	type outputUsage struct {
		OutputTokens int64 `json:"output_tokens"`
	}
	var usage *outputUsage
	if !sh.noUsage {
		usage = &outputUsage{rn.usage.Output}
	}
	return append(frames,
		eventFrame("content_block_stop", struct {
			Type  string `json:"type"`
			Index int    `json:"index"`
		}{"content_block_stop", 0}),
		eventFrame("message_delta", struct {
			Type  string `json:"type"`
			Delta struct {
				StopReason   *string `json:"stop_reason"`
				StopSequence *string `json:"stop_sequence"`
			} `json:"delta"`
			Usage *outputUsage `json:"usage,omitempty"`
		}{Type: "message_delta", Delta: struct {
			StopReason   *string `json:"stop_reason"`
			StopSequence *string `json:"stop_sequence"`
		}{StopReason: anthropicStopReason(sh)}, Usage: usage}),
		eventFrame("message_stop", struct {
			Type string `json:"type"`
		}{"message_stop"}),
	)
}
