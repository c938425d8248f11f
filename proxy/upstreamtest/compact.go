package upstreamtest

import "github.com/tidwall/gjson"

// Compaction, two ways. POST /v1/responses/compact answers one JSON
// object, never a stream: the conversation's user messages followed by one
// opaque compaction item, and the pass's usage in the same shape as a
// response's. A POST /v1/responses whose input ends in a
// {"type":"compaction_trigger"} item (Codex's remote compaction v2) is an
// ordinary response, streamed or not, whose only output is that item.

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

// compactionTriggered reports whether a Responses request's input ends in
// a compaction_trigger item.
func compactionTriggered(body []byte) bool {
	return gjson.GetBytes(body, "input.@reverse.0.type").Str == "compaction_trigger"
}

// compactionResponse is a response object whose output is one compaction
// item.
type compactionResponse struct {
	ID        string           `json:"id"`
	Object    string           `json:"object"`
	CreatedAt int64            `json:"created_at"`
	Status    string           `json:"status"`
	Model     string           `json:"model"`
	Output    []compactionItem `json:"output"`
	Usage     *responsesUsage  `json:"usage"`
}

type compactionItemEvent struct {
	Type           string         `json:"type"`
	SequenceNumber int            `json:"sequence_number"`
	OutputIndex    int            `json:"output_index"`
	Item           compactionItem `json:"item"`
}

type compactionLifecycle struct {
	Type           string             `json:"type"`
	SequenceNumber int                `json:"sequence_number"`
	Response       compactionResponse `json:"response"`
}

func (rn *renderer) compactionFinal(sh shape) compactionResponse {
	r := compactionResponse{ID: ResponseID, Object: "response", CreatedAt: CreatedUnix, Status: "completed", Model: sh.model,
		Output: []compactionItem{{compactionItemID, "compaction", "gAAAAfakeprovider-compacted-history"}}}
	if !sh.noUsage {
		r.Usage = rn.responsesUsage()
	}
	return r
}

func (rn *renderer) compactionStream(sh shape) [][]byte {
	final := rn.compactionFinal(sh)
	pending := final
	pending.Status, pending.Output, pending.Usage = "in_progress", []compactionItem{}, nil
	return [][]byte{
		eventFrame("response.created", compactionLifecycle{"response.created", 0, pending}),
		eventFrame("response.in_progress", compactionLifecycle{"response.in_progress", 1, pending}),
		eventFrame("response.output_item.added", compactionItemEvent{"response.output_item.added", 2, 0, final.Output[0]}),
		eventFrame("response.output_item.done", compactionItemEvent{"response.output_item.done", 3, 0, final.Output[0]}),
		eventFrame("response.completed", compactionLifecycle{"response.completed", 4, final}),
	}
}
