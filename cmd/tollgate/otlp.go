package main

// This file is tollgate's own OTLP/HTTP metric exporter. It stands in for
// otlpmetrichttp, whose config package links grpc
// (open-telemetry/opentelemetry-go#2579): 4.6 MB of binary and 3.5 MB of
// idle RSS for a transport tollgate never uses. It speaks only
// http/protobuf, reads the standard OTEL_EXPORTER_OTLP_* variables, and is
// held byte-for-byte to the official exporter's output (the request body
// before compression) by a differential test, so a collector cannot tell
// the two apart.

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	cpb "go.opentelemetry.io/proto/otlp/common/v1"
	mpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	rpb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// otlpExporter pushes metrics to an OTLP/HTTP collector. Every field is
// set before first use and only read afterwards, so Export is safe for
// concurrent use without a lock.
type otlpExporter struct {
	target      string      // full URL, query included; never printed, it may carry a key
	where       string      // target without its query, for error messages
	header      http.Header // sent with every push; values may be credentials
	secrets     []string    // header values and their parts, squeezed, longest first; cut from anything the collector echoes
	gzip        bool
	temporality sdkmetric.TemporalitySelector
	client      *http.Client

	// Backoff between attempts, grown by half each time and jittered by
	// ±50% as the official exporter does. Fields so tests can shrink them.
	retryInitial, retryMax, retryElapsed time.Duration

	shut atomic.Bool
}

var errOTLPShutdown = fmt.Errorf("otlp: export after shutdown: %w", sdkmetric.ErrExporterShutdown)

// newOTLPExporter configures an exporter from the standard environment.
// Unlike the official exporter, which logs a bad value and carries on
// without it, every bad value is a startup error naming its variable: a
// push that silently goes to the wrong place or in the wrong shape is
// found much later than a proxy that refuses to start.
func newOTLPExporter() (*otlpExporter, error) {
	if name, v := otlpEnv("PROTOCOL"); v != "" && v != "http/protobuf" {
		return nil, fmt.Errorf("%s=%q: tollgate pushes OTLP over HTTP with protobuf only; unset it or set it to http/protobuf", name, v)
	}
	target, err := otlpTarget()
	if err != nil {
		return nil, err
	}
	header, secrets, err := otlpHeaders()
	if err != nil {
		return nil, err
	}
	e := &otlpExporter{
		target:       target.String(),
		where:        (&url.URL{Scheme: target.Scheme, Host: target.Host, Path: target.Path}).String(),
		header:       header,
		secrets:      secrets,
		temporality:  sdkmetric.CumulativeTemporalitySelector,
		retryInitial: 5 * time.Second,
		retryMax:     30 * time.Second,
		retryElapsed: time.Minute,
	}
	switch name, v := otlpEnv("COMPRESSION"); strings.ToLower(v) {
	case "", "none":
	case "gzip":
		e.gzip = true
	default:
		return nil, fmt.Errorf("%s=%q: want gzip or none", name, v)
	}
	const tempVar = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
	switch v := strings.TrimSpace(os.Getenv(tempVar)); strings.ToLower(v) {
	case "", "cumulative":
	case "delta":
		e.temporality = sdkmetric.DeltaTemporalitySelector
	case "lowmemory":
		e.temporality = sdkmetric.LowMemoryTemporalitySelector
	default:
		return nil, fmt.Errorf("%s=%q: want cumulative, delta or lowmemory", tempVar, v)
	}
	timeout := 10 * time.Second
	if name, v := otlpEnv("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("%s=%q: want a positive number of milliseconds", name, v)
		}
		timeout = time.Duration(ms) * time.Millisecond
	}
	tlsCfg, tlsVar, err := otlpTLS()
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil && target.Scheme == "http" {
		return nil, fmt.Errorf("%s is set but the OTLP endpoint is http://; use an https:// endpoint or unset it", tlsVar)
	}
	// Our own transport, a copy of http.DefaultTransport's settings, so
	// Shutdown can close its idle connections without touching anyone
	// else's and a TLS config applies to the push alone.
	e.client = &http.Client{
		Timeout: timeout, // per attempt, as the official exporter applies it
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: 1 * time.Second,
			TLSClientConfig:       tlsCfg,
		},
	}
	return e, nil
}

