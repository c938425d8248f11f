package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	oai "github.com/openai/openai-go/v3"
	oaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/metering"
	"github.com/tollgate/tollgate/metering/ledger"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
	"github.com/tollgate/tollgate/resolver"
)

// storedCall is one request addressing a stored response, by path or by
// previous_response_id; every kind the shipped registry serves.
type storedCall struct {
	method, path, body string
}

func storedCalls(id string) []storedCall {
	return []storedCall{
		{"GET", "/openai/v1/responses/" + id, ""},
		{"GET", "/openai/v1/responses/" + id + "/input_items?limit=5", ""},
		{"POST", "/openai/v1/responses/" + id + "/cancel", ""},
		{"POST", "/openai/v1/responses", `{"model":"gpt-5","input":"more","previous_response_id":"` + id + `"}`},
		{"POST", "/openai/v1/responses/input_tokens", `{"model":"gpt-5","input":"more","previous_response_id":"` + id + `"}`},
		{"POST", "/openai/v1/responses/compact", `{"model":"gpt-5","previous_response_id":"` + id + `"}`},
		{"DELETE", "/openai/v1/responses/" + id, ""},
	}
}

// createResponse makes a stored response as the token's project and
// returns its id.
func createResponse(t *testing.T, e *testEnv, tok string) string {
	t.Helper()
	resp := e.do("POST", "/openai/v1/responses", tok, `{"model":"gpt-5","input":"hi"}`)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("create: status %d: %s", resp.StatusCode, body)
	}
	var r struct{ ID string }
	if err := json.Unmarshal(body, &r); err != nil || r.ID != upstreamtest.ResponseID {
		t.Fatalf("create: id %q, %v", r.ID, err)
	}
	return r.ID
}

// refusedAsMissing checks a 404 in OpenAI's envelope that the fake never
// saw, and returns its message.
func refusedAsMissing(t *testing.T, e *testEnv, tok string, c storedCall) string {
	t.Helper()
	before := e.fake.Counters().Requests
	resp := e.do(c.method, c.path, tok, c.body)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	var env struct {
		Error struct{ Message, Type, Code string }
	}
	if err := json.Unmarshal(body, &env); resp.StatusCode != 404 || err != nil || env.Error.Code != "not_found" || env.Error.Type != "invalid_request_error" {
		t.Errorf("%s %s: status %d body %s, want 404 in the OpenAI envelope", c.method, c.path, resp.StatusCode, body)
	}
	if n := e.fake.Counters().Requests; n != before {
		t.Errorf("%s %s: the provider saw %d requests for another project's response", c.method, c.path, n-before)
	}
	if rec := e.record(resp); rec.Outcome != metering.OutcomeRejected || rec.Status != 404 {
		t.Errorf("%s %s: record outcome/status %s/%d, want rejected/404", c.method, c.path, rec.Outcome, rec.Status)
	}
	return env.Error.Message
}

// forwarded checks that the call reached the provider and was answered.
func forwarded(t *testing.T, e *testEnv, tok string, c storedCall) upstreamtest.Request {
	t.Helper()
	resp := e.do(c.method, c.path, tok, c.body)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: status %d: %s", c.method, c.path, resp.StatusCode, body)
	}
	up := e.lastFake()
	if up.Method != c.method || !strings.HasSuffix(c.path[:strings.IndexAny(c.path+"?", "?")], up.Path) {
		t.Fatalf("%s %s: provider saw %s %s", c.method, c.path, up.Method, up.Path)
	}
	return up
}

