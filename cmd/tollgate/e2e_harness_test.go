//go:build e2e

// TestHarness runs the real agent CLIs (Claude Code, Codex, OpenCode and
// Gemini CLI), installed from npm at pinned versions, once each through a
// real tollgate to the fake provider, each configured only from `tollgate
// env`. Run it with `make e2e-harness`. It needs Node 20+ and npm, and the
// npm registry for a cold install (about 1 GB, kept under
// $XDG_CACHE_HOME/tollgate-e2e, or $TOLLGATE_E2E_CACHE, and reused); the
// CLIs themselves run offline against 127.0.0.1.
package main_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tollgate/tollgate/internal/store"
	"github.com/tollgate/tollgate/internal/testkit"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// The CLIs, pinned: harness-clients.md describes exactly these versions.
var (
	pkgClaudeCode = npmPackage{Name: "@anthropic-ai/claude-code", Version: "2.1.330", Bin: "claude"}
	pkgCodex      = npmPackage{Name: "@openai/codex", Version: "0.169.0", Bin: "codex"}
	pkgOpenCode   = npmPackage{Name: "opencode-ai", Version: "1.18.33", Bin: "opencode"}
	// pkgOpenCodePlugin seeds OpenCode's config dir: without it OpenCode runs
	// a background `npm install @opencode-ai/plugin` of its own version into
	// the dir on every start (harness-clients.md §5).
	pkgOpenCodePlugin = npmPackage{Name: "@opencode-ai/plugin", Version: "1.18.33", IgnoreScripts: true}
	pkgGeminiCLI      = npmPackage{Name: "@google/gemini-cli", Version: "0.61.0", Bin: "gemini", IgnoreScripts: true}
)

const (
	// prompt is what every CLI is asked, once.
	prompt = "say hi"
	// pangram is the text the fake provider streams
	// (proxy/upstreamtest/render.go); every CLI must print it.
	pangram = "The quick brown fox jumps over the lazy dog."
	// cliTimeout bounds one CLI run; a healthy one takes seconds.
	cliTimeout = 3 * time.Minute
	// cmdTimeout bounds one tollgate subcommand (token, env, usage…).
	cmdTimeout = time.Minute
	// recordWait bounds the wait for usage records after a CLI exits: they
	// are written asynchronously through the spool.
	recordWait = 15 * time.Second
)

// fakeUsage is what the fake provider reports for every generation. The
// records tollgate writes must equal it mapped into each dialect.
var fakeUsage = upstreamtest.DefaultUsage

// harnessCase is one CLI run.
type harnessCase struct {
	// name is the harnesses.yaml entry, and the subtest's name.
	name string
	pkg  npmPackage
	// model is passed to `tollgate env --model`; empty keeps the CLI's own
	// default.
	model string
	// args run the CLI once, non-interactively, with the prompt.
	args []string
	// env holds switches that keep the run offline or non-interactive,
	// never anything about reaching tollgate: that comes from `tollgate env`
	// alone.
	env []string
	// sessionID says the CLI sends a session id tollgate must record
	// (harness-clients.md §7.8; Gemini CLI sends none).
	sessionID bool
	// prepare, if set, seeds the isolated home after the config is written.
	prepare func(tb testing.TB, h *harnessHome, prefixes map[string]string)
}

var harnessCases = []harnessCase{
	{
		name:      "claude-code",
		pkg:       pkgClaudeCode,
		args:      []string{"-p", prompt},
		sessionID: true,
	},
	{
		// No model: the CLI default (gpt-6.1-sol) speaks Responses-Lite, what
		// a user who runs `tollgate env` without --model gets.
		name: "codex",
		pkg:  pkgCodex,
		// Without these two, Codex contacts github.com, api.github.com,
		// chatgpt.com and ab.chatgpt.com (harness-clients.md §4).
		args: []string{"exec", "--skip-git-repo-check",
			"-c", "analytics.enabled=false", "-c", "features.plugins=false", prompt},
		sessionID: true,
	},
	{
		name: "opencode",
		pkg:  pkgOpenCode,
		// The opencode template names the model it declares; without one
		// OpenCode has no model to run.
		model:     "gpt-5.5",
		args:      []string{"run", prompt},
		sessionID: true,
		prepare:   seedOpenCodePlugin,
	},
	{
		name: "gemini-cli",
		pkg:  pkgGeminiCLI,
		// Pinned: the default "auto" first asks a router model for JSON, and
		// the fake's pangram is not JSON, so the CLI backs off for a minute.
		model: "gemini-2.5-flash",
		args:  []string{"-p", prompt},
		// Without it, -p in an untrusted folder exits 55 before any request.
		env: []string{"GEMINI_CLI_TRUST_WORKSPACE=true"},
	},
}