// otlpEnv returns the metrics-specific variable for key if set, else the
// generic one, with the name of the one used so errors can point at it.
func otlpEnv(key string) (name, value string) {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_METRICS_" + key, "OTEL_EXPORTER_OTLP_" + key} {
		if v := strings.TrimSpace(os.Getenv(name)); v != "" {
			return name, v
		}
	}
	return "", ""
}

// otlpConfigured reports whether an OTLP endpoint is set, and so whether
// to push at all. Blank is unset here as it is in otlpTarget: " " must not
// turn the push on only to fail startup as a bad URL.
func otlpConfigured() bool {
	return strings.TrimSpace(os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) != "" ||
		strings.TrimSpace(os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) != ""
}

// otlpTarget follows the OTLP spec: the metrics-specific endpoint is used
// as is, the generic one is a base that /v1/metrics is appended to.
func otlpTarget() (*url.URL, error) {
	name := "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
	raw := strings.TrimSpace(os.Getenv(name))
	perSignal := raw != ""
	if !perSignal {
		name = "OTEL_EXPORTER_OTLP_ENDPOINT"
		raw = strings.TrimSpace(os.Getenv(name))
	}
	// The value is not quoted back: it may hold credentials.
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s must be an http:// or https:// URL such as https://collector:4318", name)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%s holds credentials; send them with OTEL_EXPORTER_OTLP_HEADERS instead", name)
	}
	u.Fragment, u.RawFragment = "", ""
	switch {
	case !perSignal:
		u.Path, u.RawPath = path.Join("/", u.Path, "v1/metrics"), ""
	case u.Path == "":
		u.Path = "/"
	}
	return u, nil
}

// otlpHeaders parses the W3C-baggage-like key=value,... list. As with the
// official exporter the metrics-specific variable replaces the generic one
// rather than merging with it. Errors say which entry is wrong but never
// quote it: the value is usually an API key.
func otlpHeaders() (http.Header, []string, error) {
	h := http.Header{}
	h.Set("User-Agent", "tollgate/"+version+" (OTLP/HTTP protobuf metrics)")
	var secrets []string
	name, list := otlpEnv("HEADERS")
	for i, entry := range strings.Split(list, ",") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		k, v, ok := strings.Cut(entry, "=")
		k = strings.TrimSpace(k)
		if !ok || !validHeaderName(k) {
			return nil, nil, fmt.Errorf("%s: entry %d is not name=value with a valid HTTP header name", name, i+1)
		}
		v, err := url.PathUnescape(v)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: entry %d (%s): the value is not valid percent-encoding", name, i+1, k)
		}
		v = strings.TrimSpace(v)
		if strings.ContainsFunc(v, func(r rune) bool { return r != '\t' && (r < ' ' || r == 0x7f) }) {
			return nil, nil, fmt.Errorf("%s: entry %d (%s): the value holds control characters", name, i+1, k)
		}
		h.Set(k, v)
		// sanitize matches secrets against squeezed text, so they are
		// kept squeezed too: "abc1  def2" echoed is "abc1 def2" by then.
		sv := squeeze(v)
		// No credential is under 4 bytes, and redacting "1" (a tenant id,
		// say) would garble every number the collector tells us.
		if len(sv) >= 4 {
			secrets = append(secrets, sv)
		}
		// "Bearer sk-…" may come back as just the key.
		for _, part := range strings.Split(sv, " ") {
			if len(part) >= 8 && part != sv {
				secrets = append(secrets, part)
			}
		}
	}
	// Longest first, so a value that holds another is cut whole rather
	// than around the shorter one.
	slices.SortFunc(secrets, func(a, b string) int { return cmp.Or(len(b)-len(a), strings.Compare(a, b)) })
	secrets = slices.Compact(secrets)
	h.Set("Content-Type", "application/x-protobuf")
	return h, secrets, nil
}

func validHeaderName(k string) bool {
	return k != "" && !strings.ContainsFunc(k, func(r rune) bool {
		return r > unicode.MaxASCII || !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("!#$%&'*+-.^_`|~", r))
	})
}

