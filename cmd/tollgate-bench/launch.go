package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machine is what the report says about where it ran. The launcher reads it
// before pinning, so Cores is the machine's, not the child's affinity.
type machine struct {
	CPUModel     string    `json:"cpu_model"`
	Cores        int       `json:"cores"`
	Kernel       string    `json:"kernel"`
	GoVersion    string    `json:"go_version"`
	Commit       string    `json:"commit"`
	Dirty        bool      `json:"dirty"`
	LoadAvgStart string    `json:"loadavg_start"`
	Started      time.Time `json:"started"`
	HaltPoll     string    `json:"halt_poll"`
}

// launch builds the binaries, decides isolation and pinning, and re-executes
// this program as the child that runs the benchmark.
func launch(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	raiseFDLimit(stderr)
	work, err := os.MkdirTemp("", "tollgate-bench-")
	if err != nil {
		return err
	}
	if cfg.Keep {
		fmt.Fprintf(stderr, "work directory: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	bin := filepath.Join(work, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	// The registry file is read at run time: snapshot it with the build so
	// an edit made meanwhile cannot pair a new file with an old binary.
	reg, err := os.ReadFile("harnesses.yaml")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bin, "harnesses.yaml"), reg, 0o644); err != nil {
		return err
	}
	// Built as `make build` ships it, static (CGO_ENABLED=0: no libc
	// mapped, about 1 MB of RSS), but with symbols kept (no -s -w) so perf
	// can name functions.
	for _, b := range []struct{ out, pkg string }{
		{"tollgate", "./cmd/tollgate"},
		{"fakeprovider", "./cmd/fakeprovider"},
	} {
		fmt.Fprintf(stderr, "building %s\n", b.pkg)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", b.pkg, err)
		}
	}
	if cfg.MaxLoad > 0 {
		waitForQuiet(ctx, cfg.MaxLoad, cfg.LoadWait, stderr)
	}
	m := readMachine(ctx)
	restore, how := haltPoll(cfg.HaltPoll)
	defer restore()
	m.HaltPoll = how
	fmt.Fprintf(stderr, "idle CPUs: %s\n", how)
	mj, _ := json.Marshal(m)

	self, err := os.Executable()
	if err != nil {
		return err
	}
	var prefix []string
	if cfg.Nice != 0 && works(ctx, "nice", "-n", strconv.Itoa(cfg.Nice), "true") {
		// A negative niceness needs root; nice then warns and runs anyway,
		// so the child reports the niceness it really got.
		prefix = []string{"nice", "-n", strconv.Itoa(cfg.Nice)}
	}
	netns := "plain loopback (no private network namespace)"
	if cfg.Netns != "off" {
		switch {
		case works(ctx, "unshare", "-n", "--", "true"):
			prefix, netns = append(prefix, "unshare", "-n", "--"), "private network namespace (unshare -n, lo up)"
		case works(ctx, "unshare", "-rn", "--", "true"):
			prefix, netns = append(prefix, "unshare", "-rn", "--"), "private network namespace (unshare -rn, lo up)"
		case cfg.Netns == "on":
			return errors.New("-netns on: neither unshare -n nor unshare -rn works here")
		}
	}
	pin := false
	if cfg.Pin != "off" {
		_, lookErr := exec.LookPath("taskset")
		switch {
		case lookErr == nil && runtime.NumCPU() >= 2:
			pin = true
			prefix = append(prefix, "taskset", "-c", "1")
		case cfg.Pin == "on":
			return errors.New("-pin on: needs taskset and at least 2 CPUs")
		}
	}
	argv := append(append(prefix, self), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Stdout, cmd.Stderr, cmd.Stdin = stdout, stderr, nil
	cmd.Env = append(os.Environ(),
		envChild+"=1",
		envNetns+"="+netns,
		envBinDir+"="+bin,
		envMachine+"="+string(mj),
		"TOLLGATE_BENCH_PIN="+strconv.FormatBool(pin),
		"TOLLGATE_BENCH_WORK="+work,
	)
	if pin {
		cmd.Env = append(cmd.Env, "GOMAXPROCS=1")
	}
	return cmd.Run()
}

