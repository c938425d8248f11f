package main

// The OTLP push is the official exporter, otlpmetrichttp or, with
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc, otlpmetricgrpc (the HTTP one links
// gRPC anyway, so the second transport costs little). What tollgate adds
// is in front of it and behind it: every OTEL_EXPORTER_OTLP_* value is
// checked before startup rather than logged and skipped, and every error
// it returns has the collector credentials cut out before the SDK logs it.

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/credentials"
)

// otlpConfig is the push as the environment asks for it, every value
// already checked. It is handed to the exporter as explicit options, so
// what was checked is what is used.
type otlpConfig struct {
	grpc        bool
	target      *url.URL // never printed whole: an operator may have put a key in it
	header      map[string]string
	secrets     []string // header values and their parts, squeezed, longest first
	gzip        bool
	timeout     time.Duration
	tls         *tls.Config
	temporality sdkmetric.TemporalitySelector
}

// otlpConfigFromEnv reads the standard variables. Unlike the official
// exporter, which logs a bad value and carries on without it, every bad
// value is a startup error naming its variable: a push that silently goes
// to the wrong place or in the wrong shape is found much later than a proxy
// that refuses to start.
func otlpConfigFromEnv() (*otlpConfig, error) {
	c := &otlpConfig{timeout: 10 * time.Second, temporality: sdkmetric.CumulativeTemporalitySelector}
	switch name, v := otlpEnv("PROTOCOL"); v {
	case "", "http/protobuf":
	case "grpc":
		c.grpc = true
	default: // http/json: the official exporters have no JSON encoder
		return nil, fmt.Errorf("%s=%q: want http/protobuf or grpc", name, v)
	}
	target, err := otlpTarget(c.grpc)
	if err != nil {
		return nil, err
	}
	c.target = target
	if c.header, c.secrets, err = otlpHeaders(); err != nil {
		return nil, err
	}
	switch name, v := otlpEnv("COMPRESSION"); strings.ToLower(v) {
	case "", "none":
	case "gzip":
		c.gzip = true
	default:
		return nil, fmt.Errorf("%s=%q: want gzip or none", name, v)
	}
	const tempVar = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
	switch v := strings.TrimSpace(os.Getenv(tempVar)); strings.ToLower(v) {
	case "", "cumulative":
	case "delta":
		c.temporality = sdkmetric.DeltaTemporalitySelector
	case "lowmemory":
		c.temporality = sdkmetric.LowMemoryTemporalitySelector
	default:
		return nil, fmt.Errorf("%s=%q: want cumulative, delta or lowmemory", tempVar, v)
	}
	// The exporter reads this one itself; it is only checked here.
	const aggVar = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
	switch v := strings.TrimSpace(os.Getenv(aggVar)); strings.ToLower(v) {
	case "", "explicit_bucket_histogram", "base2_exponential_bucket_histogram":
	default:
		return nil, fmt.Errorf("%s=%q: want explicit_bucket_histogram or base2_exponential_bucket_histogram", aggVar, v)
	}
	if name, v := otlpEnv("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("%s=%q: want a positive number of milliseconds", name, v)
		}
		c.timeout = time.Duration(ms) * time.Millisecond
	}
	tlsCfg, tlsVar, err := otlpTLS()
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil && target.Scheme == "http" {
		return nil, fmt.Errorf("%s is set but the OTLP endpoint is http://; use an https:// endpoint or unset it", tlsVar)
	}
	c.tls = tlsCfg
	return c, nil
}

// otlpRetry is the backoff between attempts at one export; the zero value
// is the official exporters' default (5 s growing to 30 s, for 1 min).
type otlpRetry struct{ initial, max, elapsed time.Duration }

// newOTLPExporter builds the exporter the environment asks for.
func newOTLPExporter(ctx context.Context, retry otlpRetry) (*otlpExporter, error) {
	c, err := otlpConfigFromEnv()
	if err != nil {
		return nil, err
	}
	var exp sdkmetric.Exporter
	if c.grpc {
		exp, err = newOTLPGRPC(ctx, c, retry)
	} else {
		exp, err = newOTLPHTTP(ctx, c, retry)
	}
	if err != nil {
		return nil, err
	}
	return &otlpExporter{Exporter: exp, secrets: c.secrets}, nil
}

func newOTLPHTTP(ctx context.Context, c *otlpConfig, retry otlpRetry) (sdkmetric.Exporter, error) {
	compression := otlpmetrichttp.NoCompression
	if c.gzip {
		compression = otlpmetrichttp.GzipCompression
	}
	opts := []otlpmetrichttp.Option{
		otlpmetrichttp.WithEndpointURL(c.target.String()),
		otlpmetrichttp.WithHeaders(c.header),
		otlpmetrichttp.WithCompression(compression),
		otlpmetrichttp.WithTimeout(c.timeout),
		otlpmetrichttp.WithTemporalitySelector(c.temporality),
	}
	if c.tls != nil {
		opts = append(opts, otlpmetrichttp.WithTLSClientConfig(c.tls))
	}
	if retry != (otlpRetry{}) {
		opts = append(opts, otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{
			Enabled: true, InitialInterval: retry.initial, MaxInterval: retry.max, MaxElapsedTime: retry.elapsed,
		}))
	}
	return otlpmetrichttp.New(ctx, opts...)
}

