package upstreamtest

import (
	"net/http"
	"strings"
)

// Stored Responses: GET and DELETE /v1/responses/{id}, POST
// /v1/responses/{id}/cancel and GET /v1/responses/{id}/input_items. The
// fake keeps nothing: every response it creates has the id ResponseID, so
// that id exists and any other is 404, as the provider answers an id its
// account does not hold.

// Stored-response actions, in route.action of an epStored route.
const (
	storedGet        = "get"
	storedDelete     = "delete"
	storedCancel     = "cancel"
	storedInputItems = "input_items"
)

// storedRoute matches a stored-response path; p has no trailing slash.
func storedRoute(method, p string) (route, bool) {
	i := strings.LastIndex(p, "/v1/responses/")
	if i < 0 {
		return route{}, false
	}
	id, sub, _ := strings.Cut(p[i+len("/v1/responses/"):], "/")
	if id == "" || id == "input_tokens" {
		return route{}, false
	}
	var action string
	switch {
	case sub == "" && method == http.MethodGet:
		action = storedGet
	case sub == "" && method == http.MethodDelete:
		action = storedDelete
	case sub == "cancel" && method == http.MethodPost:
		action = storedCancel
	case sub == "input_items" && method == http.MethodGet:
		action = storedInputItems
	default:
		return route{}, false
	}
	return route{dialect: OpenAIResponses, ep: epStored, id: id, action: action}, true
}

// stored answers a stored-response request.
func (x *exchange) stored(p plan, rt route) {
	if rt.id != ResponseID {
		x.errorResponse(http.StatusNotFound, "Response with id '"+rt.id+"' not found.")
		return
	}
	sh := shape{dialect: OpenAIResponses, model: defaultModels[OpenAIResponses], events: p.events, chunkBytes: p.chunkBytes}
	switch rt.action {
	case storedDelete:
		x.json(p, mustJSON(struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Deleted bool   `json:"deleted"`
		}{rt.id, "response", true}))
	case storedCancel:
		r := x.s.rn.responsesFinal(sh, sh.text())
		r.Status = "cancelled"
		x.json(p, mustJSON(r))
	case storedInputItems:
		type content struct {
			Type string `json:"type"`
			Text string `json:"text"`
		}
		type item struct {
			ID      string    `json:"id"`
			Type    string    `json:"type"`
			Role    string    `json:"role"`
			Content []content `json:"content"`
		}
		const itemID = "msg_fakeproviderinput000000000000"
		x.json(p, mustJSON(struct {
			Object  string `json:"object"`
			Data    []item `json:"data"`
			FirstID string `json:"first_id"`
			LastID  string `json:"last_id"`
			HasMore bool   `json:"has_more"`
		}{"list", []item{{itemID, "message", "user", []content{{"input_text", "hi"}}}}, itemID, itemID, false}))
	default:
		x.json(p, x.s.rn.responsesBody(sh))
	}
}
