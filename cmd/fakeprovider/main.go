// Command fakeprovider serves tollgate's fake AI provider
// (proxy/upstreamtest) on a real port, for the end-to-end harness runs and
// the benchmark. Its first line on stdout is "listening on http://ADDR";
// scripts parse it. GET /_fake/counters returns the stream counters; with
// -client-ids, GET /_fake/client-ids returns what each client request id
// got, and -key-tags marks each answer with the key that paid for it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// Bounds: streams get defaultGrace (the -grace flag) to finish on shutdown,
// then connections are closed, so a silent or trickling stream cannot hold
// the process; a client gets readHeaderTimeout to send its headers.
const (
	defaultGrace      = 5 * time.Second
	readHeaderTimeout = 10 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeprovider:", err)
		os.Exit(1)
	}
}

// run serves the fake provider until ctx is done, then shuts down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakeprovider", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	grace := fs.Duration("grace", defaultGrace, "how long open streams get to finish on shutdown")
	keys := fs.String("keys", "", "comma-separated accepted provider keys; empty accepts any non-empty key")
	var cfg upstreamtest.Config
	d := upstreamtest.DefaultUsage
	fs.Int64Var(&cfg.Usage.InputUncached, "input", d.InputUncached, "uncached input tokens reported")
	fs.Int64Var(&cfg.Usage.CacheRead, "cache-read", d.CacheRead, "cache-read input tokens reported")
	fs.Int64Var(&cfg.Usage.CacheWrite5m, "cache-write-5m", d.CacheWrite5m, "5-minute cache-write tokens reported")
	fs.Int64Var(&cfg.Usage.CacheWrite1h, "cache-write-1h", d.CacheWrite1h, "1-hour cache-write tokens reported")
	fs.Int64Var(&cfg.Usage.Output, "output", d.Output, "output tokens reported, reasoning included")
	fs.Int64Var(&cfg.Usage.Reasoning, "reasoning", d.Reasoning, "reasoning tokens reported, part of output")
	fs.IntVar(&cfg.Events, "events", upstreamtest.DefaultEvents, "content deltas per response (0 means the default; X-Fake-Events: 0 sends none)")
	fs.IntVar(&cfg.ChunkBytes, "chunk-bytes", upstreamtest.DefaultChunkBytes, "bytes of text per delta")
	fs.DurationVar(&cfg.Gap, "gap", 0, "pause between stream events")
	fs.DurationVar(&cfg.TTFB, "ttfb", 0, "delay before response headers")
	fs.StringVar(&cfg.Fault, "fault", "", "default fault list (see X-Fake-Fault)")
	fs.BoolVar(&cfg.UsageOnFinishChunk, "usage-on-finish-chunk", false, "OpenAI Chat: put usage on the finish_reason chunk")
	keyTags := fs.Bool("key-tags", false, "append a tag of the provider key (a hash prefix) to the request-id response headers")
	clientIDs := fs.Bool("client-ids", false, "count each X-Client-Request-Id, served at "+ClientIDsPath)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *keys != "" {
		cfg.Keys = strings.Split(*keys, ",")
	}
	// Nothing reads the records of a standalone fake, and at benchmark
	// rates copying every body would cost more than serving it.
	cfg.RecordLimit = -1

	fake, err := upstreamtest.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr()); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: &tracer{next: fake, keyTags: *keyTags, ids: *clientIDs}, ReadHeaderTimeout: readHeaderTimeout}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
		// Closing the connections cancels the held streams' contexts.
		srv.Close()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	counters, _ := json.Marshal(fake.Counters())
	fmt.Fprintf(stderr, "fakeprovider: stopped; counters %s\n", counters)
	return nil
}