// otlpTLS loads the CA and client certificate files. It returns the name
// of a variable that set something so a conflict with an http:// endpoint
// can be reported against it.
func otlpTLS() (*tls.Config, string, error) {
	var cfg tls.Config
	var used string
	if name, file := otlpEnv("CERTIFICATE"); file != "" {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", name, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("%s: %s holds no PEM certificate", name, file)
		}
		used = name
	}
	// The certificate and key come as a pair: the metrics-specific pair if
	// either half is set, else the generic one.
	prefix := "OTEL_EXPORTER_OTLP_METRICS_"
	if strings.TrimSpace(os.Getenv(prefix+"CLIENT_CERTIFICATE")) == "" && strings.TrimSpace(os.Getenv(prefix+"CLIENT_KEY")) == "" {
		prefix = "OTEL_EXPORTER_OTLP_"
	}
	certVar, keyVar := prefix+"CLIENT_CERTIFICATE", prefix+"CLIENT_KEY"
	certFile, keyFile := strings.TrimSpace(os.Getenv(certVar)), strings.TrimSpace(os.Getenv(keyVar))
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return nil, "", fmt.Errorf("%s and %s must be set together", certVar, keyVar)
		}
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("%s/%s: %w", certVar, keyVar, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
		used = certVar
	}
	if used == "" {
		return nil, "", nil
	}
	return &cfg, used, nil
}

func (e *otlpExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return e.temporality(k)
}

// Aggregation is the SDK's default: OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION
// is not supported (telemetry.go warns when it is set).
func (e *otlpExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

// ForceFlush has nothing to do: Export sends synchronously.
func (e *otlpExporter) ForceFlush(ctx context.Context) error { return ctx.Err() }

func (e *otlpExporter) Shutdown(ctx context.Context) error {
	if e.shut.Swap(true) {
		return errOTLPShutdown
	}
	e.client.CloseIdleConnections()
	return ctx.Err()
}

// Export converts and sends rm. A metric that cannot be converted is
// dropped and reported while the rest is still sent, as the official
// exporter does. A partial success from the collector is returned as an
// *otlpPartialSuccess error, again as the official exporter does; the
// PeriodicReader hands it to otel.Handle, and on shutdown the caller sees it.
func (e *otlpExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	if e.shut.Load() {
		return errOTLPShutdown
	}
	pb, convErr := otlpResourceMetrics(rm)
	body, err := e.encode(pb)
	if err != nil {
		return errors.Join(convErr, err)
	}
	return errors.Join(convErr, e.send(ctx, body))
}

// encode writes an ExportMetricsServiceRequest by hand: its generated type
// lives in the collector package, which links grpc. The message is just
// field 1, repeated ResourceMetrics.
func (e *otlpExporter) encode(rm *mpb.ResourceMetrics) ([]byte, error) {
	n := proto.Size(rm)
	b := make([]byte, 0, protowire.SizeTag(1)+protowire.SizeVarint(uint64(n))+n)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, rm)
	if err != nil || !e.gzip {
		return b, err
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return zb.Bytes(), nil
}

// otlpRetryable marks a failure worth another attempt; after is the
// collector's Retry-After, if it gave one.
type otlpRetryable struct {
	after time.Duration
	err   error
}

func (r *otlpRetryable) Error() string { return r.err.Error() }
func (r *otlpRetryable) Unwrap() error { return r.err }

// send posts body until it is accepted, fails permanently, or retrying
// would outlast either retryElapsed or ctx's deadline. It gives up as soon
// as the next wait would cross the deadline rather than sleeping into it,
// so the reader's export timeout bounds the whole call.
func (e *otlpExporter) send(ctx context.Context, body []byte) error {
	start := time.Now()
	backoff := e.retryInitial
	var last error
	for attempt := 1; ; attempt++ {
		err := e.post(ctx, body)
		if err != nil && last != nil && ctx.Err() != nil {
			// The deadline cut this attempt short: the collector's last
			// answer says more than "context deadline exceeded".
			return fmt.Errorf("%w (gave up after %d attempt(s): %w)", last, attempt, context.Cause(ctx))
		}
		last = err
		var retry *otlpRetryable
		if err == nil || !errors.As(err, &retry) {
			return err
		}
		wait := backoff
		if backoff > 0 {
			wait = backoff/2 + rand.N(backoff) // ±50%
		}
		wait = max(wait, retry.after)
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(dl) {
			return fmt.Errorf("%w (gave up after %d attempt(s): the next, in %v, would pass the export deadline)", err, attempt, wait.Round(time.Millisecond))
		}
		if time.Since(start)+wait > e.retryElapsed {
			return fmt.Errorf("%w (gave up after %d attempt(s) in %v)", err, attempt, time.Since(start).Round(time.Millisecond))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%w (gave up after %d attempt(s): %w)", err, attempt, context.Cause(ctx))
		case <-timer.C:
		}
		backoff = min(backoff+backoff/2, e.retryMax)
	}
}

// post makes one attempt. Errors name the endpoint without its query and
// never include a header; the collector's own words are passed through
// excerpt first.
func (e *otlpExporter) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("otlp: POST %s: %w", e.where, err)
	}
	req.Header = e.header.Clone()
	if e.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		// url.Error quotes the whole URL, query and all; keep the cause only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		err = fmt.Errorf("otlp: POST %s: %w", e.where, err)
		var certErr *tls.CertificateVerificationError
		if ctx.Err() != nil || errors.As(err, &certErr) {
			return err // retrying cannot help
		}
		return &otlpRetryable{err: err}
	}
	defer resp.Body.Close()
	status := fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode)) // not resp.Status: its text is the server's
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return &otlpRetryable{
			after: retryAfter(resp.Header.Get("Retry-After")),
			err:   fmt.Errorf("otlp: POST %s: %s%s", e.where, status, e.excerpt(resp)),
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("otlp: POST %s: %s%s", e.where, status, e.excerpt(resp))
	}
	return e.partialSuccess(resp)
}