// TestStoredResponsesBelongToTheirProject: on the shared platform key, a
// project reads, cancels, chains onto and deletes only the responses it
// created, from the moment the POST answers; another project's id is 404,
// worded as for an id that never existed, and never reaches the provider.
func TestStoredResponsesBelongToTheirProject(t *testing.T) {
	e := newEnv(t, envOptions{})
	tokA := e.token("ws-a", "proj-a", "alice", "")
	tokB := e.token("ws-b", "proj-b", "bob", "")
	id := createResponse(t, e, tokA)

	const ghost = "resp_neverexisted0000000000000000"
	ghostCalls := storedCalls(ghost)
	for i, c := range storedCalls(id) {
		foreign := refusedAsMissing(t, e, tokB, c)
		missing := refusedAsMissing(t, e, tokB, ghostCalls[i])
		if strings.ReplaceAll(missing, ghost, id) != foreign {
			t.Errorf("%s %s: message %q for a foreign id differs from %q for a missing one", c.method, c.path, foreign, missing)
		}
	}
	// A user of the same project in another workspace shares its responses.
	tokA2 := e.token("ws-a2", "proj-a", "ann", "")
	for i, tok := range []string{tokA, tokA2} {
		for _, c := range storedCalls(id) {
			if c.method == "DELETE" && i == 0 {
				continue
			}
			up := forwarded(t, e, tok, c)
			if up.Key != canaryOpenAI {
				t.Errorf("%s %s: provider saw another key", c.method, c.path)
			}
		}
	}
}

// TestStoredResponseOwnerFromTheLedger: after a restart the in-memory index
// is empty, and the owner comes from the usage records.
func TestStoredResponseOwnerFromTheLedger(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "usage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	usage, err := ledger.OpenStore(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour)
	if _, err := usage.InsertBatch(ctx, []*metering.Record{{
		RequestID: "req_earlier", Start: start, Workspace: "ws-a", Project: "proj-a", User: "alice",
		Dialect: "openai-responses", Operation: "chat", Path: "/v1/responses", Provider: "openai",
		CredTier: resolver.TierPlatform, CredentialID: "cred", UpstreamID: upstreamtest.ResponseID,
		Status: 200, Outcome: metering.OutcomeOK, Source: metering.SourceMissing,
	}}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{owners: usage})
	get := storedCall{"GET", "/openai/v1/responses/" + upstreamtest.ResponseID, ""}
	refusedAsMissing(t, e, e.token("ws-b", "proj-b", "bob", ""), get)
	forwarded(t, e, e.token("ws-a", "proj-a", "alice", ""), get)
}

// TestOwnKeyReachesStoredResponsesUnchecked: on a project's own key the
// provider's account boundary is the project's, so tollgate forwards any
// id and lets the provider answer.
func TestOwnKeyReachesStoredResponsesUnchecked(t *testing.T) {
	const projectKey = "sk-proj-PROJECTbetaKEY0123456789abcdef"
	e := newEnv(t, envOptions{fake: upstreamtest.Config{Keys: append([]string{projectKey}, canaries...)}})
	ctx := context.Background()
	cr, err := e.svc.CreateCredential(ctx, resolver.CredentialSpec{Name: "beta", Provider: "openai", Secret: resolver.NewSecret(projectKey)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Bind(ctx, resolver.BindingKey{Tier: resolver.TierProject, ScopeID: "proj-b", Dialect: "openai-responses"}, cr.ID); err != nil {
		t.Fatal(err)
	}
	createResponse(t, e, e.token("ws-a", "proj-a", "alice", ""))
	up := forwarded(t, e, e.token("ws-b", "proj-b", "bob", ""), storedCall{"GET", "/openai/v1/responses/" + upstreamtest.ResponseID, ""})
	if up.Key != projectKey {
		t.Errorf("provider saw a key other than the project's own")
	}
}

// TestStreamedResponseIsItsProjectsAtOnce: a streamed response is readable
// by its project as soon as the client has read the stream.
func TestStreamedResponseIsItsProjectsAtOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	tokA := e.token("ws-a", "proj-a", "alice", "")
	for range 20 {
		resp := e.do("POST", "/openai/v1/responses", tokA, `{"model":"gpt-5","input":"hi","stream":true}`)
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte("response.completed")) {
			t.Fatalf("stream: status %d: %s", resp.StatusCode, body)
		}
		forwarded(t, e, tokA, storedCall{"GET", "/openai/v1/responses/" + upstreamtest.ResponseID, ""})
	}
}

// failingOwners is a usage store that does not answer.
type failingOwners struct{}

func (failingOwners) Owners(context.Context, ledger.ObjectRef) ([]string, error) {
	return nil, errors.New("database is locked")
}

