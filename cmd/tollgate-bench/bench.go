package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// providerKey is the fake provider's only accepted key; clients of the
// proxies never send it.
const (
	providerKey = "sk-bench-provider-key-0123456789"
	baselineKey = "Bearer bench-client-token"
)

// Request bodies: the same bytes go to every target.
const (
	chatBody   = `{"model":"gpt-5","messages":[{"role":"user","content":"Say hello."}]}`
	streamBody = `{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"Say hello."}]}`
	// streamBodyUsage asks for usage itself: tollgate passes the stream
	// through without hiding a chunk.
	streamBodyUsage = `{"model":"gpt-5","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello."}]}`
)

// bench is one run of the benchmark inside the namespaced, pinned child.
type bench struct {
	cfg     *config
	out     io.Writer
	work    string
	bin     string
	pinned  bool
	netns   string
	machine machine

	fake    *proc
	tgDir   string
	targets []target

	chat, stream []byte
	refBody      ref
	refStream    ref

	runs   []*runRec
	totals map[string]*tally // every request per target, warm-ups included
	// fakeVia counts, per tollgate target, the requests the fake saw while
	// only that target was being driven.
	fakeVia      map[string]int64
	idleRSS      map[string]int64    // KiB after warm-up and quiet
	idleSplit    map[string][2]int64 // RssAnon, RssFile at the idle reading
	freshRSS     map[string]int64    // KiB one second after start
	usage        *usageCheck
	gov          *govRun // S1g, when selected
	fo           *foRun  // S1f, when selected
	profiles     []profile
	notes        []string
	loadEnd      string
	uncleanStops int
}

// runRec is one measured point for one target.
type runRec struct {
	Scenario string             `json:"scenario"`
	Point    string             `json:"point"`
	Target   string             `json:"target"`
	Rep      int                `json:"rep"`
	Requests int                `json:"requests"`
	Non2xx   int                `json:"non_2xx"`
	Errors   int                `json:"errors"`
	Mismatch int                `json:"body_mismatches"`
	FirstErr string             `json:"first_error,omitempty"`
	Metrics  map[string]float64 `json:"metrics"`
}

// alias copies a metric under a second name, when it exists.
func (r *runRec) alias(from, to string) {
	if v, ok := r.Metrics[from]; ok {
		r.Metrics[to] = v
	}
}

