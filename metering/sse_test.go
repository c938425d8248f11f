package metering

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// framesOf runs a Framer over chunks and renders every frame, then the
// Flush result, one per line.
func framesOf(maxEventBytes int, chunks [][]byte) []string {
	f := NewFramer(maxEventBytes)
	var out []string
	for _, c := range chunks {
		for len(c) > 0 {
			n, ok := f.Next(c)
			if ok {
				out = append(out, renderFrame(f.Frame()))
			}
			c = c[n:]
		}
	}
	if fr, ok := f.Flush(); ok {
		out = append(out, "flush "+renderFrame(fr))
	}
	return out
}

func renderFrame(fr Frame) string {
	return fmt.Sprintf("event=%q data=%q has=%v overflow=%v", fr.Event, fr.Data, fr.HasData, fr.Overflow)
}

// splitChunks cuts b into pieces whose sizes come from seed: mostly tiny,
// sometimes a few hundred bytes, so every boundary (inside "\r\n", inside a
// field name, on a blank line) gets hit.
func splitChunks(b []byte, seed uint64) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out [][]byte
	for len(b) > 0 {
		n := 1 + r.IntN(8)
		if r.IntN(4) == 0 {
			n = 1 + r.IntN(400)
		}
		n = min(n, len(b))
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

func oneChunk(b []byte) [][]byte { return [][]byte{b} }

func byteChunks(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func TestFramer(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want []string
	}{
		{
			name: "LFLineEnds",
			in:   "event: a\ndata: {\"x\":1}\n\ndata: 2\n\n",
			want: []string{`event="a" data="{\"x\":1}" has=true overflow=false`, `event="" data="2" has=true overflow=false`},
		},
		{
			name: "CRLFLineEnds",
			in:   "event: a\r\ndata: {\"x\":1}\r\n\r\ndata: 2\r\n\r\n",
			want: []string{`event="a" data="{\"x\":1}" has=true overflow=false`, `event="" data="2" has=true overflow=false`},
		},
		{
			name: "CRLineEnds",
			in:   "event: a\rdata: {\"x\":1}\r\rdata: 2\r\r",
			want: []string{`event="a" data="{\"x\":1}" has=true overflow=false`, `event="" data="2" has=true overflow=false`},
		},
		{
			name: "MultiLineDataJoinedWithLF",
			in:   "data: a\ndata:b\ndata:  c\ndata\n\n",
			want: []string{`event="" data="a\nb\n c\n" has=true overflow=false`},
		},
		{
			name: "CommentFrameHasNoData",
			in:   ": ping\n\n:\n\ndata: x\n: inline comment\n\n",
			want: []string{`event="" data="" has=false overflow=false`, `event="" data="" has=false overflow=false`, `event="" data="x" has=true overflow=false`},
		},
		{
			name: "UnknownFieldsIgnored",
			in:   "id: 7\nretry: 100\nverylongfieldname: data: no\ndata: yes\n\n",
			want: []string{`event="" data="yes" has=true overflow=false`},
		},
		{
			name: "EmptyDataLineStillDispatches",
			in:   "data:\n\n",
			want: []string{`event="" data="" has=true overflow=false`},
		},
		{
			name: "OverflowSkipsOnlyThatEvent",
			in:   "data: 0123456789\n\ndata: 01234567\n\n",
			max:  8,
			want: []string{`event="" data="" has=true overflow=true`, `event="" data="01234567" has=true overflow=false`},
		},
		{
			name: "OverflowAcrossDataLines",
			in:   "data: 01234\ndata: 567\n\n",
			max:  8,
			want: []string{`event="" data="" has=true overflow=true`},
		},
		{
			name: "EventNameOverBoundDropped",
			in:   "event: " + strings.Repeat("e", maxEventNameBytes+1) + "\ndata: 1\n\n",
			want: []string{`event="" data="1" has=true overflow=false`},
		},
		{
			name: "FlushReportsCompleteLinesOnly",
			in:   "data: {\"a\":1}\ndata: {\"b\":",
			want: []string{`flush event="" data="{\"a\":1}" has=true overflow=false`},
		},
		{
			name: "FlushIgnoresPartialLine",
			in:   "data: {\"usage\":{\"output_tokens\":12",
			want: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			for _, split := range []struct {
				name   string
				chunks [][]byte
			}{{"OneRead", oneChunk(in)}, {"ByteByByte", byteChunks(in)}, {"Random", splitChunks(in, 7)}} {
				got := framesOf(tc.max, split.chunks)
				if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
					t.Errorf("%s: got\n%s\nwant\n%s", split.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
				}
			}
		})
	}
}

func TestFramerReleasesLargeBuffer(t *testing.T) {
	f := NewFramer(0)
	big := "data: " + strings.Repeat("x", 2*maxIdleBufferBytes) + "\n\n"
	if n, ok := f.Next([]byte(big)); !ok || n != len(big) {
		t.Fatalf("Next = %d, %v", n, ok)
	}
	if len(f.Frame().Data) != 2*maxIdleBufferBytes {
		t.Fatalf("data length %d", len(f.Frame().Data))
	}
	if cap(f.data) != 0 {
		t.Errorf("buffer of %d bytes kept after a large event", cap(f.data))
	}
}

// FuzzFramer: any split of a stream gives the same frames as one read, with
// and without a tiny bound, and nothing panics.
func FuzzFramer(f *testing.F) {
	for _, g := range mustTranscripts(f) {
		f.Add(g.data, uint64(len(g.data)))
	}
	f.Add([]byte("data: a\r"), uint64(1))
	f.Add([]byte("data: a\r\n\r\ndata: b\r\r\n"), uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		for _, bound := range []int{0, 16} {
			want := framesOf(bound, oneChunk(data))
			got := framesOf(bound, splitChunks(data, seed))
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("bound %d: split frames differ\n got: %q\nwant: %q", bound, got, want)
			}
			fr := NewFramer(bound)
			for p := data; len(p) > 0; {
				n, ok := fr.Next(p)
				if ok && fr.max > 0 && len(fr.Frame().Data) > fr.max {
					t.Fatalf("bound %d: frame of %d bytes kept", bound, len(fr.Frame().Data))
				}
				p = p[n:]
			}
		}
	})
}
