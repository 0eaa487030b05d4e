package shim

import (
	"regexp"
	"testing"
)

// The id rules as regexps: validID and validVMMID check them by hand (a
// compiled regexp costs every shim 120 KB at start-up), and must agree.
var (
	idRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	vmmIDRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
)

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"", "a", "sb-1", "build-x.1", "_a", ".", "a/b", "é", "a\x00", "A-Z_0.9",
		"a123456789012345678901234567890123456789012345678901234567890123",
		"a1234567890123456789012345678901234567890123456789012345678901234"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := validID(id), idRE.MatchString(id); got != want {
			t.Errorf("validID(%q): got %v, want %v", id, got, want)
		}
		if got, want := validVMMID(id), vmmIDRE.MatchString(id); got != want {
			t.Errorf("validVMMID(%q): got %v, want %v", id, got, want)
		}
	})
}
