package conf

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// ByteRate is a rate in bytes per second; 0 means unlimited.
type ByteRate uint64

// rateUnits are the units ParseByteRate accepts before "/s", in the
// spelling it accepts (IEC binary and SI decimal prefixes).
var rateUnits = []struct {
	name string
	mult uint64
}{
	{"B", 1},
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"kB", 1000}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
}

// rateForms names the accepted forms, for errors.
const rateForms = `use a whole number of bytes per second ("209715200"), a whole number with a unit per second ("200MiB/s"; units B, KiB, MiB, GiB, kB, MB, GB), or 0 or "unlimited" for no limit`

// ParseByteRate parses a rate strictly: "unlimited" or "0" (no limit), a
// whole number of bytes per second, or a whole number and a unit followed
// by "/s" ("200MiB/s", "50MB/s", "4096B/s"). Anything else, including
// fractions, negative numbers, a unit without "/s" and a rate too large for
// 64 bits, is an error naming the accepted forms.
func ParseByteRate(s string) (ByteRate, error) {
	t := strings.TrimSpace(s)
	if t == "unlimited" {
		return 0, nil
	}
	num, mult := t, uint64(1)
	if body, ok := strings.CutSuffix(t, "/s"); ok {
		found := false
		for _, u := range rateUnits {
			if n, ok := strings.CutSuffix(body, u.name); ok && n != "" && isDigits(n) {
				num, mult, found = n, u.mult, true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("invalid rate %q: %s", s, rateForms)
		}
	}
	if !isDigits(num) {
		return 0, fmt.Errorf("invalid rate %q: %s", s, rateForms)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: too large", s)
	}
	hi, v := bits.Mul64(n, mult)
	if hi != 0 {
		return 0, fmt.Errorf("invalid rate %q: too large", s)
	}
	return ByteRate(v), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// String formats r so that ParseByteRate reads it back: "unlimited" for 0,
// else in the largest binary unit that divides it ("200MiB/s", "1000B/s").
func (r ByteRate) String() string {
	if r == 0 {
		return "unlimited"
	}
	for _, u := range []struct {
		name string
		mult uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if uint64(r)%u.mult == 0 {
			return fmt.Sprintf("%d%s/s", uint64(r)/u.mult, u.name)
		}
	}
	return fmt.Sprintf("%dB/s", uint64(r))
}
