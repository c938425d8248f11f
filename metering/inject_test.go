package metering

import (
	"bytes"
	"testing"

	"github.com/tidwall/gjson"
)

func TestInjectIncludeUsage(t *testing.T) {
	for _, tc := range []struct {
		name             string
		in, want         string
		injected, client bool
	}{
		{
			name:     "AddsStreamOptionsWhenAbsent",
			in:       `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			want:     `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}`,
			injected: true,
		},
		{
			name:     "MergesIntoExistingObject",
			in:       `{"stream":true,"stream_options":{"include_obfuscation":false},"model":"gpt-4o"}`,
			want:     `{"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false},"model":"gpt-4o"}`,
			injected: true,
		},
		{
			name:     "FillsEmptyObject",
			in:       `{"stream":true,"stream_options":{ }}`,
			want:     `{"stream":true,"stream_options":{"include_usage":true }}`,
			injected: true,
		},
		{
			name:     "FlipsExplicitFalse",
			in:       `{"stream": true, "stream_options": {"include_usage": false, "x": 1}}`,
			want:     `{"stream": true, "stream_options": {"include_usage": true, "x": 1}}`,
			injected: true,
		},
		{
			name:     "FlipsNullIncludeUsage",
			in:       `{"stream":true,"stream_options":{"include_usage":null}}`,
			want:     `{"stream":true,"stream_options":{"include_usage":true}}`,
			injected: true,
		},
		{
			name:   "LeavesExplicitTrue",
			in:     `{"stream":true,"stream_options":{"include_usage":true}}`,
			want:   `{"stream":true,"stream_options":{"include_usage":true}}`,
			client: true,
		},
		{
			name:     "ReplacesNullStreamOptions",
			in:       `{"stream":true,"stream_options":null,"model":"m"}`,
			want:     `{"stream":true,"stream_options":{"include_usage":true},"model":"m"}`,
			injected: true,
		},
		{
			name: "StreamFalseUnchanged",
			in:   `{"stream":false,"model":"m"}`,
			want: `{"stream":false,"model":"m"}`,
		},
		{
			name: "StreamAbsentUnchanged",
			in:   `{"model":"m","messages":[]}`,
			want: `{"model":"m","messages":[]}`,
		},
		{
			name: "StreamStringUnchanged",
			in:   `{"stream":"true"}`,
			want: `{"stream":"true"}`,
		},
		{
			name: "NestedStreamIgnored",
			in:   `{"metadata":{"stream":true,"stream_options":null},"messages":[{"content":"\"stream\": true"}]}`,
			want: `{"metadata":{"stream":true,"stream_options":null},"messages":[{"content":"\"stream\": true"}]}`,
		},
		{
			name:     "NestedIncludeUsageNotConfused",
			in:       `{"stream":true,"tools":[{"stream_options":{"include_usage":true}}]}`,
			want:     `{"stream":true,"tools":[{"stream_options":{"include_usage":true}}],"stream_options":{"include_usage":true}}`,
			injected: true,
		},
		{
			name:     "PrettyPrintedKeepsLayout",
			in:       "{\n  \"model\": \"gpt-4o\",\n  \"stream\": true\n}\n",
			want:     "{\n  \"model\": \"gpt-4o\",\n  \"stream\": true,\"stream_options\":{\"include_usage\":true}\n}\n",
			injected: true,
		},
		{
			name:     "PrettyPrintedMerge",
			in:       "{\n\t\"stream\" : true,\n\t\"stream_options\" : {\n\t\t\"include_usage\" : false\n\t}\n}",
			want:     "{\n\t\"stream\" : true,\n\t\"stream_options\" : {\n\t\t\"include_usage\" : true\n\t}\n}",
			injected: true,
		},
		{
			name: "InvalidJSONUnchanged",
			in:   `{"stream":true,`,
			want: `{"stream":true,`,
		},
		{
			name: "NonObjectStreamOptionsUnchanged",
			in:   `{"stream":true,"stream_options":"yes"}`,
			want: `{"stream":true,"stream_options":"yes"}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, injected, client := InjectIncludeUsage([]byte(tc.in))
			if string(out) != tc.want || injected != tc.injected || client != tc.client {
				t.Errorf("got %s injected=%v client=%v\nwant %s injected=%v client=%v", out, injected, client, tc.want, tc.injected, tc.client)
			}
			if injected && !gjson.ValidBytes(out) {
				t.Errorf("output is not valid JSON: %s", out)
			}
		})
	}
}

func FuzzInjectIncludeUsage(f *testing.F) {
	f.Add([]byte(`{"stream":true}`))
	f.Add([]byte(`{"stream":true,"stream_options":{"include_usage":false}}`))
	f.Add([]byte(`{"stream":true,"stream_options":null}`))
	f.Add([]byte(" {\"stream\" :true , \"stream_options\":{} } "))
	f.Fuzz(func(t *testing.T, body []byte) {
		in := bytes.Clone(body)
		out, injected, client := InjectIncludeUsage(body)
		if !bytes.Equal(body, in) {
			t.Fatal("input modified")
		}
		if !injected {
			if !bytes.Equal(out, body) {
				t.Fatalf("changed without injecting: %q -> %q", body, out)
			}
			return
		}
		if client {
			t.Fatal("injected and clientAsked both set")
		}
		if !gjson.ValidBytes(out) || gjson.GetBytes(out, "stream_options.include_usage").Type != gjson.True {
			t.Fatalf("bad injection: %q -> %q", body, out)
		}
		if len(out)-len(body) > injectMaxGrow {
			t.Fatalf("grew by %d bytes", len(out)-len(body))
		}
	})
}

func BenchmarkInjectIncludeUsage(b *testing.B) {
	body := []byte(`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_obfuscation":false},"messages":[{"role":"system","content":"You are a coding agent."},{"role":"user","content":"Fix the failing test in metering/meter_test.go and explain the change."}],"tools":[{"type":"function","function":{"name":"read_file","parameters":{"type":"object","properties":{"path":{"type":"string"}}}}}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		InjectIncludeUsage(body)
	}
}
