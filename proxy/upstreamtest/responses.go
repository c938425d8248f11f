package upstreamtest

import "strings"

// OpenAI Responses bodies and events (wire-formats.md §3).

type responsesUsage struct {
	InputTokens        int64 `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int64 `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int64 `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int64 `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int64 `json:"total_tokens"`
}

func (rn *renderer) responsesUsage() *responsesUsage {
	u := rn.usage
	out := &responsesUsage{
		InputTokens:  u.promptTokens(),
		OutputTokens: u.Output,
		TotalTokens:  u.promptTokens() + u.Output,
	}
	out.InputTokensDetails.CachedTokens = u.CacheRead
	out.OutputTokensDetails.ReasoningTokens = u.Reasoning
	return out
}

type responsesPart struct {
	Type        string     `json:"type"`
	Text        string     `json:"text"`
	Annotations []struct{} `json:"annotations"`
}

type responsesItem struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Status  string          `json:"status"`
	Role    string          `json:"role"`
	Content []responsesPart `json:"content"`
}

type responsesError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type responsesIncomplete struct {
	Reason string `json:"reason"`
}

type responsesObject struct {
	ID                string               `json:"id"`
	Object            string               `json:"object"`
	CreatedAt         int64                `json:"created_at"`
	Status            string               `json:"status"`
	Error             *responsesError      `json:"error"`
	IncompleteDetails *responsesIncomplete `json:"incomplete_details"`
	Model             string               `json:"model"`
	Output            []responsesItem      `json:"output"`
	Store             bool                 `json:"store"`
	Usage             *responsesUsage      `json:"usage"`
}

// responsesFinal is the finished response object: completed, or incomplete
// at max_output_tokens, with usage unless noUsage.
func (rn *renderer) responsesFinal(sh shape, text string) responsesObject {
	status := "completed"
	var inc *responsesIncomplete
	if sh.incomplete {
		status = "incomplete"
		inc = &responsesIncomplete{Reason: "max_output_tokens"}
	}
	r := responsesObject{
		ID:                ResponseID,
		Object:            "response",
		CreatedAt:         CreatedUnix,
		Status:            status,
		IncompleteDetails: inc,
		Model:             sh.model,
		Output: []responsesItem{{
			ID: ResponseItemID, Type: "message", Status: status, Role: "assistant",
			Content: []responsesPart{{Type: "output_text", Text: text, Annotations: []struct{}{}}},
		}},
	}
	if !sh.noUsage {
		r.Usage = rn.responsesUsage()
	}
	return r
}

func (rn *renderer) responsesBody(sh shape) []byte {
	return mustJSON(rn.responsesFinal(sh, sh.text()))
}

type responsesLifecycle struct {
	Type           string          `json:"type"`
	SequenceNumber int             `json:"sequence_number"`
	Response       responsesObject `json:"response"`
}

type responsesItemEvent struct {
	Type           string        `json:"type"`
	SequenceNumber int           `json:"sequence_number"`
	OutputIndex    int           `json:"output_index"`
	Item           responsesItem `json:"item"`
}

type responsesPartEvent struct {
	Type           string        `json:"type"`
	SequenceNumber int           `json:"sequence_number"`
	ItemID         string        `json:"item_id"`
	OutputIndex    int           `json:"output_index"`
	ContentIndex   int           `json:"content_index"`
	Part           responsesPart `json:"part"`
}

type responsesDeltaEvent struct {
	Type           string     `json:"type"`
	SequenceNumber int        `json:"sequence_number"`
	ItemID         string     `json:"item_id"`
	OutputIndex    int        `json:"output_index"`
	ContentIndex   int        `json:"content_index"`
	Delta          string     `json:"delta"`
	Logprobs       []struct{} `json:"logprobs"`
}

type responsesTextDone struct {
	Type           string     `json:"type"`
	SequenceNumber int        `json:"sequence_number"`
	ItemID         string     `json:"item_id"`
	OutputIndex    int        `json:"output_index"`
	ContentIndex   int        `json:"content_index"`
	Text           string     `json:"text"`
	Logprobs       []struct{} `json:"logprobs"`
}

func (rn *renderer) responsesStream(sh shape) [][]byte {
	seq := 0
	next := func() int { seq++; return seq - 1 }
	frame := func(typ string, v any) []byte { return eventFrame(typ, v) }
	pending := responsesObject{
		ID: ResponseID, Object: "response", CreatedAt: CreatedUnix, Status: "in_progress",
		Model: sh.model, Output: []responsesItem{},
	}
	item := responsesItem{ID: ResponseItemID, Type: "message", Status: "in_progress", Role: "assistant", Content: []responsesPart{}}
	emptyPart := responsesPart{Type: "output_text", Annotations: []struct{}{}}
	frames := [][]byte{
		frame("response.created", responsesLifecycle{"response.created", next(), pending}),
		frame("response.in_progress", responsesLifecycle{"response.in_progress", next(), pending}),
		frame("response.output_item.added", responsesItemEvent{"response.output_item.added", next(), 0, item}),
		frame("response.content_part.added", responsesPartEvent{"response.content_part.added", next(), ResponseItemID, 0, 0, emptyPart}),
	}
	var sb strings.Builder
	for _, d := range sh.deltas() {
		sb.WriteString(d)
		frames = append(frames, frame("response.output_text.delta",
			responsesDeltaEvent{"response.output_text.delta", next(), ResponseItemID, 0, 0, d, []struct{}{}}))
		if sh.midError {
			break
		}
	}
	if sh.midError {
		failed := pending
		failed.Status = "failed"
		failed.Error = &responsesError{Code: "server_error", Message: "An error occurred while processing your request."}
		if !sh.noUsage {
			failed.Usage = rn.responsesUsage()
		}
		return append(frames, frame("response.failed", responsesLifecycle{"response.failed", next(), failed}))
	}
	text := sb.String()
	final := rn.responsesFinal(sh, text)
	part := final.Output[0].Content[0]
	terminal := "response.completed"
	if sh.incomplete {
		terminal = "response.incomplete"
	}
	return append(frames,
		frame("response.output_text.done", responsesTextDone{"response.output_text.done", next(), ResponseItemID, 0, 0, text, []struct{}{}}),
		frame("response.content_part.done", responsesPartEvent{"response.content_part.done", next(), ResponseItemID, 0, 0, part}),
		frame("response.output_item.done", responsesItemEvent{"response.output_item.done", next(), 0, final.Output[0]}),
		frame(terminal, responsesLifecycle{terminal, next(), final}),
	)
}