// otlpMaxRetryAfter caps the wait a collector can ask for. send gives up
// long before it, at retryElapsed or the export deadline, whichever is
// first; the cap keeps an absurd value from overflowing the arithmetic.
const otlpMaxRetryAfter = time.Hour

// retryAfter reads both forms RFC 9110 allows, delay-seconds and an HTTP
// date, as the official exporter does; a date in the past is no wait, and
// garbage falls back to our own backoff. send still never waits past the
// context's deadline, whatever this returns.
func retryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		// On overflow s is ±MaxInt64: clamped like any other value.
		d = time.Duration(min(max(s, 0), int64(otlpMaxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return min(max(d, 0), otlpMaxRetryAfter)
}

// otlpPartialSuccess is the collector accepting an export but dropping
// some of it.
type otlpPartialSuccess struct {
	rejected int64
	message  string // already sanitised
}

func (p *otlpPartialSuccess) Error() string {
	return fmt.Sprintf("otlp: partial success: the collector rejected %d data point(s): %q", p.rejected, p.message)
}

// otlpMaxReply bounds how much of a success reply is read. An
// ExportMetricsServiceResponse is a count and a message, and the message
// is cut to 200 bytes for the log anyway, so a real one is far under this.
// The official exporter reads up to 4 MiB; holding megabytes on every push
// only to throw them away buys nothing, so a bigger reply is reported as
// too large rather than read.
const otlpMaxReply = 64 << 10

// partialSuccess decodes ExportMetricsServiceResponse.partial_success
// (field 1: rejected_data_points = 1, error_message = 2) by hand, for the
// same reason encode exists.
func (e *otlpExporter) partialSuccess(resp *http.Response) error {
	// Read even a reply we ignore, so the connection can be reused; one
	// byte past the limit tells a reply that fits from one that does not.
	raw, err := io.ReadAll(io.LimitReader(resp.Body, otlpMaxReply+1))
	if err != nil || !isProtobuf(resp.Header) {
		return nil // the data was accepted; an unreadable reply loses nothing
	}
	if len(raw) > otlpMaxReply {
		return fmt.Errorf("otlp: POST %s: the export was accepted but the reply is too large to read (over %d KiB), so any partial success it reports is unknown", e.where, otlpMaxReply>>10)
	}
	var p otlpPartialSuccess
	err = protoFields(raw, func(num protowire.Number, _ uint64, ps []byte) error {
		if num != 1 {
			return nil
		}
		return protoFields(ps, func(num protowire.Number, v uint64, b []byte) error {
			switch num {
			case 1:
				p.rejected = int64(v)
			case 2:
				p.message = string(b)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("otlp: POST %s: the export was accepted but the reply is not an ExportMetricsServiceResponse: %w", e.where, err)
	}
	if p.rejected == 0 && p.message == "" {
		return nil
	}
	p.message = e.sanitize(p.message)
	return &p
}

func isProtobuf(h http.Header) bool {
	ct, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "application/x-protobuf")
}

// protoFields calls fn for every field of a protobuf message: v holds a
// varint field's value, b a length-delimited field's bytes.
func protoFields(msg []byte, fn func(num protowire.Number, v uint64, b []byte) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		var v uint64
		var b []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(msg)
		case protowire.BytesType:
			b, n = protowire.ConsumeBytes(msg)
		default:
			n = protowire.ConsumeFieldValue(num, typ, msg)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if err := fn(num, v, b); err != nil {
			return err
		}
	}
	return nil
}

// excerpt returns ": <collector's explanation>" for an error reply, or ""
// when there is none worth showing. A protobuf reply is a google.rpc.Status
// whose message is field 2; anything else is taken as text.
func (e *otlpExporter) excerpt(resp *http.Response) string {
	const limit = 4 << 10
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	truncated := len(raw) > limit
	raw = raw[:min(len(raw), limit)]
	msg := string(raw)
	switch {
	case isProtobuf(resp.Header):
		// A field cut by the read limit is not decoded.
		msg = ""
		protoFields(raw, func(num protowire.Number, _ uint64, b []byte) error {
			if num == 2 {
				msg = string(b)
			}
			return nil
		})
	case truncated:
		// The read limit may have cut an echoed header value, whose first
		// part no longer matches it.
		msg = e.cutSecretStart(msg)
	}
	if msg = e.sanitize(msg); msg == "" {
		return ""
	}
	return ": " + strconv.Quote(msg)
}

// squeeze makes text printable and single-spaced: invalid UTF-8 becomes
// "?" and every run of white space or non-printables one space. sanitize
// applies it to the collector's text and otlpHeaders to the secrets, so
// the two are compared in the same form however either was spaced.
func squeeze(s string) string {
	s = strings.ToValidUTF8(s, "?")
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }), " ")
}

// cutSecretStart drops the end of text cut short by a read limit if it is
// the start of a secret, since the whole secret is not there to match. It
// returns the text squeezed, which sanitize leaves as it is.
func (e *otlpExporter) cutSecretStart(s string) string {
	// An incomplete last rune would turn into "?" and hide what precedes it.
	for i := len(s) - 1; i >= max(0, len(s)-utf8.UTFMax); i-- {
		if utf8.RuneStart(s[i]) {
			if !utf8.FullRuneInString(s[i:]) {
				s = s[:i]
			}
			break
		}
	}
	s = squeeze(s)
	drop := 0
	for _, secret := range e.secrets {
		for k := min(len(secret)-1, len(s)); k > drop; k-- {
			if strings.HasSuffix(s, secret[:k]) {
				drop = k
				break
			}
		}
	}
	return s[:len(s)-drop]
}

// sanitize makes collector text safe to log. Collectors sometimes echo
// what they were sent, so header values are cut out, and the result is
// short so an echoed payload cannot land in the logs.
func (e *otlpExporter) sanitize(s string) string {
	const limit = 200
	s = squeeze(s)
	for _, secret := range e.secrets {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	if len(s) <= limit {
		return s
	}
	// Every secret is already cut out of the whole text, so the cut only
	// has to keep the last rune whole.
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// What follows converts the SDK's metricdata to OTLP protobuf, field for
// field as the official exporter's internal/transform does; the
// differential test holds the two together.

func otlpResourceMetrics(rm *metricdata.ResourceMetrics) (*mpb.ResourceMetrics, error) {
	var errs []error
	out := &mpb.ResourceMetrics{
		Resource:     &rpb.Resource{Attributes: otlpAttrs(rm.Resource.Iter())},
		SchemaUrl:    rm.Resource.SchemaURL(),
		ScopeMetrics: make([]*mpb.ScopeMetrics, 0, len(rm.ScopeMetrics)),
	}
	for _, sm := range rm.ScopeMetrics {
		ms := make([]*mpb.Metric, 0, len(sm.Metrics))
		for _, m := range sm.Metrics {
			pm, err := otlpMetric(m)
			if err != nil {
				errs = append(errs, fmt.Errorf("otlp: metric %q not sent: %w", m.Name, err))
				continue
			}
			ms = append(ms, pm)
		}
		out.ScopeMetrics = append(out.ScopeMetrics, &mpb.ScopeMetrics{
			Scope: &cpb.InstrumentationScope{
				Name:       sm.Scope.Name,
				Version:    sm.Scope.Version,
				Attributes: otlpAttrs(sm.Scope.Attributes.Iter()),
			},
			Metrics:   ms,
			SchemaUrl: sm.Scope.SchemaURL,
		})
	}
	return out, errors.Join(errs...)
}

func otlpMetric(m metricdata.Metrics) (*mpb.Metric, error) {
	out := &mpb.Metric{Name: m.Name, Description: m.Description, Unit: m.Unit}
	var err error
	switch d := m.Data.(type) {
	case metricdata.Gauge[int64]:
		out.Data = &mpb.Metric_Gauge{Gauge: &mpb.Gauge{DataPoints: otlpNumbers(d.DataPoints)}}
	case metricdata.Gauge[float64]:
		out.Data = &mpb.Metric_Gauge{Gauge: &mpb.Gauge{DataPoints: otlpNumbers(d.DataPoints)}}
	case metricdata.Sum[int64]:
		out.Data, err = otlpSum(d)
	case metricdata.Sum[float64]:
		out.Data, err = otlpSum(d)
	case metricdata.Histogram[int64]:
		out.Data, err = otlpHistogram(d)
	case metricdata.Histogram[float64]:
		out.Data, err = otlpHistogram(d)
	case metricdata.ExponentialHistogram[int64]:
		out.Data, err = otlpExpHistogram(d)
	case metricdata.ExponentialHistogram[float64]:
		out.Data, err = otlpExpHistogram(d)
	case metricdata.Summary: // only from bridges, but cheap to carry
		out.Data = &mpb.Metric_Summary{Summary: otlpSummary(d)}
	default:
		err = fmt.Errorf("unknown aggregation %T", d)
	}
	return out, err
}

func otlpTemporality(t metricdata.Temporality) (mpb.AggregationTemporality, error) {
	switch t {
	case metricdata.DeltaTemporality:
		return mpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, nil
	case metricdata.CumulativeTemporality:
		return mpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, nil
	}
	return 0, fmt.Errorf("unknown temporality %s", t)
}

func otlpSum[N int64 | float64](s metricdata.Sum[N]) (*mpb.Metric_Sum, error) {
	t, err := otlpTemporality(s.Temporality)
	if err != nil {
		return nil, err
	}
	return &mpb.Metric_Sum{Sum: &mpb.Sum{
		AggregationTemporality: t,
		IsMonotonic:            s.IsMonotonic,
		DataPoints:             otlpNumbers(s.DataPoints),
	}}, nil
}

func otlpNumbers[N int64 | float64](dps []metricdata.DataPoint[N]) []*mpb.NumberDataPoint {
	out := make([]*mpb.NumberDataPoint, 0, len(dps))
	for _, dp := range dps {
		p := &mpb.NumberDataPoint{
			Attributes:        otlpAttrs(dp.Attributes.Iter()),
			StartTimeUnixNano: unixNano(dp.StartTime),
			TimeUnixNano:      unixNano(dp.Time),
			Exemplars:         otlpExemplars(dp.Exemplars),
		}
		switch v := any(dp.Value).(type) {
		case int64:
			p.Value = &mpb.NumberDataPoint_AsInt{AsInt: v}
		case float64:
			p.Value = &mpb.NumberDataPoint_AsDouble{AsDouble: v}
		}
		out = append(out, p)
	}
	return out
}

func otlpHistogram[N int64 | float64](h metricdata.Histogram[N]) (*mpb.Metric_Histogram, error) {
	t, err := otlpTemporality(h.Temporality)
	if err != nil {
		return nil, err
	}
	dps := make([]*mpb.HistogramDataPoint, 0, len(h.DataPoints))
	for _, dp := range h.DataPoints {
		dps = append(dps, &mpb.HistogramDataPoint{
			Attributes:        otlpAttrs(dp.Attributes.Iter()),
			StartTimeUnixNano: unixNano(dp.StartTime),
			TimeUnixNano:      unixNano(dp.Time),
			Count:             dp.Count,
			Sum:               proto.Float64(float64(dp.Sum)),
			BucketCounts:      dp.BucketCounts,
			ExplicitBounds:    dp.Bounds,
			Exemplars:         otlpExemplars(dp.Exemplars),
			Min:               extremum(dp.Min),
			Max:               extremum(dp.Max),
		})
	}
	return &mpb.Metric_Histogram{Histogram: &mpb.Histogram{AggregationTemporality: t, DataPoints: dps}}, nil
}

func otlpExpHistogram[N int64 | float64](h metricdata.ExponentialHistogram[N]) (*mpb.Metric_ExponentialHistogram, error) {
	t, err := otlpTemporality(h.Temporality)
	if err != nil {
		return nil, err
	}
	dps := make([]*mpb.ExponentialHistogramDataPoint, 0, len(h.DataPoints))
	for _, dp := range h.DataPoints {
		dps = append(dps, &mpb.ExponentialHistogramDataPoint{
			Attributes:        otlpAttrs(dp.Attributes.Iter()),
			StartTimeUnixNano: unixNano(dp.StartTime),
			TimeUnixNano:      unixNano(dp.Time),
			Count:             dp.Count,
			Sum:               proto.Float64(float64(dp.Sum)),
			Scale:             dp.Scale,
			ZeroCount:         dp.ZeroCount,
			ZeroThreshold:     dp.ZeroThreshold,
			Positive:          &mpb.ExponentialHistogramDataPoint_Buckets{Offset: dp.PositiveBucket.Offset, BucketCounts: dp.PositiveBucket.Counts},
			Negative:          &mpb.ExponentialHistogramDataPoint_Buckets{Offset: dp.NegativeBucket.Offset, BucketCounts: dp.NegativeBucket.Counts},
			Exemplars:         otlpExemplars(dp.Exemplars),
			Min:               extremum(dp.Min),
			Max:               extremum(dp.Max),
		})
	}
	return &mpb.Metric_ExponentialHistogram{ExponentialHistogram: &mpb.ExponentialHistogram{AggregationTemporality: t, DataPoints: dps}}, nil
}

func otlpSummary(s metricdata.Summary) *mpb.Summary {
	dps := make([]*mpb.SummaryDataPoint, 0, len(s.DataPoints))
	for _, dp := range s.DataPoints {
		qs := make([]*mpb.SummaryDataPoint_ValueAtQuantile, 0, len(dp.QuantileValues))
		for _, q := range dp.QuantileValues {
			qs = append(qs, &mpb.SummaryDataPoint_ValueAtQuantile{Quantile: q.Quantile, Value: q.Value})
		}
		dps = append(dps, &mpb.SummaryDataPoint{
			Attributes:        otlpAttrs(dp.Attributes.Iter()),
			StartTimeUnixNano: unixNano(dp.StartTime),
			TimeUnixNano:      unixNano(dp.Time),
			Count:             dp.Count,
			Sum:               dp.Sum,
			QuantileValues:    qs,
		})
	}
	return &mpb.Summary{DataPoints: dps}
}

// extremum is nil when the SDK recorded no min or max (NoMinMax, or no
// measurements), so the optional field stays absent on the wire.
func extremum[N int64 | float64](x metricdata.Extrema[N]) *float64 {
	if v, ok := x.Value(); ok {
		return proto.Float64(float64(v))
	}
	return nil
}

func otlpExemplars[N int64 | float64](exs []metricdata.Exemplar[N]) []*mpb.Exemplar {
	out := make([]*mpb.Exemplar, 0, len(exs))
	for _, ex := range exs {
		p := &mpb.Exemplar{
			FilteredAttributes: otlpKeyValues(ex.FilteredAttributes),
			TimeUnixNano:       unixNano(ex.Time),
			SpanId:             ex.SpanID,
			TraceId:            ex.TraceID,
		}
		switch v := any(ex.Value).(type) {
		case int64:
			p.Value = &mpb.Exemplar_AsInt{AsInt: v}
		case float64:
			p.Value = &mpb.Exemplar_AsDouble{AsDouble: v}
		}
		out = append(out, p)
	}
	return out
}

// unixNano sends the zero time, which the SDK leaves where it has no
// value, and anything before 1970 as 0 rather than a wrapped uint64.
func unixNano(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(max(0, t.UnixNano()))
}

func otlpAttrs(it attribute.Iterator) []*cpb.KeyValue {
	if it.Len() == 0 {
		return nil
	}
	out := make([]*cpb.KeyValue, 0, it.Len())
	for it.Next() {
		kv := it.Attribute()
		out = append(out, &cpb.KeyValue{Key: string(kv.Key), Value: otlpValue(kv.Value)})
	}
	return out
}

func otlpKeyValues(kvs []attribute.KeyValue) []*cpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]*cpb.KeyValue, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, &cpb.KeyValue{Key: string(kv.Key), Value: otlpValue(kv.Value)})
	}
	return out
}

