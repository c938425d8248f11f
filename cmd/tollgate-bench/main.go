// Command tollgate-bench is the reproducible loopback benchmark behind
// `make bench` (shared/reference/benchmark-method.md). In one run it sends
// the same load three ways: directly to the fake provider, through a minimal
// net/http reverse proxy (the floor), and through tollgate built from this
// tree with token auth, credential resolution and metering to SQLite on. It
// runs scenarios S1–S5 three times each, alternating targets, checks bytes
// and usage records, and writes docs/bench/latest.md and latest.json. S1g
// (governance.go) repeats S1 against a second tollgate with a budget, a
// Redis rate limit and a model rule applying to every request, paired with
// S1's tollgate, for governance's cost. S1f (failover.go) pairs S1's
// tollgate with one whose project bindings name two credentials: the
// first answering, or the first answering 529 at once (issue 13).
//
// Layout of a run: the command builds tollgate and the fake provider, then
// re-executes itself inside a private network namespace (`unshare -n`, with
// lo brought up) pinned to CPU 1 (`taskset -c 1`) as the load generator. It
// starts the fake provider on CPU 1 and both proxies on CPU 0, each with
// GOMAXPROCS set explicitly. Without unshare or taskset it says so and runs
// on plain loopback or unpinned.
//
// `tollgate-bench baseline-proxy` is the baseline proxy itself; the
// benchmark starts it as a separate, pinned process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tollgate-bench:", err)
		os.Exit(1)
	}
}

// Environment variables passed from the launcher to the re-executed child.
const (
	envChild   = "TOLLGATE_BENCH_CHILD"   // "1" in the namespaced, pinned child
	envNetns   = "TOLLGATE_BENCH_NETNS"   // how the child's network is isolated
	envBinDir  = "TOLLGATE_BENCH_BINDIR"  // where the launcher built the binaries
	envMachine = "TOLLGATE_BENCH_MACHINE" // machine facts read before pinning
)

// Bounds on a whole run, so nothing can hold the machine forever.
const (
	// childBound caps the namespaced child: the full run takes about 12
	// minutes, profiling adds about one.
	childBound = 45 * time.Minute
	// fdLimit is RLIMIT_NOFILE for every process: S4 holds 5000 streams, two
	// sockets each in a proxy (benchmark-method.md §1).
	fdLimit = 65536
)

// config is the benchmark's settings; -quick replaces the zero-valued
// durations and sizes with smoke-test ones.
type config struct {
	Quick      bool
	Reps       int
	Duration   time.Duration // measured time of each S1, S2 and S5 point
	Warmup     time.Duration // warm-up before each measured point
	Scenarios  map[string]bool
	S1Conns    int
	S2Rates    []int
	S3Streams  int
	S3Conc     int
	S3Rate     int // open-loop stream starts per second, for added TTFB
	HaltPoll   string
	S4N        []int
	S4Gap      time.Duration
	S4Quiet    time.Duration // quiet time before the idle RSS reading
	S5Rate     int
	S1gRate    int    // S1g's open-loop rate, for the added latency of governance
	S1fRate    int    // S1f's open-loop rate and paced stream starts per second
	RedisURL   string // S1g's shared rate limiter
	RedisSrv   string // redis-server to start inside the private namespace
	S5TTFB     time.Duration
	Events     int // content deltas per response: 20, ~1.25 KB JSON body
	ChunkBytes int // text bytes per delta
	Pin        string
	Netns      string
	OutDir     string
	Name       string
	Profile    bool
	LogLevel   string
	IncludeUsg bool
	Keep       bool
	MaxLoad    float64
	LoadWait   time.Duration
	Nice       int
}