func newOTLPGRPC(ctx context.Context, c *otlpConfig, retry otlpRetry) (sdkmetric.Exporter, error) {
	header := maps.Clone(c.header)
	delete(header, "User-Agent") // gRPC sets its own, from the exporter
	opts := []otlpmetricgrpc.Option{
		otlpmetricgrpc.WithEndpointURL(c.target.String()),
		otlpmetricgrpc.WithHeaders(header),
		otlpmetricgrpc.WithTimeout(c.timeout),
		otlpmetricgrpc.WithTemporalitySelector(c.temporality),
	}
	if c.gzip {
		opts = append(opts, otlpmetricgrpc.WithCompressor("gzip"))
	}
	if c.tls != nil {
		opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(c.tls)))
	}
	if retry != (otlpRetry{}) {
		opts = append(opts, otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{
			Enabled: true, InitialInterval: retry.initial, MaxInterval: retry.max, MaxElapsedTime: retry.elapsed,
		}))
	}
	return otlpmetricgrpc.New(ctx, opts...)
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

// otlpTarget follows the OTLP spec: over HTTP the metrics-specific
// endpoint is used as is and the generic one is a base that /v1/metrics is
// appended to; over gRPC either names the collector and nothing more.
func otlpTarget(grpc bool) (*url.URL, error) {
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
	// The exporter sends scheme, host and path only: a tenant or key in
	// the query would silently not arrive.
	if u.RawQuery != "" || u.ForceQuery {
		return nil, fmt.Errorf("%s has a query string, which the OTLP exporter does not send; send it with OTEL_EXPORTER_OTLP_HEADERS instead", name)
	}
	u.Fragment, u.RawFragment = "", ""
	switch {
	case grpc && u.Path != "" && u.Path != "/":
		// gRPC has no path to send it to: a path set here is a mistake,
		// most likely an HTTP endpoint with the wrong protocol.
		return nil, fmt.Errorf("%s has a path, which OTLP over gRPC has no use for; give scheme, host and port (https://collector:4317) or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", name)
	case grpc:
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
func otlpHeaders() (map[string]string, []string, error) {
	h := map[string]string{"User-Agent": "tollgate/" + version + " (OTLP/HTTP protobuf metrics)"}
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
		h[k] = v
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
	return h, slices.Compact(secrets), nil
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

// otlpExporter is the official exporter with its errors redacted. Those
// quote the collector's reply, and collectors sometimes echo the headers
// they were sent; the periodic reader hands the error to otel.Handle,
// which logs it.
type otlpExporter struct {
	sdkmetric.Exporter
	secrets []string
}

func (e *otlpExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	return e.redact(e.Exporter.Export(ctx, rm))
}

// ForceFlush and Shutdown are redacted too: on shutdown the reader's last
// export fails through them.
func (e *otlpExporter) ForceFlush(ctx context.Context) error {
	return e.redact(e.Exporter.ForceFlush(ctx))
}

func (e *otlpExporter) Shutdown(ctx context.Context) error {
	return e.redact(e.Exporter.Shutdown(ctx))
}

func (e *otlpExporter) redact(err error) error {
	if err == nil {
		return nil
	}
	return &otlpError{msg: e.sanitize(err.Error()), err: err}
}

// otlpError keeps the exporter's error for errors.Is and errors.As; only
// its text is replaced.
type otlpError struct {
	msg string
	err error
}

func (e *otlpError) Error() string { return e.msg }
func (e *otlpError) Unwrap() error { return e.err }

// squeeze makes text printable and single-spaced: invalid UTF-8 becomes
// "?" and every run of white space or non-printables one space. sanitize
// applies it to the collector's text and otlpHeaders to the secrets, so
// the two are compared in the same form however either was spaced.
func squeeze(s string) string {
	s = strings.ToValidUTF8(s, "?")
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }), " ")
}

// otlpErrorLimit keeps an echoed payload out of the logs; the exporter's
// own words and the status come first and fit well under it.
const otlpErrorLimit = 300

// sanitize makes an error's text safe to log: header values are cut out
// and the result is short.
func (e *otlpExporter) sanitize(s string) string {
	s = squeeze(s)
	for _, secret := range e.secrets {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	if len(s) <= otlpErrorLimit {
		return s
	}
	// Every secret is already cut out of the whole text, so the cut only
	// has to keep the last rune whole.
	cut := otlpErrorLimit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