// cutProject's credentials lead to the provider that cuts every answer.
const cutProject = "e2e-cut"

// cutCase is how one CLI meets a provider that cuts every answer, and
// what it must then do (measured with the pinned versions).
type cutCase struct {
	// env and args set a small retry budget, so the run ends in seconds.
	env, args []string
	// givesUp: the CLI exits non-zero by itself; otherwise it retries
	// without end and is killed after timeout.
	givesUp bool
	timeout time.Duration
	// maxRequests bounds what it sends meanwhile: no hot loop.
	maxRequests int64
	// says: the CLI prints tollgate's reason for the failure.
	says bool
}

var cutCases = map[string]cutCase{
	// One stream, then its non-streaming fallback, both cut; the 502 of the
	// last names the cause.
	"claude-code": {env: []string{"CLAUDE_CODE_MAX_RETRIES=2"}, givesUp: true, timeout: time.Minute, maxRequests: 3, says: true},
	// Reads the message of tollgate's response.failed event.
	"codex": {args: []string{"-c", "model_providers.tollgate.stream_max_retries=2",
		"-c", "model_providers.tollgate.request_max_retries=2"}, givesUp: true, timeout: time.Minute, maxRequests: 3, says: true},
	// Retries a server_error without end, backing off: 6 or 7 requests in
	// 45 s, with or without the error chunk (harness-clients.md §5 saw a
	// request every 50-70 ms from a fake that cut streams directly).
	"opencode": {timeout: 20 * time.Second, maxRequests: 8},
	// A broken connection makes it fail at once (cut_after_stream_error in
	// harnesses.yaml); after a clean end it retried three times and exited 0.
	"gemini-cli": {givesUp: true, timeout: time.Minute, maxRequests: 1},
}

func TestHarness(t *testing.T) {
	start := time.Now()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not on PATH: the harness end-to-end test installs the agent CLIs with npm (Node 20+ and npm 10+)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on PATH: Codex and Gemini CLI are Node scripts (Node 20+)")
	}

	root := cacheRoot(t)
	pkgs := []npmPackage{pkgOpenCodePlugin}
	for _, hc := range harnessCases {
		pkgs = append(pkgs, hc.pkg)
	}
	t.Logf("npm: packages under %s", root)
	prefixes := mustInstallNPM(t, npm, root, pkgs)
	installed := time.Now()

	s := startStack(t)
	t.Logf("tollgate on %s, fake provider on %s", s.url, s.fakeURL)

	for _, hc := range harnessCases {
		t.Run(hc.name, func(t *testing.T) {
			s.runHarness(t, hc, prefixes, filepath.Dir(node))
		})
	}
	for _, hc := range harnessCases {
		t.Run("cut/"+hc.name, func(t *testing.T) {
			s.runCut(t, hc, prefixes, filepath.Dir(node))
		})
	}
	s.checkNoSecretsLogged(t)
	t.Logf("timing: npm %v, harnesses %v, total %v",
		installed.Sub(start).Round(time.Second), time.Since(installed).Round(time.Second), time.Since(start).Round(time.Second))
}

