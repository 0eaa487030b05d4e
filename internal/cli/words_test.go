package cli

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   []string
		errHas string
	}{
		{in: "python3 -c pass", want: []string{"python3", "-c", "pass"}},
		{in: "  python3\t-c   pass  ", want: []string{"python3", "-c", "pass"}},
		{in: "python3 -c 'import json; print(1)'", want: []string{"python3", "-c", "import json; print(1)"}},
		{in: `python3 -c "print('a b')"`, want: []string{"python3", "-c", "print('a b')"}},
		{in: `echo "a\"b" "c\\d" "e\f"`, want: []string{"echo", `a"b`, `c\d`, `e\f`}},
		{in: `echo a\ b \$HOME`, want: []string{"echo", "a b", "$HOME"}},
		{in: `echo '' ""`, want: []string{"echo", "", ""}},
		{in: `echo a'b'"c"d`, want: []string{"echo", "abcd"}},
		{in: "node a#b x~y", want: []string{"node", "a#b", "x~y"}},
		{in: "", errHas: "no command"},
		{in: "   ", errHas: "no command"},
		{in: "echo 'a", errHas: "unterminated '"},
		{in: `echo "a`, errHas: `unterminated "`},
		{in: `echo a\`, errHas: "backslash ends"},
		{in: "echo $HOME", errHas: "'$' is shell syntax"},
		{in: `echo "$HOME"`, errHas: "would be expanded"},
		{in: "python3 -c print(1)", errHas: "'(' is shell syntax"},
		{in: "true; false", errHas: "';' is shell syntax"},
		{in: "ls *.py", errHas: "'*' is shell syntax"},
		{in: "cat </etc/passwd", errHas: "'<' is shell syntax"},
		{in: "echo ~/x", errHas: "'~' is shell syntax"},
		{in: "echo #comment", errHas: "'#' is shell syntax"},
	} {
		got, err := splitWords(tc.in)
		switch {
		case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
			t.Errorf("splitWords(%q): got %q, %v; want an error saying %q", tc.in, got, err, tc.errHas)
		case tc.errHas == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("splitWords(%q): got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// singleQuote quotes w for splitWords (and a shell) so it stays one word.
func singleQuote(w string) string { return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'" }

// FuzzSplitWords: splitWords never panics; what it accepts it splits into
// words that, quoted back, split into the same words; and any argv,
// quoted, comes back as it was.
func FuzzSplitWords(f *testing.F) {
	for _, s := range []string{"python3 -c pass", `a "b\"c" 'd' e\ f`, "echo $x", "'", `"`, `\`, "a'b'\"c\"", "", "x\ty\nz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := splitWords(s)
		if err != nil {
			if words != nil {
				t.Fatalf("splitWords(%q) failed with %v but returned %q", s, err, words)
			}
		} else {
			if len(words) == 0 {
				t.Fatalf("splitWords(%q) returned no words and no error", s)
			}
			quoted := make([]string, len(words))
			for i, w := range words {
				quoted[i] = singleQuote(w)
			}
			again, err := splitWords(strings.Join(quoted, " "))
			if err != nil || !slices.Equal(again, words) {
				t.Fatalf("splitWords(%q) = %q; quoted back and split again: %q, %v", s, words, again, err)
			}
		}
		// The input itself as one argument, quoted, is one word, and so
		// is what shellWords (thaw template inspect) shows for it.
		if one, err := splitWords("prog " + singleQuote(s)); err != nil || !slices.Equal(one, []string{"prog", s}) {
			t.Fatalf("splitWords of %q quoted: got %q, %v; want [prog %q]", s, one, err, s)
		}
		if one, err := splitWords(shellWords([]string{"prog", s})); err != nil || !slices.Equal(one, []string{"prog", s}) {
			t.Fatalf("splitWords(shellWords([prog %q])) = %q, %v", s, one, err)
		}
	})
}