// works reports whether a command runs and exits 0 within a few seconds.
func works(ctx context.Context, name string, args ...string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).Run() == nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/tollgate/tollgate\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the tollgate module (no go.mod for github.com/tollgate/tollgate above the working directory)")
		}
		dir = parent
	}
}

// raiseFDLimit lifts RLIMIT_NOFILE for this process and every child. Calling
// Setrlimit also stops Go from restoring the old soft limit in children.
func raiseFDLimit(stderr io.Writer) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	want := syscall.Rlimit{Cur: fdLimit, Max: fdLimit}
	if lim.Max > fdLimit {
		want.Max = lim.Max
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Not root: the soft limit can still go up to the hard one.
		want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			fmt.Fprintf(stderr, "warning: cannot raise RLIMIT_NOFILE (%d): %v\n", lim.Cur, err)
		}
	}
}

func readMachine(ctx context.Context) machine {
	m := machine{Cores: runtime.NumCPU(), Started: time.Now().UTC()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadAvgStart = loadAvg()
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(string(out))
	} else {
		m.GoVersion = runtime.Version()
	}
	// Read-only git queries: the commit measured and whether the tree had
	// local changes. GIT_OPTIONAL_LOCKS=0 stops status from refreshing the
	// index file.
	git := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
		return cmd.Output()
	}
	if out, err := git("rev-parse", "HEAD"); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := git("status", "--porcelain", "--untracked-files=no"); err == nil {
		m.Dirty = len(bytes.TrimSpace(out)) > 0
	}
	return m
}

// haltPollKnob is the cpuidle-haltpoll guest's polling window, in ns.
const haltPollKnob = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"

// kvmHaltPollNs is KVM's own default window (kvm.halt_poll_ns).
const kvmHaltPollNs = 200000

// haltPoll decides how idle CPUs wait during the run. A vCPU that halts
// costs a VM exit, and waking it an interrupt through the host. This
// sandbox's kernel line sets haltpoll.guest_halt_poll_ns=0, so every
// wake-up of an idle core pays that in full, and a proxy hop wakes an idle
// core about four times. Measured at 500 req/s, 3 runs each: S2 added p50
// 0.30 ms (plain proxy 0.28) as the machine comes, 0.21 (0.24) with
// KVM's own 200 µs of polling. "kvm" gives the run that polling, to
// separate the hypervisor's share from the proxy's, and puts the old value
// back after; the default leaves the machine alone. It returns the restore
// function and what the report should say.
func haltPoll(mode string) (func(), string) {
	b, err := os.ReadFile(haltPollKnob)
	if err != nil {
		return func() {}, "no haltpoll guest driver (machine as is)"
	}
	old := strings.TrimSpace(string(b))
	cur, _ := strconv.Atoi(old)
	if mode != "kvm" || cur >= kvmHaltPollNs {
		return func() {}, fmt.Sprintf("guest halt polling %d µs (machine as is)", cur/1000)
	}
	if err := os.WriteFile(haltPollKnob, []byte(strconv.Itoa(kvmHaltPollNs)), 0o644); err != nil {
		return func() {}, fmt.Sprintf("guest halt polling %d µs (machine as is: cannot set it: %v)", cur/1000, err)
	}
	return func() { os.WriteFile(haltPollKnob, []byte(old), 0o644) },
		fmt.Sprintf("guest halt polling %d µs for the run (KVM's default; the machine's own setting, %d µs, restored after)", kvmHaltPollNs/1000, cur/1000)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// waitForQuiet waits, bounded by max, until the 1-minute load average drops
// below limit.
func waitForQuiet(ctx context.Context, limit float64, max time.Duration, stderr io.Writer) {
	deadline := time.Now().Add(max)
	for {
		l1, _ := strconv.ParseFloat(strings.Fields(loadAvg() + " 0")[0], 64)
		if l1 < limit {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(stderr, "load average still %.2f after %s; starting anyway\n", l1, max)
			return
		}
		fmt.Fprintf(stderr, "load average %.2f ≥ %.2f; waiting\n", l1, limit)
		select {
		case <-ctx.Done():
			return
		case <-time.After(15 * time.Second):
		}
	}
}
