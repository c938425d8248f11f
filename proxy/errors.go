package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/gofiber/fiber/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/valyala/fasthttp"

	"github.com/tollgate/tollgate/audit"
	"github.com/tollgate/tollgate/governance"
	"github.com/tollgate/tollgate/internal/netguard"
	"github.com/tollgate/tollgate/metering/ledger"
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
	kindTooManyRequests
	kindUpstreamUnreachable
	kindUpstreamTimeout
	kindClientGone
	kindUnavailable
	kindInternal
	// kindExhausted: every candidate credential of the request failed, or
	// health refused them all (failover.go). A 503, so every harness
	// retries it after its Retry-After.
	kindExhausted
)

// apiError is an error whose message is safe to show the caller: it never
// holds a secret, an upstream URL or another tenant's ids.
type apiError struct {
	kind kind
	msg  string
	// cause is logged, never sent.
	cause error
	// retryAfter is the seconds a kindTooManyRequests, kindUnavailable or
	// kindExhausted caller should wait, sent as Retry-After; Gemini clients read it from
	// the body, not from Retry-After.
	retryAfter int
	// refusal, for a governance refusal (govrefusal.go), replaces the
	// kind's status and error type and code with the harness's template.
	refusal *registry.RefusalShape
	// resetsAt is sent as error.resets_at (Unix seconds) when the
	// refusal's template asks for it and it is not zero.
	resetsAt int64
}

// status is the HTTP status e is answered with.
func (e *apiError) status() int {
	if e.refusal != nil {
		return e.refusal.Status
	}
	return kindStatus[e.kind]
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
	kindTooManyRequests:     http.StatusTooManyRequests,
	kindUpstreamUnreachable: http.StatusBadGateway,
	kindUpstreamTimeout:     http.StatusGatewayTimeout,
	kindClientGone:          statusClientClosed,
	kindUnavailable:         http.StatusServiceUnavailable,
	kindInternal:            http.StatusInternalServerError,
	kindExhausted:           http.StatusServiceUnavailable,

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
	if storeUnreachable(err) {
		return unavailableError(err)
	}
	var re *resolver.ResolveError
	if errors.As(err, &re) && re.Reason == resolver.ReasonCredentialUnusable {
		// The caller cannot fix this, but it must not read as a project
		// policy or a missing key: an administrator has a setting to change.
		switch {
		case errors.Is(re.Cause, resolver.ErrHTTPBaseURL):
			return &apiError{kind: kindForbidden, msg: "the credential for this request is unusable: its base URL is http://, which this server refuses; an administrator can set TOLLGATE_ALLOW_HTTP_BASE_URL=true or give it an https base URL", cause: err}
		case errors.Is(re.Cause, resolver.ErrUndecryptable):
			return &apiError{kind: kindForbidden, msg: "the credential for this request is unusable: it does not decrypt with this server's master keys; an administrator can check TOLLGATE_MASTER_KEY and TOLLGATE_PREVIOUS_MASTER_KEYS", cause: err}
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
	case errors.Is(err, resolver.ErrInvalidArgument), errors.Is(err, resolver.ErrDialectMismatch), errors.Is(err, ledger.ErrInvalidQuery),
		errors.Is(err, audit.ErrInvalidQuery):
		// Admin API only: resolver and usage-query messages name the field
		// at fault and never hold a secret.
		return &apiError{kind: kindBadRequest, msg: err.Error()}
	case errors.Is(err, governance.ErrInvalid):
		// Admin API only: the message names every field at fault.
		return &apiError{kind: kindBadRequest, msg: err.Error()}
	case errors.Is(err, resolver.ErrCredentialNotFound), errors.Is(err, resolver.ErrBindingNotFound), errors.Is(err, resolver.ErrTokenNotFound),
		errors.Is(err, governance.ErrNotFound):
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

// storeRetryAfter is the Retry-After of a refusal while the credential
// store is unreachable: about two polls, by which a healed store is seen.
const storeRetryAfter = 2

// storeUnreachable reports the resolver refusing to vouch for its view, or
// a database error of the connection kind (refused login or connection,
// SQLSTATE class 08, 57P0x shutdown), from inference or the admin API.
// Only errors the database produced are considered, so an upstream network
// error never reads as a store outage.
func storeUnreachable(err error) bool {
	if errors.Is(err, resolver.ErrUnavailable) {
		return true
	}
	var pe *pgconn.PgError
	var ce *pgconn.ConnectError
	return (errors.As(err, &ce) || errors.As(err, &pe)) && resolver.IsStoreUnavailable(err)
}

// unavailableError is a 503 that says the store is unreachable and, when
// the resolver said, for how long; never a 500, so harnesses retry.
func unavailableError(err error) *apiError {
	msg := fmt.Sprintf("tollgate cannot reach its credential store; retry in %d s", storeRetryAfter)
	var ue *resolver.UnavailableError
	if errors.As(err, &ue) && ue.Staleness > ue.Bound {
		msg = fmt.Sprintf("tollgate cannot reach its credential store: it has not confirmed tokens and credentials for %.1f s (it refuses after %s); retry in %d s",
			ue.Staleness.Seconds(), ue.Bound, storeRetryAfter)
	}
	return &apiError{kind: kindUnavailable, msg: msg, cause: err, retryAfter: storeRetryAfter}
}

// errClass names a transport error's kind for logs without its text, which
// may hold the upstream URL. It matches types and sentinels, never message
// text: a host or path that happens to contain "tls" or "reset" must not
// change the class.
func errClass(err error) string {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var alertErr tls.AlertError
	var authErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected_eof"
	case errors.Is(err, netguard.ErrRefused):
		return "address_refused"
	case errors.Is(err, errResponseTooLarge), errors.Is(err, fasthttp.ErrBodyTooLarge):
		return "response_too_large"
	case classify(err).kind == kindUpstreamTimeout, errors.Is(err, fasthttp.ErrDialTimeout):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.As(err, &dnsErr):
		return "dns"
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &alertErr),
		errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &invalidErr):
		return "tls"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF):
		return "connection_closed"
	}
	return "transport"
}

