package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Bounds on the processes the benchmark starts.
const (
	// startBound is the wait for a process's "listening on" line.
	startBound = 20 * time.Second
	// stopBound is the wait after SIGTERM before SIGKILL; tollgate's own
	// shutdown is 5 s grace plus a 10 s flush bound.
	stopBound = 40 * time.Second
)

// proc is a process the benchmark started: the fake provider or a proxy.
type proc struct {
	name string
	cmd  *exec.Cmd
	pid  int
	// URL is the base URL from the first stdout line.
	URL  string
	log  string
	done chan struct{}
	err  error
}

// startProc starts bin with args, on cpu ("" leaves it unpinned) with
// GOMAXPROCS set, waits for its "listening on http://ADDR" line and logs the
// rest of its output to dir/name.log.
func startProc(ctx context.Context, dir, name, cpu string, gomaxprocs int, env []string, bin string, args ...string) (*proc, error) {
	argv := append([]string{bin}, args...)
	if cpu != "" {
		// taskset execs bin, so the PID is the program's own.
		argv = append([]string{"taskset", "-c", cpu}, argv...)
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(gomaxprocs)), env...)
	cmd.Stderr = logf
	// The process dies with the benchmark, even on a crash.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, log: logPath, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		br := bufio.NewReader(out)
		line, _ := br.ReadString('\n')
		lines <- line
		_, _ = io.Copy(logf, br)
	}()
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	select {
	case line := <-lines:
		u, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok || !strings.HasPrefix(u, "http://") {
			p.kill()
			return nil, fmt.Errorf("%s: first line %q, want \"listening on http://ADDR\" (log %s)", name, line, logPath)
		}
		p.URL = u
	case <-time.After(startBound):
		p.kill()
		return nil, fmt.Errorf("%s did not start within %s (log %s)", name, startBound, logPath)
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
	return p, nil
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and waits up to bound, then kills. It reports whether
// the process exited on its own.
func (p *proc) stop(bound time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(bound):
		p.kill()
		return false
	}
}

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat.
var clkTck = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}()

// cpuSeconds is utime+stime of pid (fields 14 and 15 of /proc/PID/stat),
// all threads, in seconds.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat times")
	}
	return (ut + st) / clkTck, nil
}

// memKB returns VmRSS and VmHWM of pid in KiB.
func memKB(pid int) (rss, hwm int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// cpuTimes is one CPU's line of /proc/stat, in ticks.
type cpuTimes struct{ total, idle, steal float64 }

// readCPUTimes returns the per-CPU lines of /proc/stat (cpu0, cpu1, …).
func readCPUTimes() map[string]cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil
	}
	out := map[string]cpuTimes{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var t cpuTimes
		for i, s := range f[1:] {
			v, _ := strconv.ParseFloat(s, 64)
			if i >= 8 { // guest time is already counted in user
				break
			}
			t.total += v
			switch i {
			case 3, 4: // idle, iowait
				t.idle += v
			case 7:
				t.steal = v
			}
		}
		out[f[0]] = t
	}
	return out
}

// busyPct is the share of a CPU's time that was not idle between a and b,
// and the share stolen by the hypervisor.
func busyPct(a, b map[string]cpuTimes, cpu string) (busy, steal float64) {
	x, ok1 := a[cpu]
	y, ok2 := b[cpu]
	if !ok1 || !ok2 || y.total <= x.total {
		return 0, 0
	}
	d := y.total - x.total
	return 100 * (d - (y.idle - x.idle)) / d, 100 * (y.steal - x.steal) / d
}

// niceness is field 19 of /proc/PID/stat.
func niceness(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 17 {
		return 0
	}
	n, _ := strconv.Atoi(f[16])
	return n
}

// rssSplit returns RssAnon and RssFile of pid in KiB: heap and stacks
// against mapped binary pages.
func rssSplit(pid int) (anon, file int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		f := strings.Fields(v)
		if !ok || len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "RssAnon":
			anon = n
		case "RssFile":
			file = n
		}
	}
	return anon, file
}
