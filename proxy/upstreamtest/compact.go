package upstreamtest

// POST /v1/responses/compact answers one JSON object, never a stream: the
// conversation's user messages followed by one opaque compaction item,
// and the pass's usage in the same shape as a response's.

// CompactionID is the id of every compacted response the fake returns.
const CompactionID = "resp_fakeprovidercompaction000000"

// compactionItemID is the id of the compaction item in it.
const compactionItemID = "cmp_fakeprovider00000000000000000"

type compactionItem struct {
	ID               string `json:"id"`
	Type             string `json:"type"`
	EncryptedContent string `json:"encrypted_content"`
}

// compactedUser is a user message kept verbatim by compaction.
type compactedUser struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Status  string `json:"status"`
	Role    string `json:"role"`
	Content []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
}

type compactedResponse struct {
	ID        string          `json:"id"`
	Object    string          `json:"object"`
	CreatedAt int64           `json:"created_at"`
	Output    []any           `json:"output"`
	Usage     *responsesUsage `json:"usage"`
}

func (rn *renderer) compactBody(p plan) []byte {
	user := compactedUser{ID: "msg_fakeprovideruser0000000000000", Type: "message", Status: "completed", Role: "user"}
	user.Content = append(user.Content, struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}{"input_text", "hi"})
	r := compactedResponse{
		ID: CompactionID, Object: "response.compaction", CreatedAt: CreatedUnix,
		Output: []any{user, compactionItem{compactionItemID, "compaction", "gAAAAfakeprovider-compacted-history"}},
	}
	if !p.fault.noUsage {
		r.Usage = rn.responsesUsage()
	}
	return mustJSON(r)
}