// errorBody renders e in the envelope of shape. Types follow each provider's
// own vocabulary so harness retry logic behaves: a 4xx never carries
// server_error or api_error, because OpenCode retries those without end
// (harness-clients.md §5).
func errorBody(shape string, e *apiError) []byte {
	status := e.status()
	rs := e.refusal
	switch shape {
	case registry.ShapeAnthropic:
		t := anthropicType(e.kind)
		if rs != nil {
			t = rs.Type
		}
		return mustJSON(map[string]any{
			"type":  "error",
			"error": map[string]any{"type": t, "message": e.msg},
		})
	case registry.ShapeGemini:
		st := geminiStatus(e.kind)
		if rs != nil {
			st = rs.Type
		}
		ge := map[string]any{"code": status, "message": e.msg, "status": st}
		if e.retryAfter > 0 {
			// Gemini CLI ignores Retry-After and waits RetryInfo's delay
			// (governance.md §6.2).
			ge["details"] = []any{map[string]any{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": fmt.Sprintf("%ds", e.retryAfter)}}
		}
		return mustJSON(map[string]any{"error": ge})
	default:
		t, code := openAIType(e.kind)
		oe := map[string]any{"message": e.msg, "type": t, "param": nil, "code": code}
		if rs != nil {
			oe["type"], oe["code"] = rs.Type, nilIfEmpty(rs.Code)
			oe["param"] = nilIfEmpty(rs.Param)
			if rs.ResetsAt && e.resetsAt > 0 {
				oe["resets_at"] = e.resetsAt
			}
		}
		return mustJSON(map[string]any{"error": oe})
	}
}

// nilIfEmpty renders an unset OpenAI error field as null, as OpenAI does.
func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
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
	case kindTooManyRequests:
		return "rate_limit_error"
	case kindUpstreamUnreachable, kindUpstreamTimeout, kindInternal, kindUnavailable, kindExhausted:
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
	case kindTooManyRequests:
		// OpenAI's own rate-limit shape (governance.md §6.2).
		return "requests", "rate_limit_exceeded"
	case kindUpstreamUnreachable:
		return "server_error", "upstream_unreachable"
	case kindUpstreamTimeout:
		return "server_error", "upstream_timeout"
	case kindInternal, kindUnavailable:
		return "server_error", "internal_error"
	case kindExhausted:
		return "server_error", "upstream_exhausted"
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
	case kindTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case kindUpstreamUnreachable, kindUnavailable, kindExhausted:
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
