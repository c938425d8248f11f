package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profile is one perf recording of tollgate under a scenario.
type profile struct {
	Scenario string  `json:"scenario"`
	File     string  `json:"file"`
	Rate     float64 `json:"per_s"` // requests or streams per second while recorded
	CPUus    float64 `json:"cpu_us_per_req"`
	Self     []hot   `json:"self"`
	Cum      []hot   `json:"cumulative"`
}

// hot is one symbol of a perf report.
type hot struct {
	Pct    float64 `json:"pct"`
	Symbol string  `json:"symbol"`
}

// profileTollgate records tollgate with perf (frame-pointer call graphs;
// Go keeps frame pointers on amd64) while S1, S3 and S2 at 500 requests/s
// load run against it. perf itself runs on the load core. These runs are
// not in the results.
func (b *bench) profileTollgate(ctx context.Context) (err error) {
	// The measured runs are done by now: a bug here must not lose them.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	perf, err := exec.LookPath("perf")
	if err != nil {
		return errors.New("perf not installed (Debian: apt-get install linux-perf)")
	}
	tg := b.targets[2]
	d := max(b.cfg.Duration, 2*time.Second)
	loads := []struct {
		name string
		fn   func() *tally
	}{
		{"S1", func() *tally { return closedLoop(ctx, tg, b.chat, b.cfg.S1Conns, d, b.refBody) }},
		// At a low fixed rate the cost per request is mostly waking up:
		// this is where S2's CPU per request goes.
		{"S2", func() *tally {
			client := newHTTPClient(64)
			defer client.CloseIdleConnections()
			return openLoop(ctx, client, tg, b.chat, nil, 500, d, b.refBody)
		}},
		{"S3", func() *tally {
			client := newHTTPClient(b.cfg.S3Conc)
			defer client.CloseIdleConnections()
			all := &tally{}
			start := time.Now()
			for i := 0; i < 100 && time.Since(start) < d && ctx.Err() == nil; i++ {
				all.add(streams(ctx, client, tg, b.stream, nil, b.cfg.S3Streams, b.cfg.S3Conc, b.refStream))
			}
			all.elapsed = time.Since(start)
			return all
		}},
	}
	for _, l := range loads {
		data := filepath.Join(b.work, "perf-"+l.name+".data")
		argv := []string{perf, "record", "-F", "1999", "-g", "-p", strconv.Itoa(tg.proc.pid), "-o", data}
		if b.pinned {
			argv = append([]string{"taskset", "-c", "1"}, argv...)
		}
		rec := exec.Command(argv[0], argv[1:]...)
		var rerr bytes.Buffer
		rec.Stderr = &rerr
		if err := rec.Start(); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		c0, _ := cpuSeconds(tg.proc.pid)
		t := b.load(tg, l.fn)
		c1, _ := cpuSeconds(tg.proc.pid)
		_ = rec.Process.Signal(syscall.SIGINT)
		waited := make(chan error, 1)
		go func() { waited <- rec.Wait() }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			_ = rec.Process.Kill()
			<-waited
		}
		if _, err := os.Stat(data); err != nil {
			return fmt.Errorf("perf record wrote nothing: %s", rerr.String())
		}
		ok := float64(t.requests - t.errors - t.non2xx)
		p := profile{Scenario: l.name, Rate: ok / t.elapsed.Seconds(), CPUus: (c1 - c0) * 1e6 / max(ok, 1)}
		self, err := perfReport(ctx, perf, data, "--no-children", "--percent-limit", "0.3")
		if err != nil {
			return err
		}
		cum, err := perfReport(ctx, perf, data, "--children", "--percent-limit", "1.5")
		if err != nil {
			return err
		}
		p.Self, p.Cum = topHot(self, 1, 20), topHot(cum, 0, 200)
		p.File = filepath.Join(b.cfg.OutDir, b.cfg.Name+"-profile-"+l.name+".txt")
		text := fmt.Sprintf("# perf record -F 1999 -g -p <tollgate> under %s (%.0f/s, %.1f µs CPU each)\n\n## self time (perf report --no-children -g none --sort symbol)\n\n%s\n## inclusive time (perf report --children -g none --sort symbol)\n\n%s",
			l.name, p.Rate, p.CPUus, self, cum)
		if err := os.MkdirAll(b.cfg.OutDir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p.File, []byte(text), 0o644); err != nil {
			return err
		}
		b.profiles = append(b.profiles, p)
		b.logf("profiled tollgate under %s: %.0f/s, %.1f µs CPU each; report %s", l.name, p.Rate, p.CPUus, p.File)
	}
	return nil
}

func perfReport(ctx context.Context, perf, data string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	argv := append([]string{"report", "-i", data, "--stdio", "-g", "none", "--sort", "symbol"}, args...)
	out, err := exec.CommandContext(ctx, perf, argv...).Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w", err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "# ") && !strings.HasPrefix(l, "# Samples") && !strings.HasPrefix(l, "# Event count") && !strings.HasPrefix(l, "# Overhead") {
			continue
		}
		keep = append(keep, strings.TrimRight(l, " -"))
	}
	return strings.Join(keep, "\n") + "\n", nil
}

// topHot parses perf report lines ("  12.34%  0.10%  [.] symbol"); col picks
// which percentage (0: first, 1: second, falling back to the first).
func topHot(report string, col, n int) []hot {
	var out []hot
	for _, l := range strings.Split(report, "\n") {
		f := strings.Fields(l)
		var pcts []float64
		i := 0
		for ; i < len(f) && strings.HasSuffix(f[i], "%"); i++ {
			v, err := strconv.ParseFloat(strings.TrimSuffix(f[i], "%"), 64)
			if err != nil {
				break
			}
			pcts = append(pcts, v)
		}
		if len(pcts) == 0 || i >= len(f) {
			continue
		}
		sym := strings.TrimRight(strings.Join(f[i:], " "), " -")
		sym = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(sym, "[.]"), "[k]"))
		if strings.HasPrefix(f[i], "[k]") {
			sym = "[kernel] " + sym
		}
		pct := pcts[0]
		if col < len(pcts) {
			pct = pcts[col]
		}
		out = append(out, hot{Pct: pct, Symbol: sym})
	}
	slices.SortStableFunc(out, func(a, b hot) int { return cmp.Compare(b.Pct, a.Pct) })
	return out[:min(n, len(out))]
}
