// Package conf holds the small parsing rules every Thaw component shares for
// configuration values: booleans and byte rates parse strictly, and a bad
// value is an error rather than a silent default.
package conf

import (
	"fmt"
	"os"
	"strings"
)

// ParseBool parses a boolean strictly: true/false, 1/0, on/off, yes/no, in any
// case. Anything else is an error naming the accepted spellings.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "on", "yes":
		return true, nil
	case "0", "false", "off", "no":
		return false, nil
	}
	return false, fmt.Errorf("invalid boolean %q: use true/false, 1/0, on/off or yes/no", s)
}

// EnvBool reads the boolean environment variable name. An unset or empty
// variable yields def; a value ParseBool rejects is an error that names the
// variable.
func EnvBool(name string, def bool) (bool, error) {
	v, ok := os.LookupEnv(name)
	if !ok || strings.TrimSpace(v) == "" {
		return def, nil
	}
	b, err := ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}