func runChild(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	b := &bench{
		cfg: cfg, out: stderr,
		work:      os.Getenv("TOLLGATE_BENCH_WORK"),
		bin:       os.Getenv(envBinDir),
		pinned:    os.Getenv("TOLLGATE_BENCH_PIN") == "true",
		netns:     os.Getenv(envNetns),
		totals:    map[string]*tally{},
		fakeVia:   map[string]int64{},
		idleRSS:   map[string]int64{},
		idleSplit: map[string][2]int64{},
		freshRSS:  map[string]int64{},
		chat:      []byte(chatBody),
		stream:    []byte(streamBody),
	}
	if cfg.IncludeUsg {
		b.stream = []byte(streamBodyUsage)
	}
	_ = json.Unmarshal([]byte(os.Getenv(envMachine)), &b.machine)
	if b.work == "" || b.bin == "" {
		return errors.New("child started without its work directory")
	}
	if strings.HasPrefix(b.netns, "private") {
		if out, err := exec.CommandContext(ctx, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return fmt.Errorf("ip link set lo up: %v: %s", err, out)
		}
	}
	defer b.stopAll()
	if err := b.start(ctx); err != nil {
		return err
	}
	if err := b.references(ctx); err != nil {
		return err
	}
	b.logf("isolation: %s; pinning: %s", b.netns, b.pinning())
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"S1", b.s1}, {"S1g", b.s1g}, {"S1f", b.s1f}, {"S2", b.s2}, {"S3", b.s3}, {"S4", b.s4}, {"S5", b.s5},
	}
	for _, s := range steps {
		if !cfg.Scenarios[s.name] {
			continue
		}
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if cfg.Profile {
		if err := b.profileTollgate(ctx); err != nil {
			b.note("profiling failed: %v", err)
		}
	}
	b.loadEnd = loadAvg()
	// SIGTERM: tollgate stops accepting, flushes the spool to SQLite and
	// exits; only then is the usage table complete.
	b.logf("stopping tollgate (SIGTERM) and checking usage records")
	if !b.targets[2].proc.stop(stopBound) {
		b.uncleanStops++
		b.note("tollgate did not exit within %s of SIGTERM and was killed", stopBound)
	}
	uc, err := checkUsage(ctx, filepath.Join(b.tgDir, "tollgate.db"), filepath.Join(b.tgDir, "spool"), b.refBody, b.refStream)
	if err != nil {
		b.note("usage check failed: %v", err)
	}
	b.usage = uc
	if err := b.report(stdout); err != nil {
		return err
	}
	if b.gov != nil && len(b.gov.failures) > 0 {
		return fmt.Errorf("S1g failed: %s", strings.Join(b.gov.failures, "; "))
	}
	if b.fo != nil && len(b.fo.failures) > 0 {
		return fmt.Errorf("S1f failed: %s", strings.Join(b.fo.failures, "; "))
	}
	return nil
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (b *bench) note(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	b.notes = append(b.notes, s)
	b.logf("note: %s", s)
}

func (b *bench) pinning() string {
	nice := fmt.Sprintf("; every benchmark process at nice %d", niceness(os.Getpid()))
	if !b.pinned {
		return fmt.Sprintf("none (GOMAXPROCS %d everywhere)", runtime.NumCPU()) + nice
	}
	return "proxies on CPU 0 (GOMAXPROCS=1); load generator and fake provider on CPU 1 (GOMAXPROCS=1)" + nice
}

func (b *bench) cpus() (proxy, load string, procs int) {
	if !b.pinned {
		return "", "", runtime.NumCPU()
	}
	return "0", "1", 1
}

// start launches the fake provider, the baseline proxy and tollgate.
func (b *bench) start(ctx context.Context) error {
	proxyCPU, loadCPU, procs := b.cpus()
	logs := filepath.Join(b.work, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	var err error
	b.fake, err = startProc(ctx, logs, "fakeprovider", loadCPU, procs, nil, filepath.Join(b.bin, "fakeprovider"),
		"-addr", "127.0.0.1:0", "-keys", providerKey,
		"-events", fmt.Sprint(b.cfg.Events), "-chunk-bytes", fmt.Sprint(b.cfg.ChunkBytes))
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	starts := map[string]int{}
	logName := func(name string) string {
		starts[name]++
		return fmt.Sprintf("%s-%d", name, starts[name])
	}
	baseline := target{name: "baseline", path: "/v1/chat/completions", auth: baselineKey,
		launch: func(ctx context.Context) (*proc, error) {
			return startProc(ctx, logs, logName("baseline"), proxyCPU, procs, nil, self,
				"baseline-proxy", "-upstream", b.fake.URL, "-key", providerKey)
		}}
	var env []string
	var tok string
	b.tgDir, env, tok, err = b.setupTollgate(ctx, "tollgate")
	if err != nil {
		return err
	}
	tollgate := target{name: "tollgate", path: "/openai/v1/chat/completions", auth: "Bearer " + tok,
		launch: func(ctx context.Context) (*proc, error) {
			return startProc(ctx, logs, logName("tollgate"), proxyCPU, procs, env, filepath.Join(b.bin, "tollgate"), "serve")
		}}
	b.targets = []target{
		{name: "direct", url: b.fake.URL + "/v1/chat/completions", auth: "Bearer " + providerKey},
		baseline, tollgate,
	}
	for i := range b.targets {
		b.totals[b.targets[i].name] = &tally{}
		if b.targets[i].launch != nil {
			if err := b.restart(ctx, i); err != nil {
				return err
			}
		}
	}
	time.Sleep(time.Second)
	for _, tg := range b.targets[1:] {
		b.freshRSS[tg.name], _ = memKB(tg.proc.pid)
	}
	return nil
}

// restart stops target i's proxy, if running, and starts a fresh one.
// tollgate keeps its database and spool: SIGTERM flushes them first.
func (b *bench) restart(ctx context.Context, i int) error {
	tg := &b.targets[i]
	if tg.proc != nil && !tg.proc.stop(stopBound) {
		b.uncleanStops++
		b.note("%s did not exit within %s of SIGTERM and was killed", tg.name, stopBound)
	}
	p, err := tg.launch(ctx)
	if err != nil {
		return err
	}
	tg.proc, tg.url = p, p.URL+tg.path
	return nil
}

// setupTollgate gives one tollgate instance its directory under the work
// directory: a registry pointing every provider at the fake, the provider
// key stored as the platform credential, and a token. It returns the
// directory, the environment of `tollgate serve` and the token.
func (b *bench) setupTollgate(ctx context.Context, name string) (string, []string, string, error) {
	dir := filepath.Join(b.work, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, "", err
	}
	y, err := os.ReadFile(filepath.Join(b.bin, "harnesses.yaml"))
	if err != nil {
		return "", nil, "", err
	}
	reg := string(y)
	n := 0
	for _, u := range []string{"https://api.anthropic.com", "https://api.openai.com", "https://generativelanguage.googleapis.com"} {
		old := "base_url: " + u + "\n"
		n += strings.Count(reg, old)
		reg = strings.ReplaceAll(reg, old, "base_url: "+b.fake.URL+"\n    forward_headers: [X-Fake-Gap, X-Fake-TTFB, X-Fake-Events]\n")
	}
	if n == 0 {
		return "", nil, "", errors.New("harnesses.yaml: no provider base_url line to point at the fake")
	}
	regPath := filepath.Join(dir, "harnesses.yaml")
	if err := os.WriteFile(regPath, []byte(reg), 0o600); err != nil {
		return "", nil, "", err
	}
	var mk [32]byte
	_, _ = rand.Read(mk[:])
	env := []string{
		"TOLLGATE_DB=" + filepath.Join(dir, "tollgate.db"),
		"TOLLGATE_HARNESSES=" + regPath,
		"TOLLGATE_SPOOL=" + filepath.Join(dir, "spool"),
		"TOLLGATE_MASTER_KEY=" + base64.StdEncoding.EncodeToString(mk[:]),
		"TOLLGATE_LOG_LEVEL=" + b.cfg.LogLevel,
		"TOLLGATE_SHUTDOWN_GRACE=5s",
		"TOLLGATE_ADDR=127.0.0.1:0",
		// The bench uses neither the admin API nor /metrics; the default
		// fixed admin port would clash with a tollgate already running.
		"TOLLGATE_ADMIN_ADDR=off",
		// Every load client is 127.0.0.1: the per-client connection cap
		// (256) would refuse S4's 5,000 held streams. The bench measures
		// capacity, not the cap; make test-hostile measures the caps.
		"TOLLGATE_MAX_CONNS=-1",
		"TOLLGATE_MAX_CONNS_PER_IP=-1",
		// Nor is it an authentication flood: every request has a valid token.
	}
	if _, err := b.cli(ctx, env, providerKey+"\n", "credential", "set", "--platform", "--provider", "openai", "--key-stdin"); err != nil {
		return "", nil, "", err
	}
	tok, err := b.cli(ctx, env, "", "token", "issue", "--workspace", "bench", "--project", "bench", "--user", "bench", "--ttl", "6h")
	return dir, env, tok, err
}

// cli runs a tollgate command against the instance env describes and
// returns its standard output.
func (b *bench) cli(ctx context.Context, env []string, stdin string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, filepath.Join(b.bin, "tollgate"), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var se strings.Builder
	cmd.Stderr = &se
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("tollgate %s: %v: %s", strings.Join(args, " "), err, firstLine(se.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

func (b *bench) stopAll() {
	for i := len(b.targets) - 1; i >= 0; i-- {
		if p := b.targets[i].proc; p != nil {
			p.stop(5 * time.Second)
		}
	}
	if b.fake != nil {
		b.fake.stop(5 * time.Second)
	}
}

// references takes the direct answers every proxied answer must equal, and
// checks each proxy once before any load.
func (b *bench) references(ctx context.Context) error {
	client := newHTTPClient(4)
	defer client.CloseIdleConnections()
	direct := b.targets[0]
	body, status, err := post(ctx, client, direct, b.chat)
	if err != nil || status != 200 {
		return fmt.Errorf("direct reference: status %d, %v", status, err)
	}
	b.refBody = ref{size: len(body), sum: sha256.Sum256(body)}
	so := oneStream(ctx, client, direct, b.stream, nil, make([]byte, 32<<10), nil)
	if so.status != 200 || so.err != "" {
		return fmt.Errorf("direct stream reference: status %d, %s", so.status, so.err)
	}
	b.refStream = ref{size: int(so.bytes), sum: so.sum}
	b.logf("reference: JSON body %d bytes, stream %d bytes (%d events)", b.refBody.size, b.refStream.size, b.cfg.Events)
	for _, tg := range b.targets[1:] {
		if err := b.answersLikeDirect(ctx, client, tg); err != nil {
			return err
		}
	}
	return nil
}

// answersLikeDirect sends one JSON request and one stream through tg; both
// must equal direct's answers.
func (b *bench) answersLikeDirect(ctx context.Context, client *http.Client, tg target) error {
	t := b.load(tg, func() *tally {
		t := &tally{}
		body, status, err := post(ctx, client, tg, b.chat)
		t.requests++
		if err != nil {
			t.err(err.Error())
		} else {
			t.check(status, body, b.refBody)
		}
		t.addStream(oneStream(ctx, client, tg, b.stream, nil, make([]byte, 32<<10), nil), b.refStream)
		return t
	})
	if t.errors+t.non2xx+t.mismatch > 0 {
		return fmt.Errorf("%s does not answer like the fake: %s", tg.name, t.firstErr)
	}
	return nil
}

func post(ctx context.Context, client *http.Client, tg target, body []byte) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.url, strings.NewReader(string(body)))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", tg.auth)
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return out, resp.StatusCode, err
}

// fakeRequests is the fake provider's request counter.
func (b *bench) fakeRequests() int64 { return fakeCounter(b.fake.URL) }

// load runs fn against tg and adds its requests to the run's totals; for
// a tollgate target it also counts what the fake saw meanwhile.
func (b *bench) load(tg target, fn func() *tally) *tally {
	counted := strings.HasPrefix(tg.name, "tollgate")
	var f0 int64
	if counted {
		f0 = b.fakeRequests()
	}
	t := fn()
	if counted {
		b.fakeVia[tg.name] += b.fakeRequests() - f0
	}
	b.totals[tg.name].add(&tally{requests: t.requests, non2xx: t.non2xx, errors: t.errors, firstErr: t.firstErr, mismatch: t.mismatch, bytes: t.bytes, expBytes: t.expBytes})
	return t
}

// loadCPU is the CPU time of the load side: this process and the fake.
func (b *bench) loadCPU() float64 {
	self, _ := cpuSeconds(os.Getpid())
	fake, _ := cpuSeconds(b.fake.pid)
	return self + fake
}

// measure runs fn as one measured point and records the process and CPU
// figures around it.
func (b *bench) measure(scenario, point string, rep int, tg target, fn func() *tally) (*runRec, *tally) {
	var c0, c1 float64
	if tg.proc != nil {
		c0, _ = cpuSeconds(tg.proc.pid)
	}
	l0 := b.loadCPU()
	s0 := readCPUTimes()
	t := b.load(tg, fn)
	s1 := readCPUTimes()
	l1 := b.loadCPU()
	if tg.proc != nil {
		c1, _ = cpuSeconds(tg.proc.pid)
	}
	r := &runRec{Scenario: scenario, Point: point, Target: tg.name, Rep: rep,
		Requests: t.requests, Non2xx: t.non2xx, Errors: t.errors, Mismatch: t.mismatch, FirstErr: t.firstErr,
		Metrics: map[string]float64{}}
	r.Metrics["cpu0_busy_pct"], r.Metrics["cpu0_steal_pct"] = busyPct(s0, s1, "cpu0")
	r.Metrics["cpu1_busy_pct"], r.Metrics["cpu1_steal_pct"] = busyPct(s0, s1, "cpu1")
	ok := float64(t.requests - t.non2xx - t.errors)
	if tg.proc != nil && ok > 0 {
		r.Metrics["cpu_us_per_req"] = (c1 - c0) * 1e6 / ok
		r.Metrics["proxy_cpu_pct"] = 100 * (c1 - c0) / t.elapsed.Seconds()
	}
	if t.elapsed > 0 {
		r.Metrics["rps"] = ok / t.elapsed.Seconds()
		r.Metrics["load_cpu_pct"] = 100 * (l1 - l0) / t.elapsed.Seconds()
	}
	slices.Sort(t.lat)
	r.Metrics["p50_ms"] = percentile(t.lat, 50)
	r.Metrics["p90_ms"] = percentile(t.lat, 90)
	r.Metrics["p99_ms"] = percentile(t.lat, 99)
	r.Metrics["max_ms"] = percentile(t.lat, 100)
	if t.requests > 0 {
		r.Metrics["bytes_per_resp"] = float64(t.bytes) / max(ok, 1)
	}
	for k, v := range r.Metrics {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			delete(r.Metrics, k)
		}
	}
	b.runs = append(b.runs, r)
	if t.errors+t.non2xx+t.mismatch > 0 {
		b.logf("  %s %s %s rep %d: %d errors, %d non-2xx, %d mismatches; first: %s", scenario, point, tg.name, rep, t.errors, t.non2xx, t.mismatch, t.firstErr)
	}
	return r, t
}

func (b *bench) s1(ctx context.Context) error {
	b.logf("S1: closed loop, %d connections, %s per point, %d reps", b.cfg.S1Conns, b.cfg.Duration, b.cfg.Reps)
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		for _, tg := range b.targets {
			b.load(tg, func() *tally { return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, b.cfg.Warmup, b.refBody) })
			r, _ := b.measure("S1", "", rep, tg, func() *tally {
				return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, b.cfg.Duration, b.refBody)
			})
			b.logf("  S1 %-8s rep %d: %7.0f req/s, p50 %.2f ms, CPU %.1f µs/req, CPU0 %.0f%% CPU1 %.0f%%", tg.name, rep,
				r.Metrics["rps"], r.Metrics["p50_ms"], r.Metrics["cpu_us_per_req"], r.Metrics["cpu0_busy_pct"], r.Metrics["cpu1_busy_pct"])
		}
	}
	return ctx.Err()
}

