package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

const testMasterKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // base64 of 32 bytes

// cli runs the program in process with the given environment overrides.
type cli struct {
	t   *testing.T
	env map[string]string
}

func (c *cli) run(ctx context.Context, stdin string, args ...string) (string, string, int) {
	c.t.Helper()
	for k, v := range c.env {
		c.t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

func newCLI(t *testing.T, fakeURL string) *cli {
	dir := t.TempDir()
	reg, err := os.ReadFile("../../harnesses.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := string(reg)
	for _, u := range []string{"https://api.anthropic.com", "https://api.openai.com", "https://generativelanguage.googleapis.com"} {
		y = strings.ReplaceAll(y, "base_url: "+u+"\n", "base_url: "+fakeURL+"\n")
	}
	regPath := filepath.Join(dir, "harnesses.yaml")
	if err := os.WriteFile(regPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return &cli{t: t, env: map[string]string{
		"TOLLGATE_DB":          filepath.Join(dir, "tollgate.db"),
		"TOLLGATE_HARNESSES":   regPath,
		"TOLLGATE_MASTER_KEY":  testMasterKey,
		"TOLLGATE_SPOOL":       filepath.Join(dir, "spool"),
		"TOLLGATE_ADMIN_TOKEN": "adm",
		"TOLLGATE_ADDR":        "127.0.0.1:0",
		"TOLLGATE_ADMIN_ADDR":  "127.0.0.1:0",
		"TOLLGATE_LOG_LEVEL":   "info",
	}}
}

// TestServeEndToEnd runs the whole binary in process: platform key, token,
// a streamed request through tollgate to the fake provider, shutdown, and
// the usage report from the database.
func TestServeEndToEnd(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testServeEndToEnd(t, "") })
	t.Run("postgres", func(t *testing.T) {
		pg := os.Getenv("TOLLGATE_TEST_POSTGRES")
		if pg == "" {
			t.Skip("TOLLGATE_TEST_POSTGRES is not set (make test-postgres sets it)")
		}
		testServeEndToEnd(t, testkit.PostgresSchema(t, pg, "tg_cmd_"))
	})
}

func testServeEndToEnd(t *testing.T, dbURL string) {
	const canary = "sk-ant-api03-CANARYcmdTEST0123456789abcdefgh"
	fake, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{Keys: []string{canary}})
	c := newCLI(t, fakeURL)
	if dbURL != "" {
		c.env["TOLLGATE_DB"] = dbURL
		c.env["TOLLGATE_MASTER_KEY"] = testMasterKey
	}
	ctx := context.Background()

	if out, errs, code := c.run(ctx, canary+"\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %d %s %s", code, out, errs)
	}
	tok, errs, code := c.run(ctx, "", "token", "issue", "--workspace", "ws-e2e", "--project", "proj", "--user", "alice", "--harness", "claude-code")
	tok = strings.TrimSpace(tok)
	if code != 0 || !strings.HasPrefix(tok, "tgw_") {
		t.Fatalf("token issue: %d %q %s", code, tok, errs)
	}
	envOut, _, code := c.run(ctx, "", "env", "--harness", "claude-code", "--token", tok, "--url", "http://example.test")
	if code != 0 || !strings.Contains(envOut, "export ANTHROPIC_BASE_URL=http://example.test/anthropic\n") || !strings.Contains(envOut, "export ANTHROPIC_AUTH_TOKEN="+tok) {
		t.Fatalf("env output:\n%s", envOut)
	}

	base, adminBase, logs, stop := serveInProcess(t, c)

	req, _ := http.NewRequest("POST", base+"/anthropic/v1/messages?beta=true", strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "message_stop") {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	if last, _ := fake.Last(); last.Key != canary {
		t.Fatalf("provider saw %q", last.Key)
	}
	// What a workspace can reach, the proxy port, shows neither metrics nor
	// the admin API.
	for _, p := range []string{"/metrics", "/admin/v1/usage"} {
		req, _ := http.NewRequest("GET", base+p, nil)
		req.Header.Set("Authorization", "Bearer adm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 || !strings.Contains(string(b), "TOLLGATE_ADMIN_ADDR") {
			t.Errorf("proxy port GET %s: %d %s, want 404 naming the admin listener", p, resp.StatusCode, b)
		}
	}
	mresp, err := http.Get(adminBase + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), "gen_ai_client_token_usage") {
		t.Errorf("/metrics lacks gen_ai_client_token_usage:\n%.2000s", metrics)
	}

	// The usage API answers from the store once the writer's batch lands.
	var csv string
	testkit.Eventually(t, 10*time.Second, "the usage API to show the request", func() bool {
		req, _ := http.NewRequest("GET", adminBase+"/admin/v1/usage?group_by=project,model&format=csv", nil)
		req.Header.Set("Authorization", "Bearer adm")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		csv = string(b)
		return resp.StatusCode == 200 && strings.Contains(csv, "proj,claude-sonnet-4-5,1,")
	})
	if !strings.HasPrefix(csv, "project,model,requests,") {
		t.Errorf("csv header: %q", csv)
	}
	req, _ = http.NewRequest("GET", adminBase+"/admin/v1/usage?group_by=colour", nil)
	req.Header.Set("Authorization", "Bearer adm")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Errorf("bad group_by: %v %v", err, resp.StatusCode)
	}

	stop()

	out, errs, code := c.run(ctx, "", "usage", "--group-by", "workspace,model", "--format", "json")
	if code != 0 {
		t.Fatalf("usage: %d %s", code, errs)
	}
	var rep struct{ Rows []map[string]any }
	if err := json.Unmarshal([]byte(out), &rep.Rows); err != nil {
		t.Fatalf("usage json: %v\n%s", err, out)
	}
	want := upstreamtest.DefaultUsage.Normalised(upstreamtest.Anthropic)
	// claude-sonnet-4-5 list prices per million tokens: input $3, cache
	// read $0.30, 5-minute write $3.75, 1-hour write $6, output $15:
	// 120×3 + 3000×0.3 + 200×3.75 + 40×6 + 75×15 = 3375 micro-USD.
	if len(rep.Rows) != 1 || rep.Rows[0]["workspace"] != "ws-e2e" || rep.Rows[0]["output"] != float64(want.Output) || rep.Rows[0]["cache_read"] != float64(want.CacheRead) ||
		rep.Rows[0]["cost_micro_usd"] != float64(3375) {
		t.Errorf("usage rows = %v, want one row for ws-e2e with output %d", rep.Rows, want.Output)
	}
	for _, s := range []string{logs.String(), out, string(metrics)} {
		if strings.Contains(s, canary) {
			t.Errorf("the provider key leaked into output")
		}
	}
}