// cacheRoot is where the CLIs are installed: outside the repository, and
// kept across runs.
func cacheRoot(tb testing.TB) string {
	if d := os.Getenv("TOLLGATE_E2E_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME, else ~/.cache
	if err != nil {
		tb.Fatalf("no cache directory for the npm installs (set TOLLGATE_E2E_CACHE): %v", err)
	}
	return filepath.Join(d, "tollgate-e2e")
}

// stack is the fake provider plus tollgate serving in front of it.
type stack struct {
	bin     string   // the tollgate binary
	env     []string // environment of every tollgate process
	url     string   // tollgate's URL
	fakeURL string
	// cutURL is a second fake provider that cuts every answer after three
	// events (-fault cut=3); project cutProject's credentials point at it.
	cutURL   string
	canaries map[string]string // provider name → its platform key
	credIDs  map[string]string // provider name → its platform credential id
	serve    *daemon
	db       *store.DB
	cmdLog   *testkit.LogBuffer // stderr of every tollgate subcommand
	tokens   []string           // workspace tokens issued, which must never be logged
}

func startStack(t *testing.T) *stack {
	t.Helper()
	dir := t.TempDir()
	bins := filepath.Join(dir, "bin")
	mustBuild(t, bins)

	// Canary keys: the fake accepts these and nothing else, so a request
	// that carried anything else (the workspace token above all) fails, and
	// none of them may ever show up in tollgate's log.
	suffix := randHex(t, 8)
	s := &stack{
		bin: filepath.Join(bins, "tollgate"),
		canaries: map[string]string{
			"anthropic": "sk-ant-e2e-CANARY-" + suffix,
			"openai":    "sk-proj-e2e-CANARY-" + suffix,
			"gemini":    "AIzaSyE2E-CANARY-" + suffix,
		},
		credIDs: map[string]string{},
		cmdLog:  new(testkit.LogBuffer),
	}
	keys := make([]string, 0, len(s.canaries))
	for _, k := range s.canaries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	u := fakeUsage
	fake := mustStartDaemon(t, "fakeprovider", filepath.Join(bins, "fakeprovider"), []string{
		"-addr", "127.0.0.1:0", "-keys", strings.Join(keys, ","),
		"-input", itoa(u.InputUncached), "-cache-read", itoa(u.CacheRead),
		"-cache-write-5m", itoa(u.CacheWrite5m), "-cache-write-1h", itoa(u.CacheWrite1h),
		"-output", itoa(u.Output), "-reasoning", itoa(u.Reasoning),
	}, []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir})
	s.fakeURL = fake.mustListenURL(t)
	cut := mustStartDaemon(t, "fakeprovider -fault cut=3", filepath.Join(bins, "fakeprovider"), []string{
		"-addr", "127.0.0.1:0", "-keys", strings.Join(keys, ","), "-fault", "cut=3",
	}, []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir})
	s.cutURL = cut.mustListenURL(t)

	reg := filepath.Join(dir, "harnesses.yaml")
	mustWriteRegistry(t, reg, s.fakeURL)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "master.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(dir, "tollgate.db")
	// Only these variables: a developer's own TOLLGATE_* must not leak in.
	s.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"TMPDIR=" + dir,
		"TOLLGATE_DB=" + dbPath,
		"TOLLGATE_HARNESSES=" + reg,
		"TOLLGATE_MASTER_KEY_FILE=" + keyFile,
		"TOLLGATE_SPOOL=" + filepath.Join(dir, "spool"),
		// Debug logging gives a leaked secret the most chances to show.
		"TOLLGATE_LOG_LEVEL=debug",
		"TOLLGATE_SHUTDOWN_GRACE=5s",
		// The cut provider's credentials name it by an http:// base URL
		// on loopback.
		"TOLLGATE_ALLOW_HTTP_BASE_URL=true",
		"TOLLGATE_ALLOW_PRIVATE_BASE_URL=true",
	}
	s.tollgate(t, "", "check-config", reg)
	s.serve = mustStartDaemon(t, "tollgate serve", s.bin, []string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, s.env)
	s.url = s.serve.mustListenURL(t)

	credRE := regexp.MustCompile(`platform credential (\S+) set for (\S+)`)
	for _, provider := range []string{"anthropic", "openai", "gemini"} {
		out := s.tollgate(t, s.canaries[provider], "credential", "set", "--platform", "--provider", provider, "--key-stdin")
		m := credRE.FindStringSubmatch(out)
		if m == nil || m[2] != provider {
			t.Fatalf("credential set --provider %s printed %q", provider, out)
		}
		s.credIDs[provider] = m[1]
	}
	// Project cutProject overrides every dialect with a credential for the
	// cut provider: the resolver's project tier, as an admin would set it.
	for provider, dialects := range map[string][]string{
		"anthropic": {"anthropic-messages"},
		"openai":    {"openai-chat", "openai-responses"},
		"gemini":    {"gemini"},
	} {
		id := strings.TrimSpace(s.tollgate(t, s.canaries[provider], "credential", "add", "--provider", provider,
			"--name", "cut-"+provider, "--base-url", s.cutURL, "--key-stdin"))
		for _, d := range dialects {
			s.tollgate(t, "", "credential", "bind", "--credential", id, "--dialect", d, "--project", cutProject)
		}
	}

	db, err := store.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatalf("open tollgate's database: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	s.db = db
	return s
}