func (b *bench) openLoopPoint(ctx context.Context, scenario, point string, rate int, hdr http.Header) {
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		for _, tg := range b.targets {
			client := newHTTPClient(4096)
			b.load(tg, func() *tally { return openLoop(ctx, client, tg, b.chat, hdr, rate, b.cfg.Warmup, b.refBody) })
			r, _ := b.measure(scenario, point, rep, tg, func() *tally {
				return openLoop(ctx, client, tg, b.chat, hdr, rate, b.cfg.Duration, b.refBody)
			})
			client.CloseIdleConnections()
			b.logf("  %s %s %-8s rep %d: p50 %.3f ms, p99 %.3f ms, %.0f req/s, CPU %.1f µs/req, CPU1 %.0f%%", scenario, point, tg.name, rep,
				r.Metrics["p50_ms"], r.Metrics["p99_ms"], r.Metrics["rps"], r.Metrics["cpu_us_per_req"], r.Metrics["cpu1_busy_pct"])
		}
	}
}

func (b *bench) s2(ctx context.Context) error {
	for _, rate := range b.cfg.S2Rates {
		b.logf("S2: open loop %d req/s, %s per point", rate, b.cfg.Duration)
		b.openLoopPoint(ctx, "S2", fmt.Sprintf("%d rps", rate), rate, http.Header{})
	}
	return ctx.Err()
}

