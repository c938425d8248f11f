package upstreamtest

import (
	"bytes"
	"strings"
	"testing"
)

// chatChunks returns the decoded chunks of a Chat stream, [DONE] excluded,
// after checking that [DONE] ends it.
func chatChunks(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	evs := parseSSE(t, body)
	if len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]: %q", tail(body))
	}
	var out []map[string]any
	for _, ev := range evs[:len(evs)-1] {
		out = append(out, obj(t, ev.data))
	}
	return out
}

func TestChatStreamUsage(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cfg          Config
		includeUsage bool
		// usageAt is the index from the end (before [DONE]) of the chunk
		// carrying usage; 0 means none does.
		usageAt      int
		choicesEmpty bool
		nullUsageKey bool // every other chunk has "usage": null
	}{
		{name: "UsageChunkWhenRequested", includeUsage: true, usageAt: 1, choicesEmpty: true, nullUsageKey: true},
		{name: "NoUsageWhenNotRequested", usageAt: 0, nullUsageKey: true},
		{name: "UsageOnFinishChunk", cfg: Config{UsageOnFinishChunk: true}, includeUsage: true, usageAt: 1, nullUsageKey: true},
		{name: "NullUsageAbsentWhenNotRequested", cfg: Config{NullUsageOnlyOnRequest: true}, usageAt: 0},
		{name: "NullUsagePresentWhenRequested", cfg: Config{NullUsageOnlyOnRequest: true}, includeUsage: true, usageAt: 1, choicesEmpty: true, nullUsageKey: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, base := MustStart(t, tc.cfg)
			_, body := do(t, base, call{dialect: OpenAIChat, stream: true, includeUsage: tc.includeUsage})
			chunks := chatChunks(t, body)
			withUsage := -1
			for i, c := range chunks {
				u, present := c["usage"]
				switch {
				case u != nil:
					if withUsage >= 0 {
						t.Errorf("chunks %d and %d both carry usage", withUsage, i)
					}
					withUsage = i
				case present != tc.nullUsageKey:
					t.Errorf("chunk %d: usage key present=%v, want %v", i, present, tc.nullUsageKey)
				}
			}
			if tc.usageAt == 0 {
				if withUsage >= 0 {
					t.Fatalf("chunk %d carries usage that was not requested", withUsage)
				}
				return
			}
			if withUsage != len(chunks)-tc.usageAt {
				t.Fatalf("usage on chunk %d of %d, want the last", withUsage, len(chunks))
			}
			choices, _ := chunks[withUsage]["choices"].([]any)
			if tc.choicesEmpty != (len(choices) == 0) {
				t.Errorf("usage chunk has %d choices, want empty=%v", len(choices), tc.choicesEmpty)
			}
			if !tc.choicesEmpty && str(choices[0], "finish_reason") != "stop" {
				t.Errorf("usage rides on a chunk without finish_reason: %v", choices[0])
			}
			got, _ := extractUsage(t, OpenAIChat, true, body)
			if want := DefaultUsage.Normalised(OpenAIChat); got != want {
				t.Errorf("usage = %+v, want %+v", got, want)
			}
		})
	}
}

// A proxy that injects include_usage and drops the usage-only chunk must be
// able to hand the client exactly the bytes it would have had without it.
func TestChatStreamWithoutIncludeUsageIsTheSameStreamLessTheUsageChunk(t *testing.T) {
	_, base := MustStart(t, Config{})
	_, with := do(t, base, call{dialect: OpenAIChat, stream: true, includeUsage: true})
	_, without := do(t, base, call{dialect: OpenAIChat, stream: true})
	var kept [][]byte
	for ev := range strings.SplitAfterSeq(string(with), "\n\n") {
		if strings.Contains(ev, `"choices":[]`) {
			continue
		}
		kept = append(kept, []byte(ev))
	}
	if got := bytes.Join(kept, nil); !bytes.Equal(got, without) {
		t.Errorf("streams differ beyond the usage chunk:\nwith, less usage: %s\nwithout: %s", got, without)
	}
}