// serveAddrs reads serve's stdout: the proxy's "listening on URL" line,
// then, when there is an admin listener, its "admin API and metrics on URL"
// line; the rest is drained.
func serveAddrs(t *testing.T, stdout io.Reader, logs *bytes.Buffer) (proxyURL, adminURL string) {
	t.Helper()
	r := bufio.NewReader(stdout)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("serve printed nothing: %v %s", err, logs)
	}
	proxyURL = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	if line, err = r.ReadString('\n'); err != nil {
		t.Fatalf("serve printed no admin address: %v %s", err, logs)
	}
	adminURL = strings.TrimSpace(strings.TrimPrefix(line, "admin API and metrics on "))
	go io.Copy(io.Discard, r)
	return proxyURL, adminURL
}

// TestWrongMasterKeyFailsLoudly: credentials written under one key make a
// start with another key fail at once, naming the problem.
func TestWrongMasterKeyFailsLoudly(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, "sk-ant-api03-some-key-000000000\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	c.env["TOLLGATE_MASTER_KEY"] = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=" // another 32 bytes
	_, errs, code := c.run(ctx, "", "serve")
	if code == 0 || !strings.Contains(errs, "master key") {
		t.Fatalf("serve with the wrong master key: code %d, stderr %s", code, errs)
	}
}

func TestCheckConfig(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"check-config", "../../harnesses.yaml"}, nil, &out, &errb); code != 0 {
		t.Fatalf("shipped registry: %d %s", code, errb.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\ndialects: {}\nproviders: {}\n"), 0o600)
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"check-config", bad}, nil, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "dialects: at least one dialect is required") ||
		!strings.Contains(errb.String(), "providers: at least one provider is required") {
		t.Fatalf("bad registry: %d %s", code, errb.String())
	}
}

// TestRotateKeyKeepsCredentialsReadable: after rotate-key, the new key alone
// reads every credential and the old one is refused.
func TestRotateKeyKeepsCredentialsReadable(t *testing.T) {
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	c := newCLI(t, fakeURL)
	ctx := context.Background()
	if _, errs, code := c.run(ctx, "sk-ant-api03-rotate-me-0000000000\n", "credential", "set", "--platform", "--provider", "anthropic", "--key-stdin"); code != 0 {
		t.Fatalf("credential set: %s", errs)
	}
	oldFile := filepath.Join(t.TempDir(), "old.key")
	os.WriteFile(oldFile, []byte(testMasterKey+"\n"), 0o600)
	const newKey = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
	c.env["TOLLGATE_MASTER_KEY"] = newKey
	if out, errs, code := c.run(ctx, "", "credential", "rotate-key", "--from-key-file", oldFile); code != 0 {
		t.Fatalf("rotate-key: %d %s %s", code, out, errs)
	}
	out, errs, code := c.run(ctx, "", "resolve", "--project", "p", "--user", "u", "--format", "json")
	if code != 0 || !strings.Contains(out, `"source": "platform"`) {
		t.Fatalf("resolve with the new key: %d %s %s", code, out, errs)
	}
	c.env["TOLLGATE_MASTER_KEY"] = testMasterKey
	if _, errs, code := c.run(ctx, "", "resolve", "--project", "p", "--user", "u"); code == 0 || !strings.Contains(errs, "master key") {
		t.Fatalf("the old key still opens the store: %d %s", code, errs)
	}
}

func TestVersionFlagPrintsVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version", "-version"} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), []string{arg}, nil, &out, &errb); code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, errb.String())
		}
		if !strings.HasPrefix(out.String(), "tollgate ") || len(strings.TrimSpace(out.String())) <= len("tollgate") {
			t.Errorf("%s: got %q, want \"tollgate <version>\"", arg, out.String())
		}
	}
}