func (b *bench) s5(ctx context.Context) error {
	b.logf("S5: open loop %d req/s, upstream TTFB %s", b.cfg.S5Rate, b.cfg.S5TTFB)
	b.openLoopPoint(ctx, "S5", fmt.Sprintf("%d rps, TTFB %s", b.cfg.S5Rate, b.cfg.S5TTFB), b.cfg.S5Rate,
		http.Header{"X-Fake-Ttfb": {b.cfg.S5TTFB.String()}})
	return ctx.Err()
}

// s3 runs SSE streams two ways: a closed loop of conc streams for
// throughput, and paced starts at S3Rate per second for the added time to
// first byte.
func (b *bench) s3(ctx context.Context) error {
	conc, total, rate := b.cfg.S3Conc, b.cfg.S3Streams, b.cfg.S3Rate
	b.logf("S3: %d SSE streams of %d events, %d concurrent; then %d stream starts per second for %s", total, b.cfg.Events, conc, rate, b.cfg.Duration)
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		for _, tg := range b.targets {
			client := newHTTPClient(conc)
			b.load(tg, func() *tally {
				return streams(ctx, client, tg, b.stream, nil, max(total/10, 2*conc), conc, b.refStream)
			})
			r, t := b.measure("S3", b.s3Closed(), rep, tg, func() *tally { return streams(ctx, client, tg, b.stream, nil, total, conc, b.refStream) })
			b.logS3(r, t, rep, tg)
			b.load(tg, func() *tally { return pacedStreams(ctx, client, tg, b.stream, rate, b.cfg.Warmup, b.refStream) })
			r, t = b.measure("S3", b.s3Paced(), rep, tg, func() *tally { return pacedStreams(ctx, client, tg, b.stream, rate, b.cfg.Duration, b.refStream) })
			b.logS3(r, t, rep, tg)
			client.CloseIdleConnections()
		}
	}
	return ctx.Err()
}

