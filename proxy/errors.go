package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/gofiber/fiber/v2"

	"github.com/tollgate/tollgate/registry"
	"github.com/tollgate/tollgate/resolver"
)

// kind classifies a failure tollgate reports itself. Each kind has one
// status and one error type per dialect envelope.
type kind int

const (
	kindBadRequest kind = iota
	kindUnauthenticated
	kindForbidden
	kindNotFound
	kindMethodNotAllowed
	kindTooLarge
	kindUnsupportedMediaType
	kindHeadersTooLarge
	kindUpgradeRequired
	kindUpstreamUnreachable
	kindUpstreamTimeout
	kindClientGone
	kindUnavailable
	kindInternal
)

// apiError is an error whose message is safe to show the caller: it never
// holds a secret, an upstream URL or another tenant's ids.
type apiError struct {
	kind kind
	msg  string
	// cause is logged, never sent.
	cause error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.cause }

func newError(k kind, format string, args ...any) *apiError {
	return &apiError{kind: k, msg: fmt.Sprintf(format, args...)}
}

// statusClientClosed is nginx's 499, for logs and metrics only: the client
// is gone and will never read it (caddyserver/caddy#3748).
const statusClientClosed = 499

var kindStatus = map[kind]int{
	kindBadRequest:          http.StatusBadRequest,
	kindUnauthenticated:     http.StatusUnauthorized,
	kindForbidden:           http.StatusForbidden,
	kindNotFound:            http.StatusNotFound,
	kindMethodNotAllowed:    http.StatusMethodNotAllowed,
	kindTooLarge:            http.StatusRequestEntityTooLarge,
	kindHeadersTooLarge:     http.StatusRequestHeaderFieldsTooLarge,
	kindUpgradeRequired:     http.StatusUpgradeRequired,
	kindUpstreamUnreachable: http.StatusBadGateway,
	kindUpstreamTimeout:     http.StatusGatewayTimeout,
	kindClientGone:          statusClientClosed,
	kindUnavailable:         http.StatusServiceUnavailable,
	kindInternal:            http.StatusInternalServerError,

	// A Content-Encoding tollgate will not decode (proxy/decompress.go).
	kindUnsupportedMediaType: http.StatusUnsupportedMediaType,
}

// classify turns any error into an apiError. This is the one place where
// errors become statuses and caller-visible messages.
func classify(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var fe *fiber.Error
	if errors.As(err, &fe) {
		switch fe.Code {
		case fiber.StatusRequestEntityTooLarge:
			return newError(kindTooLarge, "request body is larger than this gateway accepts")
		case fiber.StatusRequestHeaderFieldsTooLarge:
			return newError(kindHeadersTooLarge, "request headers are larger than this gateway accepts")
		case fiber.StatusNotFound:
			return newError(kindNotFound, "no route for this path")
		case fiber.StatusMethodNotAllowed:
			return newError(kindMethodNotAllowed, "method not allowed on this path")
		case fiber.StatusRequestTimeout:
			return &apiError{kind: kindBadRequest, msg: "request was not received in time", cause: err}
		}
		if fe.Code >= 400 && fe.Code < 500 {
			return &apiError{kind: kindBadRequest, msg: "malformed request", cause: err}
		}
	}
	switch {
	case errors.Is(err, resolver.ErrTokenMissing):
		return &apiError{kind: kindUnauthenticated, msg: "missing tollgate token: send the workspace token as 'Authorization: Bearer', 'x-api-key' or 'x-goog-api-key'", cause: err}
	case errors.Is(err, resolver.ErrTokenExpired):
		return &apiError{kind: kindUnauthenticated, msg: "tollgate token has expired: ask your agent manager for a new one", cause: err}
	case errors.Is(err, resolver.ErrTokenRevoked):
		return &apiError{kind: kindUnauthenticated, msg: "tollgate token has been revoked: ask your agent manager for a new one", cause: err}
	case errors.Is(err, resolver.ErrTokenInvalid):
		return &apiError{kind: kindUnauthenticated, msg: "tollgate token is not valid: check the key variable your harness reads", cause: err}
	case errors.Is(err, resolver.ErrHalted):
		return &apiError{kind: kindForbidden, msg: "this project has disabled this provider: ask a project administrator to enable it", cause: err}
	case errors.Is(err, resolver.ErrNoCredential):
		return &apiError{kind: kindUnauthenticated, msg: "no credential is configured for this project and user on this dialect: ask an administrator to add one", cause: err}
	case errors.Is(err, resolver.ErrInvalidArgument), errors.Is(err, resolver.ErrDialectMismatch):
		// Admin API only: the resolver's messages name the field at fault
		// and never hold a secret.
		return &apiError{kind: kindBadRequest, msg: err.Error()}
	case errors.Is(err, resolver.ErrCredentialNotFound), errors.Is(err, resolver.ErrBindingNotFound), errors.Is(err, resolver.ErrTokenNotFound):
		return &apiError{kind: kindNotFound, msg: err.Error()}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return &apiError{kind: kindUpstreamTimeout, msg: "the provider did not answer in time", cause: err}
	}
	// net.Error, and fasthttp's ErrTimeout, which has only this method.
	var te interface{ Timeout() bool }
	if errors.As(err, &te) && te.Timeout() {
		return &apiError{kind: kindUpstreamTimeout, msg: "the provider did not answer in time", cause: err}
	}
	return &apiError{kind: kindInternal, msg: "internal error", cause: err}
}