// TestStoredResponseOwnerUnknownFailsClosed: when the usage store cannot
// say who owns an id, the request is refused as tollgate's own outage and
// never forwarded on the shared key.
func TestStoredResponseOwnerUnknownFailsClosed(t *testing.T) {
	e := newEnv(t, envOptions{owners: failingOwners{}})
	before := e.fake.Counters().Requests
	resp := e.do("GET", "/openai/v1/responses/resp_somebodyelses", e.token("ws-b", "proj-b", "bob", ""), "")
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"type":"server_error"`) || strings.Contains(string(body), "locked") {
		t.Errorf("status %d body %s, want 503 in the OpenAI envelope without the cause", resp.StatusCode, body)
	}
	if e.fake.Counters().Requests != before {
		t.Errorf("the request reached the provider")
	}
}

// TestStreamedResponseCancellableMidStream: a background stream's id is
// its project's from its first event, so the project can cancel it while
// it runs, and another project cannot.
func TestStreamedResponseCancellableMidStream(t *testing.T) {
	e := newEnv(t, envOptions{})
	tokA := e.token("ws-a", "proj-a", "alice", "")
	resp := e.do("POST", "/openai/v1/responses", tokA, `{"model":"gpt-5","input":"hi","stream":true,"background":true}`,
		upstreamtest.HeaderGap, "300ms", upstreamtest.HeaderEvents, "10")
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before response.created: %v", err)
		}
		if strings.Contains(line, `"response.created"`) {
			break
		}
	}
	cancel := storedCall{"POST", "/openai/v1/responses/" + upstreamtest.ResponseID + "/cancel", ""}
	refusedAsMissing(t, e, e.token("ws-b", "proj-b", "bob", ""), cancel)
	forwarded(t, e, tokA, cancel)
}

// TestOpenAIGoSeesForeignResponsesAsMissing: through the official SDK,
// every stored-response method on another project's id fails as the
// provider's own 404 would, and the owner's own calls succeed.
func TestOpenAIGoSeesForeignResponsesAsMissing(t *testing.T) {
	e := newEnv(t, envOptions{})
	id := createResponse(t, e, e.token("ws-a", "proj-a", "alice", ""))
	client := func(tok string) oai.Client {
		return oai.NewClient(oaiopt.WithBaseURL(e.URL+"/openai/v1/"), oaiopt.WithAPIKey(tok), oaiopt.WithMaxRetries(0))
	}
	calls := map[string]func(ctx context.Context, c oai.Client) error{
		"Get": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.Get(ctx, id, responses.ResponseGetParams{})
			return err
		},
		"InputItems.List": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.InputItems.List(ctx, id, responses.InputItemListParams{})
			return err
		},
		"Cancel": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.Cancel(ctx, id)
			return err
		},
		"Compact": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.Compact(ctx, responses.ResponseCompactParams{Model: "gpt-5", PreviousResponseID: oai.String(id)})
			return err
		},
		"InputTokens.Count": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.InputTokens.Count(ctx, responses.InputTokenCountParams{Model: oai.String("gpt-5"), PreviousResponseID: oai.String(id)})
			return err
		},
		"New": func(ctx context.Context, c oai.Client) error {
			_, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: "gpt-5", PreviousResponseID: oai.String(id),
				Input: responses.ResponseNewParamsInputUnion{OfString: oai.String("more")}})
			return err
		},
		"Delete": func(ctx context.Context, c oai.Client) error { return c.Responses.Delete(ctx, id) },
	}
	ctx := context.Background()
	other, owner := client(e.token("ws-b", "proj-b", "bob", "")), client(e.token("ws-a", "proj-a", "alice", ""))
	for _, name := range []string{"Get", "InputItems.List", "Cancel", "Compact", "InputTokens.Count", "New", "Delete"} {
		before := e.fake.Counters().Requests
		err := calls[name](ctx, other)
		var apiErr *oai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "not_found" || apiErr.Type != "invalid_request_error" || !strings.Contains(apiErr.Message, id) {
			t.Errorf("%s by another project: %v, want the SDK's 404 not_found naming the id", name, err)
		}
		if e.fake.Counters().Requests != before {
			t.Errorf("%s by another project reached the provider", name)
		}
		if err := calls[name](ctx, owner); err != nil {
			t.Errorf("%s by the owner: %v", name, err)
		}
	}
}