func parseConfig(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("tollgate-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&c.Quick, "quick", false, "smoke mode: every scenario once for about 1–2 s, written as quick.{md,json}")
	fs.IntVar(&c.Reps, "reps", 0, "repetitions of every point, alternating targets (default 3; 1 with -quick)")
	fs.DurationVar(&c.Duration, "duration", 0, "measured time of each S1/S2/S5 point (default 10s; 1.5s with -quick)")
	fs.DurationVar(&c.Warmup, "warmup", 0, "warm-up before each S1/S2/S5 point (default 3s; 500ms with -quick)")
	scen := fs.String("scenarios", "S1,S1g,S1f,S2,S3,S4,S5", "scenarios to run (S1g: S1 again with a budget, a Redis rate limit and a model rule on every request, against tollgate with governance off; S1f: a binding of two credentials against one, the first answering or answering 529)")
	fs.IntVar(&c.S1Conns, "s1-conns", 64, "S1 closed-loop connections")
	rates := fs.String("s2-rates", "500,2000", "S2 open-loop rates (req/s)")
	fs.IntVar(&c.S3Streams, "s3-streams", 0, "S3 streams per run (default 3000; 400 with -quick)")
	fs.IntVar(&c.S3Conc, "s3-conc", 32, "S3 concurrent streams")
	fs.IntVar(&c.S3Rate, "s3-rate", 500, "S3 open-loop stream starts per second (the added TTFB point)")
	fs.StringVar(&c.HaltPoll, "halt-poll", "off", "idle vCPUs for the run: off (the machine as it is) or kvm (poll 200 µs before halting, KVM's default, where the haltpoll knob is writable; restored after)")
	s4n := fs.String("s4-n", "", "S4 held-stream counts (default 1000,5000; 250,1000 with -quick)")
	fs.DurationVar(&c.S4Gap, "s4-gap", 0, "S4 gap between events (default 200ms; 100ms with -quick)")
	fs.DurationVar(&c.S4Quiet, "s4-quiet", 0, "quiet time before reading idle RSS (default 10s; 1s with -quick)")
	fs.IntVar(&c.S5Rate, "s5-rate", 500, "S5 open-loop rate (req/s)")
	fs.DurationVar(&c.S5TTFB, "s5-ttfb", 300*time.Millisecond, "S5 upstream time to first byte")
	fs.IntVar(&c.S1gRate, "s1g-rate", 500, "S1g open-loop rate (req/s) of the added-latency point, governance on against off")
	fs.IntVar(&c.S1fRate, "s1f-rate", 200, "S1f open-loop rate (req/s), and stream starts per second of its 529 points, failover binding against one credential")
	fs.StringVar(&c.RedisURL, "redis", "redis://127.0.0.1:6379/0", "S1g: Redis for tollgate's shared rate limits (TOLLGATE_REDIS_URL); each run uses its own key prefix and deletes its keys")
	fs.StringVar(&c.RedisSrv, "redis-server", "redis-server", "S1g inside a private network namespace, where the host's Redis cannot be reached: the redis-server binary started there on -redis's loopback port, on the load CPU (off: start none, and skip S1g unless -redis answers)")
	fs.IntVar(&c.Events, "events", 20, "content deltas per response")
	fs.IntVar(&c.ChunkBytes, "chunk-bytes", 34, "text bytes per delta (34 × 20 gives a 1250-byte JSON body)")
	fs.StringVar(&c.Pin, "pin", "auto", "CPU pinning with taskset: auto, on or off")
	fs.StringVar(&c.Netns, "netns", "auto", "private network namespace with unshare: auto, on or off")
	fs.StringVar(&c.OutDir, "out", "docs/bench", "directory of the report")
	fs.StringVar(&c.Name, "name", "", "report base name (default latest; quick with -quick)")
	fs.BoolVar(&c.Profile, "profile", false, "after the measured runs, perf-record tollgate under S1 and S3 and write the reports beside the results")
	fs.StringVar(&c.LogLevel, "tollgate-log-level", "warn", "tollgate's log level (warn: no per-request line, for parity with the baseline)")
	fs.BoolVar(&c.IncludeUsg, "include-usage", false, "streaming clients ask for stream_options.include_usage themselves (default: tollgate injects it and hides the usage chunk)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the work directory (binaries, database, logs)")
	fs.IntVar(&c.Nice, "nice", -19, "niceness of every benchmark process, so background compiles disturb less (needs root; 0 leaves it)")
	fs.Float64Var(&c.MaxLoad, "max-load", 0, "wait until the 1-minute load average is below this before starting (0: do not wait)")
	fs.DurationVar(&c.LoadWait, "max-load-wait", 10*time.Minute, "longest wait for -max-load")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	def := func(d *time.Duration, full, quick time.Duration) {
		if *d == 0 {
			*d = full
			if c.Quick {
				*d = quick
			}
		}
	}
	if c.HaltPoll != "off" && c.HaltPoll != "kvm" {
		return nil, fmt.Errorf("-halt-poll %q: want off or kvm", c.HaltPoll)
	}
	if c.Reps == 0 {
		c.Reps = 3
		if c.Quick {
			c.Reps = 1
		}
	}
	def(&c.Duration, 10*time.Second, 1500*time.Millisecond)
	def(&c.Warmup, 3*time.Second, 500*time.Millisecond)
	def(&c.S4Gap, 200*time.Millisecond, 100*time.Millisecond)
	def(&c.S4Quiet, 10*time.Second, time.Second)
	if c.S3Streams == 0 {
		c.S3Streams = 3000
		if c.Quick {
			c.S3Streams = 400
		}
	}
	if *s4n == "" {
		*s4n = "1000,5000"
		if c.Quick {
			*s4n = "250,1000"
		}
	}
	if c.Name == "" {
		c.Name = "latest"
		if c.Quick {
			c.Name = "quick"
		}
	}
	var errs []error
	var err error
	if c.S2Rates, err = intList(*rates); err != nil {
		errs = append(errs, fmt.Errorf("-s2-rates: %w", err))
	}
	if c.S4N, err = intList(*s4n); err != nil {
		errs = append(errs, fmt.Errorf("-s4-n: %w", err))
	}
	c.Scenarios = map[string]bool{}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		switch u := strings.ToUpper(s); u {
		case "S1", "S2", "S3", "S4", "S5":
			c.Scenarios[u] = true
		case "S1G":
			c.Scenarios["S1g"] = true
		case "S1F":
			c.Scenarios["S1f"] = true
		case "":
		default:
			errs = append(errs, fmt.Errorf("-scenarios: unknown scenario %q", s))
		}
	}
	if c.S1gRate <= 0 {
		errs = append(errs, fmt.Errorf("-s1g-rate: %d is not a positive rate", c.S1gRate))
	}
	if c.S1fRate <= 0 {
		errs = append(errs, fmt.Errorf("-s1f-rate: %d is not a positive rate", c.S1fRate))
	}
	for _, v := range []struct {
		name string
		s    string
	}{{"-pin", c.Pin}, {"-netns", c.Netns}} {
		if v.s != "auto" && v.s != "on" && v.s != "off" {
			errs = append(errs, fmt.Errorf("%s: %q is not auto, on or off", v.name, v.s))
		}
	}
	for _, n := range c.S4N {
		if n*2+64 > fdLimit {
			errs = append(errs, fmt.Errorf("-s4-n: %d streams exceed the file descriptor bound %d", n, fdLimit))
		}
	}
	if c.Nice < -20 || c.Nice > 19 {
		errs = append(errs, fmt.Errorf("-nice: %d is outside [-20, 19]", c.Nice))
	}
	if c.Reps < 1 || c.Reps > 9 {
		errs = append(errs, fmt.Errorf("-reps: %d is outside [1, 9]", c.Reps))
	}
	if c.Duration > 5*time.Minute || c.Warmup > time.Minute {
		errs = append(errs, errors.New("-duration is bounded by 5m and -warmup by 1m"))
	}
	return c, errors.Join(errs...)
}

func intList(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("empty list")
	}
	return out, nil
}

// run dispatches: the baseline proxy role, the namespaced child, or the
// launcher that builds and re-executes.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "baseline-proxy" {
		return runBaseline(ctx, args[1:], stdout, stderr)
	}
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if os.Getenv(envChild) == "1" {
		ctx, cancel := context.WithTimeout(ctx, childBound)
		defer cancel()
		return runChild(ctx, cfg, stdout, stderr)
	}
	return launch(ctx, cfg, args, stdout, stderr)
}