// errorBody renders e in the envelope of shape. Types follow each provider's
// own vocabulary so harness retry logic behaves: a 4xx never carries
// server_error or api_error, because OpenCode retries those without end
// (harness-clients.md §5).
func errorBody(shape string, e *apiError) []byte {
	status := kindStatus[e.kind]
	switch shape {
	case registry.ShapeAnthropic:
		return mustJSON(map[string]any{
			"type":  "error",
			"error": map[string]any{"type": anthropicType(e.kind), "message": e.msg},
		})
	case registry.ShapeGemini:
		return mustJSON(map[string]any{
			"error": map[string]any{"code": status, "message": e.msg, "status": geminiStatus(e.kind)},
		})
	default:
		t, code := openAIType(e.kind)
		return mustJSON(map[string]any{
			"error": map[string]any{"message": e.msg, "type": t, "param": nil, "code": code},
		})
	}
}

// streamErrorEvent renders e as the SSE event that tells a client of d,
// mid-stream, that the answer it is reading failed: once headers are out, a
// status can no longer say it, and a stream that just stops reads as a
// network fault or, worse, as complete (harness-clients.md §7.3).
func streamErrorEvent(d *registry.Dialect, e *apiError, responseID string) []byte {
	var b []byte
	switch d.StreamError {
	case registry.StreamErrorResponseFailed:
		code, _ := openAIType(e.kind)
		resp := map[string]any{"object": "response", "status": "failed", "error": map[string]any{"code": code, "message": e.msg}}
		if responseID != "" {
			resp["id"] = responseID
		}
		b = append(b, "event: response.failed\ndata: "...)
		b = append(b, mustJSON(map[string]any{"type": "response.failed", "response": resp})...)
	case registry.StreamErrorEvent:
		b = append(b, "event: error\ndata: "...)
		b = append(b, errorBody(d.ErrorShape, e)...)
	default:
		b = append(b, "data: "...)
		b = append(b, errorBody(d.ErrorShape, e)...)
	}
	return append(b, "\n\n"...)
}

func anthropicType(k kind) string {
	switch k {
	case kindUnauthenticated:
		return "authentication_error"
	case kindForbidden:
		return "permission_error"
	case kindNotFound:
		return "not_found_error"
	case kindTooLarge:
		return "request_too_large"
	case kindUpstreamUnreachable, kindUpstreamTimeout, kindInternal, kindUnavailable:
		return "api_error"
	}
	return "invalid_request_error"
}

func openAIType(k kind) (typ string, code string) {
	switch k {
	case kindUnauthenticated:
		return "invalid_request_error", "invalid_api_key"
	case kindForbidden:
		return "invalid_request_error", "permission_denied"
	case kindNotFound:
		return "invalid_request_error", "not_found"
	case kindTooLarge:
		return "invalid_request_error", "request_too_large"
	case kindUpstreamUnreachable:
		return "server_error", "upstream_unreachable"
	case kindUpstreamTimeout:
		return "server_error", "upstream_timeout"
	case kindInternal, kindUnavailable:
		return "server_error", "internal_error"
	}
	return "invalid_request_error", "invalid_request"
}

func geminiStatus(k kind) string {
	switch k {
	case kindUnauthenticated:
		return "UNAUTHENTICATED"
	case kindForbidden:
		return "PERMISSION_DENIED"
	case kindNotFound:
		return "NOT_FOUND"
	case kindUpstreamUnreachable, kindUnavailable:
		return "UNAVAILABLE"
	case kindUpstreamTimeout:
		return "DEADLINE_EXCEEDED"
	case kindInternal:
		return "INTERNAL"
	}
	return "INVALID_ARGUMENT"
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only maps of strings and ints reach here.
		panic(err)
	}
	return b
}
