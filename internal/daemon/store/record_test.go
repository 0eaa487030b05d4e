package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/errdefs"
)

func TestDecodeRefusesUnknownAndTrailing(t *testing.T) {
	good := mustJSON(t, newSandbox("sb1", "py", "b1"))
	tests := []struct {
		name string
		data string
		want string
	}{
		{"unknown field", strings.Replace(string(good), `"id"`, `"colour":"red","id"`, 1), `unknown field "colour"`},
		{"trailing", string(good) + `{}`, "trailing data"},
		{"not json", "\x00\x01", "invalid character"},
		{"empty", "", "EOF"},
		{"bad state", strings.Replace(string(good), `"creating"`, `"zombie"`, 1), `unknown state "zombie"`},
		{"relative dir", strings.Replace(string(good), `"/var/lib/thaw/sandboxes/sb1"`, `"sb1"`, 1), "not an absolute path"},
	}
	for _, tt := range tests {
		_, err := decodeSandbox([]byte("sb1"), []byte(tt.data))
		if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"sb1"`) {
			t.Errorf("%s: got %v, want ErrCorrupt naming key \"sb1\" and containing %q", tt.name, err, tt.want)
		}
	}
}

// FuzzDecodeSandbox: any bytes under any key decode to a valid record that
// round-trips, or to an ErrCorrupt error naming the key; never a panic.
func FuzzDecodeSandbox(f *testing.F) {
	sb := newSandbox("sb1", "py", "b1")
	f.Add("sb1", string(mustJSONf(f, sb)))
	sb.State, sb.Shim, sb.TTL, sb.ExpiresAt = Running, liveShim, time.Minute, t0
	sb.Create = []Phase{{"slot", 1}, {"load", 2}}
	f.Add("sb1", string(mustJSONf(f, sb)))
	f.Add("x", `{"id":"x","state":"failed"}`)
	f.Add("sb1", `{"id":"sb1","create":[{"name":"","duration_ns":-1}]}`)
	f.Add("build-1", `null`)
	f.Fuzz(func(t *testing.T, key, data string) {
		got, err := decodeSandbox([]byte(key), []byte(data))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", key)) {
				t.Fatalf("error %v does not name key %q", err, key)
			}
			return
		}
		if got.ID != key || strings.HasPrefix(key, EphemeralPrefix) {
			t.Fatalf("decoded id %q under key %q", got.ID, key)
		}
		again, err := decodeSandbox([]byte(key), mustJSON(t, got))
		if err != nil {
			t.Fatalf("re-decoding a valid record: %v", err)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", got, again)
		}
	})
}

// FuzzDecodeTemplate is FuzzDecodeSandbox for template records.
func FuzzDecodeTemplate(f *testing.F) {
	b2 := readyBuild("b2")
	b2.State, b2.Reason = BuildFailed, "step 3 exited 1"
	f.Add("py", string(mustJSONf(f, newTemplate("py", readyBuild("b1"), b2))))
	b3 := readyBuild("b3")
	b3.Warmup = [][]string{{"python3", "-c", "pass"}, {"true"}}
	f.Add("py", string(mustJSONf(f, newTemplate("py", b3))))
	f.Add("py", `{"name":"py","builds":[{"id":"b1","state":"ready","warmup":[[]]}]}`)
	f.Add("py", `{"name":"py","builds":[{"id":"b1"},{"id":"b1"}]}`)
	f.Add("py", `{"name":"py","current":"b9","spec":[1,2}`)
	f.Fuzz(func(t *testing.T, key, data string) {
		got, err := decodeTemplate([]byte(key), []byte(data))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", key)) {
				t.Fatalf("error %v does not name key %q", err, key)
			}
			return
		}
		again, err := decodeTemplate([]byte(key), mustJSON(t, got))
		if err != nil {
			t.Fatalf("re-decoding a valid record: %v", err)
		}
		// Spec is kept verbatim, so compare it as JSON text after compaction.
		if !reflect.DeepEqual(again.Builds, got.Builds) || again.Current != got.Current || !jsonEqual(again.Spec, got.Spec) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", got, again)
		}
	})
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func mustJSONf(f *testing.F, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// TestBuildWarmup checks the warm-up commands a build record may hold.
func TestBuildWarmup(t *testing.T) {
	long := make([]string, MaxWarmupArgs+1)
	for i := range long {
		long[i] = "x"
	}
	many := make([][]string, MaxWarmupCommands+1)
	for i := range many {
		many[i] = []string{"true"}
	}
	for _, tc := range []struct {
		name   string
		edit   func(b *Build)
		errHas string // "" means valid
	}{
		{"none", func(b *Build) {}, ""},
		{"argv", func(b *Build) { b.Warmup = [][]string{{"python3", "-c", "pass"}, {"/bin/true"}} }, ""},
		{"empty command", func(b *Build) { b.Warmup = [][]string{{"true"}, {}} }, "warmup[1] is empty"},
		{"empty program", func(b *Build) { b.Warmup = [][]string{{"", "x"}} }, "warmup[0][0] is empty"},
		{"NUL", func(b *Build) { b.Warmup = [][]string{{"sh", "-c", "a\x00b"}} }, "warmup[0][2] contains a NUL"},
		{"too many args", func(b *Build) { b.Warmup = [][]string{long} }, "arguments: want at most"},
		{"too many bytes", func(b *Build) { b.Warmup = [][]string{{"echo", strings.Repeat("y", MaxWarmupBytes)}} }, "bytes of arguments"},
		{"too many commands", func(b *Build) { b.Warmup = many }, "want at most 64"},
		{"serial ready check", func(b *Build) {
			b.Warmup = [][]string{{"true"}}
			b.Ready = ReadyCheck{Kind: ReadySerial, Marker: "up"}
		}, "need the agent ready check"},
		{"no access log", func(b *Build) {
			b.Warmup = [][]string{{"true"}}
			b.Artifacts.AccessLog, b.AccessLogPages = "", 0
		}, "a recording run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := readyBuild("b1")
			tc.edit(&b)
			err := b.Validate()
			switch {
			case tc.errHas == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
				t.Errorf("got %v, want an error containing %q", err, tc.errHas)
			case tc.errHas != "" && !errdefs.IsInvalidArgument(err):
				t.Errorf("got %v, want invalid argument", err)
			}
		})
	}
}
