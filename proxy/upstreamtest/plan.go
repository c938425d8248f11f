package upstreamtest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// fault is a parsed fault list. The zero value is the happy path.
type fault struct {
	status         int // 0: none
	cut            int // -1: none
	oversized      int // 0: none
	silence        bool
	trickle        bool
	malformed      bool
	jsonForStream  bool
	midstreamError bool
	incomplete     bool
	noUsage        bool
}

// parseFault parses a comma-separated fault list (see Config.Fault).
func parseFault(s string) (fault, error) {
	f := fault{cut: -1}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, arg, hasArg := strings.Cut(item, "=")
		num := func(lo, hi int) (int, error) {
			if !hasArg {
				return 0, fmt.Errorf("%s needs =N", name)
			}
			n, err := strconv.Atoi(arg)
			if err != nil || n < lo || n > hi {
				return 0, fmt.Errorf("%s=%q is not a number in [%d, %d]", name, arg, lo, hi)
			}
			return n, nil
		}
		flag := func(b *bool) error {
			if hasArg {
				return fmt.Errorf("%s takes no value", name)
			}
			*b = true
			return nil
		}
		var err error
		switch name {
		case "status":
			f.status, err = num(400, 599)
		case "cut":
			f.cut, err = num(0, maxEvents)
		case "oversized":
			f.oversized, err = num(1, maxOversized)
		case "silence":
			err = flag(&f.silence)
		case "trickle":
			err = flag(&f.trickle)
		case "malformed":
			err = flag(&f.malformed)
		case "json-for-stream":
			err = flag(&f.jsonForStream)
		case "midstream-error":
			err = flag(&f.midstreamError)
		case "incomplete":
			err = flag(&f.incomplete)
		case "no-usage":
			err = flag(&f.noUsage)
		default:
			err = fmt.Errorf("unknown fault %q", name)
		}
		if err != nil {
			return fault{}, err
		}
	}
	return f, nil
}

// plan is what one request asked for: the config defaults overridden by its
// X-Fake-* headers.
type plan struct {
	events     int
	chunkBytes int
	gap        time.Duration
	ttfb       time.Duration
	fault      fault
}

// planFor reads the X-Fake-* headers of h over the defaults in c and f (the
// parsed c.Fault).
func planFor(h http.Header, c *Config, f fault) (plan, error) {
	p := plan{events: c.Events, chunkBytes: c.ChunkBytes, gap: c.Gap, ttfb: c.TTFB, fault: f}
	if v := h.Get(HeaderFault); v != "" {
		var err error
		if p.fault, err = parseFault(v); err != nil {
			return plan{}, fmt.Errorf("%s: %w", HeaderFault, err)
		}
	}
	if p.fault.trickle {
		p.events = trickleEvents
		if p.gap == 0 {
			p.gap = trickleGap
		}
	}
	var err error
	if v := h.Get(HeaderEvents); v != "" {
		if p.events, err = parseInt(HeaderEvents, v, maxEvents); err != nil {
			return plan{}, err
		}
	}
	if v := h.Get(HeaderChunkBytes); v != "" {
		if p.chunkBytes, err = parseInt(HeaderChunkBytes, v, maxChunkBytes); err != nil {
			return plan{}, err
		}
	}
	if v := h.Get(HeaderGap); v != "" {
		if p.gap, err = parseDelay(HeaderGap, v); err != nil {
			return plan{}, err
		}
	}
	if v := h.Get(HeaderTTFB); v != "" {
		if p.ttfb, err = parseDelay(HeaderTTFB, v); err != nil {
			return plan{}, err
		}
	}
	return p, nil
}

func parseInt(name, v string, hi int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > hi {
		return 0, fmt.Errorf("%s: %q is not a number in [0, %d]", name, v, hi)
	}
	return n, nil
}

func parseDelay(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 || d > maxDelay {
		return 0, fmt.Errorf("%s: %q is not a duration in [0, %v]", name, v, maxDelay)
	}
	return d, nil
}