func otlpValue(v attribute.Value) *cpb.AnyValue {
	av := &cpb.AnyValue{}
	switch v.Type() {
	case attribute.EMPTY:
	case attribute.BOOL:
		av.Value = &cpb.AnyValue_BoolValue{BoolValue: v.AsBool()}
	case attribute.INT64:
		av.Value = &cpb.AnyValue_IntValue{IntValue: v.AsInt64()}
	case attribute.FLOAT64:
		av.Value = &cpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}
	case attribute.STRING:
		av.Value = &cpb.AnyValue_StringValue{StringValue: v.AsString()}
	case attribute.BYTESLICE:
		av.Value = &cpb.AnyValue_BytesValue{BytesValue: v.AsByteSlice()}
	case attribute.BOOLSLICE:
		av.Value = otlpArray(v.AsBoolSlice(), func(b bool) *cpb.AnyValue {
			return &cpb.AnyValue{Value: &cpb.AnyValue_BoolValue{BoolValue: b}}
		})
	case attribute.INT64SLICE:
		av.Value = otlpArray(v.AsInt64Slice(), func(i int64) *cpb.AnyValue {
			return &cpb.AnyValue{Value: &cpb.AnyValue_IntValue{IntValue: i}}
		})
	case attribute.FLOAT64SLICE:
		av.Value = otlpArray(v.AsFloat64Slice(), func(f float64) *cpb.AnyValue {
			return &cpb.AnyValue{Value: &cpb.AnyValue_DoubleValue{DoubleValue: f}}
		})
	case attribute.STRINGSLICE:
		av.Value = otlpArray(v.AsStringSlice(), func(s string) *cpb.AnyValue {
			return &cpb.AnyValue{Value: &cpb.AnyValue_StringValue{StringValue: s}}
		})
	case attribute.SLICE:
		av.Value = otlpArray(v.AsSlice(), otlpValue)
	case attribute.MAP:
		av.Value = &cpb.AnyValue_KvlistValue{KvlistValue: &cpb.KeyValueList{Values: otlpKeyValues(v.AsMap())}}
	default:
		// A type newer than this code: say so rather than drop the key,
		// which is what the official exporter does too.
		av.Value = &cpb.AnyValue_StringValue{StringValue: "INVALID"}
	}
	return av
}

func otlpArray[T any](vs []T, conv func(T) *cpb.AnyValue) *cpb.AnyValue_ArrayValue {
	out := make([]*cpb.AnyValue, len(vs))
	for i, v := range vs {
		out[i] = conv(v)
	}
	return &cpb.AnyValue_ArrayValue{ArrayValue: &cpb.ArrayValue{Values: out}}
}
