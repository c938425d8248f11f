package upstreamtest

// Gemini generateContent bodies and stream chunks (wire-formats.md §5).
// Google's JSON omits zero fields, hence the omitempty tags.

type geminiModality struct {
	Modality   string `json:"modality"`
	TokenCount int64  `json:"tokenCount"`
}

type geminiUsage struct {
	PromptTokenCount        int64            `json:"promptTokenCount"`
	CandidatesTokenCount    int64            `json:"candidatesTokenCount,omitempty"`
	TotalTokenCount         int64            `json:"totalTokenCount"`
	CachedContentTokenCount int64            `json:"cachedContentTokenCount,omitempty"`
	PromptTokensDetails     []geminiModality `json:"promptTokensDetails,omitempty"`
	CacheTokensDetails      []geminiModality `json:"cacheTokensDetails,omitempty"`
	ThoughtsTokenCount      int64            `json:"thoughtsTokenCount,omitempty"`
}

type geminiPart struct {
	Text string `json:"text"`
}

type geminiContent struct {
	Parts []geminiPart `json:"parts"`
	Role  string       `json:"role"`
}

type geminiCandidate struct {
	Content      geminiContent `json:"content"`
	FinishReason string        `json:"finishReason,omitempty"`
	Index        int           `json:"index"`
}

type geminiResponse struct {
	Candidates    []geminiCandidate `json:"candidates"`
	UsageMetadata *geminiUsage      `json:"usageMetadata,omitempty"`
	ModelVersion  string            `json:"modelVersion"`
	ResponseID    string            `json:"responseId"`
}

// geminiFullUsage is the authoritative usage of a finished response:
// candidates count visible output only, thoughts are separate.
func (rn *renderer) geminiFullUsage() *geminiUsage {
	u := rn.usage
	prompt := u.promptTokens()
	g := &geminiUsage{
		PromptTokenCount:        prompt,
		CandidatesTokenCount:    u.Output - u.Reasoning,
		TotalTokenCount:         prompt + u.Output,
		CachedContentTokenCount: u.CacheRead,
		PromptTokensDetails:     []geminiModality{{"TEXT", prompt}},
		ThoughtsTokenCount:      u.Reasoning,
	}
	if u.CacheRead > 0 {
		g.CacheTokensDetails = []geminiModality{{"TEXT", u.CacheRead}}
	}
	return g
}

// geminiPartialUsage is what intermediate stream chunks carry: the prompt
// count and a total that does not include output yet.
func (rn *renderer) geminiPartialUsage() *geminiUsage {
	p := rn.usage.promptTokens()
	return &geminiUsage{PromptTokenCount: p, TotalTokenCount: p}
}

func geminiFinishReason(sh shape) string {
	if sh.incomplete {
		return "MAX_TOKENS"
	}
	return "STOP"
}

func (rn *renderer) geminiChunk(sh shape, text, finish string, usage *geminiUsage) geminiResponse {
	if sh.noUsage {
		usage = nil
	}
	return geminiResponse{
		Candidates: []geminiCandidate{{
			Content:      geminiContent{Parts: []geminiPart{{Text: text}}, Role: "model"},
			FinishReason: finish,
		}},
		UsageMetadata: usage,
		ModelVersion:  sh.model,
		ResponseID:    GeminiResponseID,
	}
}

func (rn *renderer) geminiBody(sh shape) []byte {
	return mustJSON(rn.geminiChunk(sh, sh.text(), geminiFinishReason(sh), rn.geminiFullUsage()))
}

// geminiStream renders max(events, 1) chunks; the last carries the finish
// reason and the full usage. With alt=sse each is a data event; without,
// the chunks are the elements of one JSON array, streamed.
func (rn *renderer) geminiStream(sh shape) [][]byte {
	var chunks []any
	deltas := sh.deltas()
	if len(deltas) == 0 {
		deltas = []string{""}
	}
	for i, d := range deltas {
		last := i == len(deltas)-1
		if sh.midError && i == 1 {
			chunks = append(chunks, geminiErrorEnvelope(503, "The model is overloaded. Please try again later."))
			break
		}
		if last && !sh.midError {
			chunks = append(chunks, rn.geminiChunk(sh, d, geminiFinishReason(sh), rn.geminiFullUsage()))
		} else {
			chunks = append(chunks, rn.geminiChunk(sh, d, "", rn.geminiPartialUsage()))
		}
	}
	if sh.midError && len(deltas) == 1 {
		chunks = append(chunks, geminiErrorEnvelope(503, "The model is overloaded. Please try again later."))
	}
	frames := make([][]byte, len(chunks))
	for i, c := range chunks {
		if sh.geminiSSE {
			frames[i] = dataFrame(c)
			continue
		}
		var b []byte
		if i == 0 {
			b = append(b, '[')
		} else {
			b = append(b, ",\r\n"...)
		}
		b = append(b, mustJSON(c)...)
		if i == len(chunks)-1 {
			b = append(b, ']')
		}
		frames[i] = b
	}
	return frames
}
