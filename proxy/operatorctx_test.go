package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
)

// TestOperatorContextEnds: an admin API or console request's store work
// runs under a context with a deadline that also ends at shutdown and
// when the client leaves (issue 15 A5; fiber's UserContext is otherwise
// context.Background(), so a slow query outlived both).
func TestOperatorContextEnds(t *testing.T) {
	base, shutdown := context.WithCancel(context.Background())
	defer shutdown()
	s := &Server{cfg: Config{BaseContext: base}}
	ended := make(chan error, 1)
	started := make(chan context.Context, 1)
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/wait", s.operatorContext, func(c *fiber.Ctx) error {
		ctx := c.UserContext()
		started <- ctx
		select {
		case <-ctx.Done():
			ended <- context.Cause(ctx)
		case <-time.After(10 * time.Second):
			ended <- errors.New("context did not end")
		}
		return nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Listener(ln) }()
	defer func() { _ = app.Shutdown() }()

	// A client that leaves ends the context with errClientGone.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx := <-started
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > operatorTimeout || time.Until(dl) < operatorTimeout-5*time.Second {
		t.Fatalf("deadline %v, %v: want about %v from now", dl, ok, operatorTimeout)
	}
	_ = conn.Close()
	if err := <-ended; !errors.Is(err, errClientGone) {
		t.Fatalf("client left: context ended with %v, want errClientGone", err)
	}

	// Shutdown ends it too.
	go func() { _, _ = http.Get("http://" + ln.Addr().String() + "/wait") }()
	<-started
	shutdown()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("shutdown: context ended with %v, want context.Canceled", err)
	}
}