// mustBuild builds tollgate and the fake provider into dir.
func mustBuild(tb testing.TB, dir string) {
	tb.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("go is not on PATH: %v", err)
	}
	cmd := exec.Command(goTool, "build", "-o", dir+string(filepath.Separator),
		"github.com/tollgate/tollgate/cmd/tollgate", "github.com/tollgate/tollgate/cmd/fakeprovider")
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, b)
	}
}

// mustWriteRegistry copies the repository's harnesses.yaml to path with the
// anthropic, openai and gemini providers pointed at the fake provider.
func mustWriteRegistry(tb testing.TB, path, fakeURL string) {
	tb.Helper()
	src, err := filepath.Abs(filepath.Join("..", "..", "harnesses.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatalf("read the registry: %v", err)
	}
	re := regexp.MustCompile(`(?m)^(\s+base_url:\s*)https://(?:api\.anthropic\.com|api\.openai\.com|generativelanguage\.googleapis\.com)\s*$`)
	if n := len(re.FindAll(b, -1)); n != 3 {
		tb.Fatalf("%s: found %d of the 3 provider base_url lines to point at the fake", src, n)
	}
	out := re.ReplaceAll(b, []byte("${1}"+fakeURL))
	if err := os.WriteFile(path, out, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// tollgate runs one tollgate subcommand against the stack's database and
// returns its stdout; stdin, if not empty, is its standard input.
func (s *stack) tollgate(tb testing.TB, stdin string, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	s.cmdLog.Write([]byte(stderr.String()))
	if err != nil {
		tb.Fatalf("tollgate %s: %v\n%s%s", args[0], err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// harnessHome is one CLI's isolated world: HOME, the XDG directories,
// CODEX_HOME and TMPDIR all inside one temporary directory.
type harnessHome struct {
	home, work string
	env        []string
}

func newHarnessHome(tb testing.TB, nodeDir, sinkholeURL string) *harnessHome {
	tb.Helper()
	home := tb.TempDir()
	h := &harnessHome{home: home, work: filepath.Join(home, "work")}
	dirs := map[string]string{
		"TMPDIR":          filepath.Join(home, "tmp"),
		"XDG_CONFIG_HOME": filepath.Join(home, ".config"),
		"XDG_DATA_HOME":   filepath.Join(home, ".local", "share"),
		"XDG_STATE_HOME":  filepath.Join(home, ".local", "state"),
		"XDG_CACHE_HOME":  filepath.Join(home, ".cache"),
		"CODEX_HOME":      filepath.Join(home, ".codex"),
	}
	for _, d := range append([]string{h.work}, mapValues(dirs)...) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	// A fresh environment, not the developer's: no real provider key,
	// proxy or CLI setting of theirs can leak into the run.
	h.env = []string{
		"PATH=" + nodeDir + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=" + home,
		"LANG=C.UTF-8",
		// Every outside HTTPS connection goes to the sinkhole and is
		// reported; loopback (tollgate, on plain http) is direct.
		"HTTPS_PROXY=" + sinkholeURL,
		"https_proxy=" + sinkholeURL,
		"NO_PROXY=127.0.0.1,localhost,::1",
		"no_proxy=127.0.0.1,localhost,::1",
	}
	for k, v := range dirs {
		h.env = append(h.env, k+"="+v)
	}
	return h
}

// path resolves a config file named by `tollgate env`: "~/" is the
// harness's HOME, a relative name its working directory.
func (h *harnessHome) path(name string) string {
	if rest, ok := strings.CutPrefix(name, "~/"); ok {
		return filepath.Join(h.home, rest)
	}
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(h.work, name)
}

// envSetup is `tollgate env --format json`.
type envSetup struct {
	Harness string `json:"harness"`
	Dialect string `json:"dialect"`
	BaseURL string `json:"base_url"`
	Env     []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	ConfigFile string `json:"config_file"`
	Config     string `json:"config"`
}

// harnessRun is one CLI, configured for one project from `tollgate env`
// alone, in its own isolated home.
type harnessRun struct {
	setup envSetup
	home  *harnessHome
	env   []string
	sink  *sinkhole
	bin   string
}

func (s *stack) prepareHarness(t *testing.T, hc harnessCase, workspace, project string, prefixes map[string]string, nodeDir string) harnessRun {
	tok := strings.TrimSpace(s.tollgate(t, "", "token", "issue",
		"--workspace", workspace, "--project", project, "--user", "e2e-user", "--harness", hc.name))
	if tok == "" {
		t.Fatal("token issue printed no token")
	}
	s.tokens = append(s.tokens, tok)

	envArgs := []string{"env", "--harness", hc.name, "--token", tok, "--url", s.url, "--format", "json"}
	if hc.model != "" {
		envArgs = append(envArgs, "--model", hc.model)
	}
	var setup envSetup
	if err := json.Unmarshal([]byte(s.tollgate(t, "", envArgs...)), &setup); err != nil {
		t.Fatalf("tollgate env --format json: %v", err)
	}
	if setup.Harness != hc.name || setup.Dialect == "" {
		t.Fatalf("tollgate env: harness %q dialect %q", setup.Harness, setup.Dialect)
	}

	sink := mustStartSinkhole(t)
	h := newHarnessHome(t, nodeDir, sink.URL())
	env := append([]string(nil), h.env...)
	for _, e := range setup.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	env = append(env, hc.env...)
	if setup.Config != "" {
		p := h.path(setup.ConfigFile)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(setup.Config), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Logf("config %s → %s", setup.ConfigFile, p)
	}
	if hc.prepare != nil {
		hc.prepare(t, h, prefixes)
	}
	bin := filepath.Join(prefixes[hc.pkg.Name], "node_modules", ".bin", hc.pkg.Bin)
	return harnessRun{setup: setup, home: h, env: env, sink: sink, bin: bin}
}

func (s *stack) runHarness(t *testing.T, hc harnessCase, prefixes map[string]string, nodeDir string) {
	workspace := "e2e-" + hc.name
	run := s.prepareHarness(t, hc, workspace, "e2e", prefixes, nodeDir)
	setup, h, env, sink, bin := run.setup, run.home, run.env, run.sink, run.bin

	before := s.fakeCounters(t, s.fakeURL)
	res := runCLI(h.work, env, cliTimeout, bin, hc.args...)
	t.Logf("%s %s: %v in %v", hc.pkg.Bin, strings.Join(hc.args, " "), errOr(res.err, "exit 0"), res.elapsed.Round(100*time.Millisecond))
	out := "stdout:\n" + tail(res.stdout, 3000) + "\nstderr:\n" + tail(res.stderr, 3000)
	if res.err != nil {
		t.Fatalf("%s failed: %v\n%s", hc.pkg.Bin, res.err, out)
	}
	if !strings.Contains(res.stdout, pangram) {
		t.Errorf("%s's output lacks the fake provider's text %q\n%s", hc.pkg.Bin, pangram, out)
	}
	for provider, k := range s.canaries {
		if strings.Contains(res.stdout+res.stderr, k) {
			t.Errorf("the %s canary key reached %s's output", provider, hc.pkg.Bin)
		}
	}
	if hits := sink.Hits(); len(hits) > 0 {
		t.Errorf("%s tried to reach the outside world (refused by the sinkhole proxy): %q", hc.pkg.Bin, hits)
	}

	after := s.fakeCounters(t, s.fakeURL)
	upstream := after.Requests - before.Requests
	if upstream < 1 {
		t.Fatalf("the fake provider got no request from %s through tollgate", hc.pkg.Bin)
	}
	// The fake accepts only the canary keys: a request carrying the
	// workspace token, or no key, would be a 401 and no completed stream.
	if done := after.StreamsCompleted - before.StreamsCompleted; done != upstream {
		t.Errorf("the fake provider completed %d streams of %d requests from %s", done, upstream, hc.pkg.Bin)
	}
	s.checkRecords(t, hc, setup, workspace, upstream)
	s.checkUsageReport(t, workspace, setup.Dialect, upstream)
	s.checkNoSecretsLogged(t)
}

// runCut runs a CLI against a provider that cuts every answer after three
// events. tollgate ends each such stream with the dialect's error event
// (harness-clients.md §7.3). The CLI must fail, or keep retrying calmly,
// as its cutCase says; every request is recorded as truncated, through the
// project tier that leads to the cutting provider.
func (s *stack) runCut(t *testing.T, hc harnessCase, prefixes map[string]string, nodeDir string) {
	workspace := "e2e-cut-" + hc.name
	run := s.prepareHarness(t, hc, workspace, cutProject, prefixes, nodeDir)
	cc, ok := cutCases[hc.name]
	if !ok {
		t.Fatalf("no cut case for %s", hc.name)
	}
	env := append(run.env, cc.env...)
	args := append(append(slices.Clone(hc.args[:len(hc.args)-1]), cc.args...), hc.args[len(hc.args)-1])

	before := s.fakeCounters(t, s.cutURL)
	res := runCLI(run.home.work, env, cc.timeout, run.bin, args...)
	after := s.fakeCounters(t, s.cutURL)
	n := after.Requests - before.Requests
	out := res.stdout + res.stderr
	t.Logf("%s against a cutting provider: %v in %v, %d requests", hc.pkg.Bin, errOr(res.err, "exit 0"), res.elapsed.Round(100*time.Millisecond), n)
	show := "output:\n" + tail(out, 2000)
	switch {
	case n < 1:
		t.Fatalf("the cutting provider got no request from %s", hc.pkg.Bin)
	case n > cc.maxRequests:
		t.Errorf("%s sent %d requests, want at most %d\n%s", hc.pkg.Bin, n, cc.maxRequests, show)
	}
	timedOut := res.elapsed >= cc.timeout
	switch {
	case cc.givesUp && (res.err == nil || timedOut):
		t.Errorf("%s did not fail by itself on cut answers: %v\n%s", hc.pkg.Bin, errOr(res.err, "exit 0"), show)
	case !cc.givesUp && !timedOut:
		t.Logf("%s now gives up by itself (%v): tighten its cut case", hc.pkg.Bin, errOr(res.err, "exit 0"))
	}
	if cc.says && !strings.Contains(out, "broke off before its end") {
		t.Errorf("%s did not print tollgate's reason\n%s", hc.pkg.Bin, show)
	}
	var recs []usageRecord
	testkit.Poll(recordWait, 100*time.Millisecond, func() bool {
		recs = s.records(t, workspace)
		return int64(len(recs)) >= n
	})
	if int64(len(recs)) != n {
		t.Fatalf("tollgate recorded %d requests for workspace %s, the cutting provider got %d", len(recs), workspace, n)
	}
	for _, r := range recs {
		// A CLI killed at the timeout may leave its last request behind.
		killed := !cc.givesUp && r.outcome == "client_gone"
		if (r.outcome != "truncated" && !killed) || r.tier != "project" {
			t.Errorf("record %s %s via the %s tier: outcome %s, want truncated via the project tier", r.path, r.dialect, r.tier, r.outcome)
		}
	}
}

// seedOpenCodePlugin puts package.json, package-lock.json and node_modules
// of @opencode-ai/plugin (OpenCode's own version) in OpenCode's config dir.
// OpenCode skips its background npm install only when node_modules exists
// and the lock file lists every package.json dependency.
func seedOpenCodePlugin(tb testing.TB, h *harnessHome, prefixes map[string]string) {
	src := prefixes[pkgOpenCodePlugin.Name]
	dst := filepath.Join(h.home, ".config", "opencode")
	for _, name := range []string{"package.json", "package-lock.json", "node_modules"} {
		mustCopyTree(tb, filepath.Join(src, name), filepath.Join(dst, name))
	}
}

// counters is the fake provider's GET /_fake/counters.
type counters struct {
	Requests         int64 `json:"requests"`
	StreamsCompleted int64 `json:"streams_completed"`
}

func (s *stack) fakeCounters(tb testing.TB, fakeURL string) counters {
	tb.Helper()
	resp, err := http.Get(fakeURL + upstreamtest.CountersPath)
	if err != nil {
		tb.Fatalf("fake counters: %v", err)
	}
	defer resp.Body.Close()
	var c counters
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		tb.Fatalf("fake counters: %v", err)
	}
	return c
}

// usageRecord is the part of a usage_records row the test checks.
type usageRecord struct {
	path, harness, dialect, provider, tier, credID, session string
	status                                                  int
	outcome, source                                         string
	tokens                                                  [7]sql.NullInt64
}

// tokenColumns are usageRecord.tokens, in order.
var tokenColumns = [7]string{"input_uncached", "cache_read", "cache_write_5m", "cache_write_1h", "input_other", "output_tokens", "reasoning_tokens"}

func (s *stack) records(tb testing.TB, workspace string) []usageRecord {
	tb.Helper()
	rows, err := s.db.Query(`SELECT path, harness, dialect, provider, credential_tier, credential_id, session_id,
		status, outcome, usage_source, `+strings.Join(tokenColumns[:], ", ")+`
		FROM usage_records WHERE workspace = $1 ORDER BY started_at`, workspace)
	if err != nil {
		tb.Fatalf("query usage_records: %v", err)
	}
	defer rows.Close()
	var out []usageRecord
	for rows.Next() {
		var r usageRecord
		dest := []any{&r.path, &r.harness, &r.dialect, &r.provider, &r.tier, &r.credID, &r.session, &r.status, &r.outcome, &r.source}
		for i := range r.tokens {
			dest = append(dest, &r.tokens[i])
		}
		if err := rows.Scan(dest...); err != nil {
			tb.Fatalf("scan usage_records: %v", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("usage_records: %v", err)
	}
	return out
}

// checkRecords waits until tollgate has recorded every request the fake
// provider answered, then checks each: answered by the fake with the
// provider's platform (canary) credential, and metered with exactly the
// fake's usage.
func (s *stack) checkRecords(t *testing.T, hc harnessCase, setup envSetup, workspace string, upstream int64) {
	t.Helper()
	var recs []usageRecord
	testkit.Poll(recordWait, 100*time.Millisecond, func() bool {
		recs = s.records(t, workspace)
		return int64(len(recs)) >= upstream
	})
	if int64(len(recs)) != upstream {
		t.Fatalf("tollgate recorded %d requests for workspace %s within %v, the fake provider answered %d", len(recs), workspace, recordWait, upstream)
	}
	want := fakeUsage.Normalised(upstreamtest.Dialect(setup.Dialect))
	wantTokens := [7]int64{want.InputUncached, want.CacheRead, want.CacheWrite5m, want.CacheWrite1h, 0, want.Output, want.Reasoning}
	for i, r := range recs {
		t.Logf("record %d: %d %s %s %s via %s/%s, session %q, usage %s", i, r.status, r.outcome, r.dialect, r.path, r.tier, r.credID, r.session, fmtTokens(r.tokens))
		if r.status != http.StatusOK || r.outcome != "ok" || r.source != "upstream" {
			t.Errorf("record %d: status %d outcome %q usage_source %q, want 200 ok upstream", i, r.status, r.outcome, r.source)
		}
		if r.harness != hc.name || r.dialect != setup.Dialect {
			t.Errorf("record %d: harness %q dialect %q, want %q %q", i, r.harness, r.dialect, hc.name, setup.Dialect)
		}
		if _, ok := s.canaries[r.provider]; !ok || r.tier != "platform" || r.credID != s.credIDs[r.provider] {
			t.Errorf("record %d: provider %q credential %s/%s, want the platform credential of a canary provider", i, r.provider, r.tier, r.credID)
		}
		if hc.sessionID && r.session == "" {
			t.Errorf("record %d: no session id recorded, though %s sends one", i, hc.pkg.Bin)
		}
		for j, col := range tokenColumns {
			if !r.tokens[j].Valid {
				t.Errorf("record %d: %s is NULL, want %d", i, col, wantTokens[j])
			} else if r.tokens[j].Int64 != wantTokens[j] {
				t.Errorf("record %d: %s = %d, want %d (the fake's usage in %s)", i, col, r.tokens[j].Int64, wantTokens[j], setup.Dialect)
			}
		}
	}
}

// usageRow is one row of `tollgate usage --group-by workspace --format json`.
type usageRow struct {
	Workspace     string `json:"workspace"`
	Requests      int64  `json:"requests"`
	InputUncached int64  `json:"input_uncached"`
	CacheRead     int64  `json:"cache_read"`
	CacheWrite5m  int64  `json:"cache_write_5m"`
	CacheWrite1h  int64  `json:"cache_write_1h"`
	Output        int64  `json:"output"`
	Reasoning     int64  `json:"reasoning"`
	Missing       int64  `json:"missing_usage_requests"`
	Estimated     int64  `json:"estimated_requests"`
}

// checkUsageReport checks the operator's view of the same records.
func (s *stack) checkUsageReport(t *testing.T, workspace, dialect string, n int64) {
	t.Helper()
	var rows []usageRow
	if err := json.Unmarshal([]byte(s.tollgate(t, "", "usage", "--group-by", "workspace", "--format", "json")), &rows); err != nil {
		t.Fatalf("tollgate usage --format json: %v", err)
	}
	i := slices.IndexFunc(rows, func(r usageRow) bool { return r.Workspace == workspace })
	if i < 0 {
		t.Fatalf("tollgate usage has no row for workspace %s: %+v", workspace, rows)
	}
	u := fakeUsage.Normalised(upstreamtest.Dialect(dialect))
	want := usageRow{Workspace: workspace, Requests: n,
		InputUncached: n * u.InputUncached, CacheRead: n * u.CacheRead,
		CacheWrite5m: n * u.CacheWrite5m, CacheWrite1h: n * u.CacheWrite1h,
		Output: n * u.Output, Reasoning: n * u.Reasoning}
	if rows[i] != want {
		t.Errorf("tollgate usage for %s:\n got %+v\nwant %+v", workspace, rows[i], want)
	}
}

// checkNoSecretsLogged fails if a canary key appears in anything tollgate
// printed, or a workspace token in the server's log.
func (s *stack) checkNoSecretsLogged(t *testing.T) {
	t.Helper()
	serveLog := s.serve.stdout.String() + s.serve.stderr.String()
	all := serveLog + s.cmdLog.String()
	for provider, k := range s.canaries {
		if strings.Contains(all, k) {
			t.Errorf("tollgate's output contains the %s canary key", provider)
		}
	}
	for i, tok := range s.tokens {
		if strings.Contains(serveLog, tok) {
			t.Errorf("tollgate's log contains workspace token %d", i)
		}
	}
}

func fmtTokens(ts [7]sql.NullInt64) string {
	var b strings.Builder
	for i, v := range ts {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(strings.TrimSuffix(tokenColumns[i], "_tokens") + "=")
		if v.Valid {
			b.WriteString(itoa(v.Int64))
		} else {
			b.WriteString("NULL")
		}
	}
	return b.String()
}

func randHex(tb testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
