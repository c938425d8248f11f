// Command tollgate is a credential-aware AI inference reverse proxy: agents
// hold workspace-scoped tokens, tollgate swaps in the real provider key,
// streams the answer back unchanged and meters every token.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