func (b *bench) s3Closed() string { return fmt.Sprintf("%d concurrent", b.cfg.S3Conc) }
func (b *bench) s3Paced() string  { return fmt.Sprintf("%d streams/s", b.cfg.S3Rate) }

func (b *bench) logS3(r *runRec, t *tally, rep int, tg target) {
	r.alias("rps", "streams_per_s")
	r.alias("p50_ms", "ttfb_p50_ms")
	r.alias("p99_ms", "ttfb_p99_ms")
	slices.Sort(t.total)
	r.Metrics["stream_p50_ms"] = percentile(t.total, 50)
	b.logf("  S3 %-14s %-8s rep %d: %6.0f streams/s, TTFB p50 %.3f ms p99 %.3f ms, %.0f B/stream, CPU %.1f µs/stream, CPU1 %.0f%%", r.Point, tg.name, rep,
		r.Metrics["streams_per_s"], r.Metrics["ttfb_p50_ms"], r.Metrics["ttfb_p99_ms"], r.Metrics["bytes_per_resp"], r.Metrics["cpu_us_per_req"], r.Metrics["cpu1_busy_pct"])
}

// warm sends a little of both request shapes through target i, so pools,
// caches and code paths are warm before an RSS reading.
func (b *bench) warm(ctx context.Context, i int) {
	tg := b.targets[i]
	b.load(tg, func() *tally { return closedLoop(ctx, tg, b.chat, 8, 300*time.Millisecond, b.refBody) })
	client := newHTTPClient(16)
	b.load(tg, func() *tally { return streams(ctx, client, tg, b.stream, nil, 64, 16, b.refStream) })
	client.CloseIdleConnections()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// s4 holds N streams open. Each proxy run starts on a freshly started and
// warmed process: a process that served the earlier scenarios, or the
// previous S4 run, keeps heap it no longer needs, which would hide the
// memory the held streams take.
func (b *bench) s4(ctx context.Context) error {
	b.logf("S4: idle RSS of fresh proxies after warm-up and %s of quiet", b.cfg.S4Quiet)
	for i := 1; i < len(b.targets); i++ {
		if err := b.restart(ctx, i); err != nil {
			return err
		}
		b.warm(ctx, i)
	}
	if err := sleepCtx(ctx, b.cfg.S4Quiet); err != nil {
		return err
	}
	for _, tg := range b.targets[1:] {
		b.idleRSS[tg.name], _ = memKB(tg.proc.pid)
		a, f := rssSplit(tg.proc.pid)
		b.idleSplit[tg.name] = [2]int64{a, f}
		b.logf("  idle %-8s %.1f MB anonymous + %.1f MB file-backed (VmRSS %.1f MB; one second after the first start %.1f MB)",
			tg.name, float64(a)/1024, float64(f)/1024, float64(b.idleRSS[tg.name])/1024, float64(b.freshRSS[tg.name])/1024)
	}
	settle := min(b.cfg.S4Quiet, 2*time.Second)
	hdr := http.Header{"X-Fake-Gap": {b.cfg.S4Gap.String()}}
	fresh := map[int]bool{1: true, 2: true}
	for _, n := range b.cfg.S4N {
		b.logf("S4: %d held streams of %d events × %s", n, b.cfg.Events, b.cfg.S4Gap)
		for rep := 1; rep <= b.cfg.Reps; rep++ {
			for i := range b.targets {
				if b.targets[i].proc != nil && !fresh[i] {
					if err := b.restart(ctx, i); err != nil {
						return err
					}
					b.warm(ctx, i)
				}
				fresh[i] = false
				if err := sleepCtx(ctx, settle); err != nil {
					return err
				}
				tg := b.targets[i]
				var before int64
				if tg.proc != nil {
					before, _ = memKB(tg.proc.pid)
				}
				client := newHTTPClient(n)
				var samples []heldSample
				r, _ := b.measure("S4", fmt.Sprintf("N=%d", n), rep, tg, func() *tally {
					t, s := held(ctx, client, tg, b.stream, hdr, n, b.refStream)
					samples = s
					return t
				})
				client.CloseIdleConnections()
				r.alias("p50_ms", "ttfb_p50_ms")
				r.alias("p99_ms", "ttfb_p99_ms")
				delete(r.Metrics, "rps")
				if tg.proc != nil {
					var peak heldSample
					for _, s := range samples {
						if s.active > peak.active || (s.active == peak.active && s.rssKB > peak.rssKB) {
							peak = s
						}
					}
					_, hwm := memKB(tg.proc.pid)
					r.Metrics["rss_before_mb"] = float64(before) / 1024
					r.Metrics["rss_mid_mb"] = float64(peak.rssKB) / 1024
					r.Metrics["peak_active"] = float64(peak.active)
					r.Metrics["hwm_mb"] = float64(hwm) / 1024
					if peak.active > 0 {
						r.Metrics["kb_per_stream"] = float64(peak.rssKB-before) / float64(peak.active)
					}
				}
				b.logf("  S4 N=%d %-8s rep %d: TTFB p50 %.1f ms p99 %.1f ms, RSS %.1f → %.1f MB with %.0f open, %.1f KB/stream", n, tg.name, rep,
					r.Metrics["ttfb_p50_ms"], r.Metrics["ttfb_p99_ms"], r.Metrics["rss_before_mb"], r.Metrics["rss_mid_mb"], r.Metrics["peak_active"], r.Metrics["kb_per_stream"])
			}
		}
	}
	return ctx.Err()
}
