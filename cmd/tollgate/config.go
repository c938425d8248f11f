package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// options are the settings shared by subcommands. Each has a flag and a
// TOLLGATE_* variable; the flag wins.
type options struct {
	// Addr is where serve listens (TOLLGATE_ADDR, default 127.0.0.1:8787).
	Addr string
	// DB is a SQLite file path or a postgres:// URL (TOLLGATE_DB, default
	// ./data/tollgate.db).
	DB string
	// Harnesses is the registry file (TOLLGATE_HARNESSES, default
	// ./harnesses.yaml).
	Harnesses string
	// Prices is a price table file; empty uses the built-in table
	// (TOLLGATE_PRICES).
	Prices string
	// MasterKey encrypts credentials at rest: 32 bytes, base64 or hex
	// (TOLLGATE_MASTER_KEY). MasterKeyFile reads it from a file instead
	// (TOLLGATE_MASTER_KEY_FILE, default ./data/master.key, created on first
	// use when neither is set, with a warning).
	MasterKey     string
	MasterKeyFile string
	// PreviousKeys are older master keys still accepted for reading, comma
	// separated, during a rotation (TOLLGATE_PREVIOUS_MASTER_KEYS).
	PreviousKeys string
	// AdminToken guards /admin/v1 (TOLLGATE_ADMIN_TOKEN); empty disables
	// the admin HTTP API (the CLI still works against the database).
	AdminToken string
	// PublicURL is tollgate's URL as workspaces reach it
	// (TOLLGATE_PUBLIC_URL, default http://<addr>).
	PublicURL string
	// Spool is the durable usage spool directory (TOLLGATE_SPOOL, default
	// ./data/spool).
	Spool string
	// AllowHTTPBaseURL lets credentials override the provider with a plain
	// http base URL, for local endpoints and tests
	// (TOLLGATE_ALLOW_HTTP_BASE_URL).
	AllowHTTPBaseURL bool
	// AllowPrivateBaseURL lets credential base URLs reach loopback and
	// private addresses, for local model servers and tests; link-local ones
	// (cloud metadata) stay refused (TOLLGATE_ALLOW_PRIVATE_BASE_URL).
	AllowPrivateBaseURL bool
	// StreamIdle ends a silent stream (TOLLGATE_STREAM_IDLE_TIMEOUT, 5m).
	StreamIdle time.Duration
	// ShutdownGrace is how long open streams may finish after SIGTERM
	// (TOLLGATE_SHUTDOWN_GRACE, 30s).
	ShutdownGrace time.Duration
	// LogLevel is debug, info, warn or error (TOLLGATE_LOG_LEVEL, info).
	LogLevel string
	// MetricLabels lists extra metric attributes (TOLLGATE_METRIC_LABELS).
	MetricLabels string
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// bind registers the shared flags on fs, with defaults from the environment.
func (o *options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Addr, "addr", envOr("TOLLGATE_ADDR", "127.0.0.1:8787"), "listen address (TOLLGATE_ADDR)")
	fs.StringVar(&o.DB, "db", envOr("TOLLGATE_DB", "./data/tollgate.db"), "SQLite file or postgres:// URL (TOLLGATE_DB)")
	fs.StringVar(&o.Harnesses, "harnesses", envOr("TOLLGATE_HARNESSES", "./harnesses.yaml"), "harness registry file (TOLLGATE_HARNESSES)")
	fs.StringVar(&o.Prices, "prices", envOr("TOLLGATE_PRICES", ""), "price table file; empty uses the built-in one (TOLLGATE_PRICES)")
	fs.StringVar(&o.MasterKey, "master-key", envOr("TOLLGATE_MASTER_KEY", ""), "32-byte master key, base64 or hex (TOLLGATE_MASTER_KEY)")
	fs.StringVar(&o.MasterKeyFile, "master-key-file", envOr("TOLLGATE_MASTER_KEY_FILE", ""), "file holding the master key (TOLLGATE_MASTER_KEY_FILE)")
	fs.StringVar(&o.PreviousKeys, "previous-master-keys", envOr("TOLLGATE_PREVIOUS_MASTER_KEYS", ""), "older master keys still accepted, comma separated (TOLLGATE_PREVIOUS_MASTER_KEYS)")
	fs.StringVar(&o.AdminToken, "admin-token", envOr("TOLLGATE_ADMIN_TOKEN", ""), "bearer token for /admin/v1 (TOLLGATE_ADMIN_TOKEN)")
	fs.StringVar(&o.PublicURL, "public-url", envOr("TOLLGATE_PUBLIC_URL", ""), "URL workspaces use to reach tollgate (TOLLGATE_PUBLIC_URL)")
	fs.StringVar(&o.Spool, "spool", envOr("TOLLGATE_SPOOL", "./data/spool"), "usage spool directory (TOLLGATE_SPOOL)")
	fs.BoolVar(&o.AllowHTTPBaseURL, "allow-http-base-url", envOr("TOLLGATE_ALLOW_HTTP_BASE_URL", "") == "true", "allow http:// credential base URLs (TOLLGATE_ALLOW_HTTP_BASE_URL)")
	fs.BoolVar(&o.AllowPrivateBaseURL, "allow-private-base-url", envOr("TOLLGATE_ALLOW_PRIVATE_BASE_URL", "") == "true", "allow credential base URLs on loopback and private addresses (TOLLGATE_ALLOW_PRIVATE_BASE_URL)")
	fs.DurationVar(&o.StreamIdle, "stream-idle-timeout", envDuration("TOLLGATE_STREAM_IDLE_TIMEOUT", 5*time.Minute), "end a stream whose provider sent, or whose client took, nothing for this long (TOLLGATE_STREAM_IDLE_TIMEOUT)")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", envDuration("TOLLGATE_SHUTDOWN_GRACE", 30*time.Second), "time open streams get after SIGTERM (TOLLGATE_SHUTDOWN_GRACE)")
	fs.StringVar(&o.LogLevel, "log-level", envOr("TOLLGATE_LOG_LEVEL", "info"), "debug, info, warn or error (TOLLGATE_LOG_LEVEL)")
	fs.StringVar(&o.MetricLabels, "metric-labels", envOr("TOLLGATE_METRIC_LABELS", ""), "extra metric labels, comma separated (TOLLGATE_METRIC_LABELS)")
}

func (o *options) logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.LogLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl}))
}

// masterKey returns the configured master key text. With neither the
// variable nor a file configured, it uses ./data/master.key beside the
// default database, creating it on first use: `make run` must work with no
// set-up, and a generated key is safer than a fixed default.
func (o *options) masterKey(log *slog.Logger) (string, error) {
	if o.MasterKey != "" {
		return o.MasterKey, nil
	}
	path := o.MasterKeyFile
	generated := false
	if path == "" {
		if strings.Contains(o.DB, "://") {
			return "", errors.New("no master key: set TOLLGATE_MASTER_KEY or TOLLGATE_MASTER_KEY_FILE")
		}
		path = filepath.Join(filepath.Dir(strings.TrimPrefix(o.DB, "sqlite:")), "master.key")
		generated = true
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && generated {
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return "", err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return "", err
		}
		enc := base64.StdEncoding.EncodeToString(k[:])
		if err := os.WriteFile(path, []byte(enc+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("write master key: %w", err)
		}
		log.Warn("generated a new master key; keep this file safe, credentials cannot be read without it", "path", path)
		return enc, nil
	}
	if err != nil {
		return "", fmt.Errorf("read master key file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
