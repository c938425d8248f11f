package upstreamtest

import (
	"errors"
	"fmt"
)

// Dialect is a wire API the fake provider speaks. The values are the dialect
// names in harnesses.yaml.
type Dialect string

// Dialects served.
const (
	// Anthropic is the Anthropic Messages API (/v1/messages).
	Anthropic Dialect = "anthropic-messages"
	// OpenAIChat is OpenAI Chat Completions (/v1/chat/completions).
	OpenAIChat Dialect = "openai-chat"
	// OpenAIResponses is the OpenAI Responses API (/v1/responses).
	OpenAIResponses Dialect = "openai-responses"
	// Gemini is Gemini generateContent (/v1beta/models/{model}:…).
	Gemini Dialect = "gemini"
)

// Usage is a response's token count in the disjoint buckets of tollgate's
// normalised record (wire-formats.md §0): Reasoning is the part of Output
// spent thinking, every other bucket is separate.
type Usage struct {
	InputUncached int64
	CacheRead     int64
	CacheWrite5m  int64
	CacheWrite1h  int64
	Output        int64
	Reasoning     int64
}

// DefaultUsage is reported when Config.Usage is zero. Every bucket is
// non-zero and distinct, so a field mapped to the wrong place shows up.
var DefaultUsage = Usage{
	InputUncached: 120,
	CacheRead:     3000,
	CacheWrite5m:  200,
	CacheWrite1h:  40,
	Output:        75,
	Reasoning:     25,
}

// InputTotal is every input token: uncached, cache reads and cache writes.
func (u Usage) InputTotal() int64 {
	return u.InputUncached + u.CacheRead + u.CacheWrite5m + u.CacheWrite1h
}

// Normalised is the usage a correct extractor records for a response of
// dialect d when the fake is configured with u.
//
// Only Anthropic reports cache writes; the OpenAI dialects and Gemini fold
// them into their prompt count, where they are billed as ordinary input, so
// InputTotal is the same in every dialect. Anthropic does not report
// reasoning apart from output, so its Reasoning is 0.
func (u Usage) Normalised(d Dialect) Usage {
	if d == Anthropic {
		u.Reasoning = 0
		return u
	}
	return Usage{
		InputUncached: u.InputUncached + u.CacheWrite5m + u.CacheWrite1h,
		CacheRead:     u.CacheRead,
		Output:        u.Output,
		Reasoning:     u.Reasoning,
	}
}

func (u Usage) validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"input uncached", u.InputUncached},
		{"cache read", u.CacheRead},
		{"cache write 5m", u.CacheWrite5m},
		{"cache write 1h", u.CacheWrite1h},
		{"output", u.Output},
		{"reasoning", u.Reasoning},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s is negative (%d)", f.name, f.v))
		}
	}
	if u.Reasoning > u.Output {
		errs = append(errs, fmt.Errorf("reasoning %d exceeds output %d, but it is part of it", u.Reasoning, u.Output))
	}
	return errors.Join(errs...)
}

// promptTokens is the OpenAI and Gemini prompt count: all input, cached or
// not, with cache writes billed as plain input.
func (u Usage) promptTokens() int64 { return u.InputTotal() }
