package cli

import (
	"fmt"
	"strings"
)

// splitWords splits a command line into an argv the way a POSIX shell
// splits a simple command's words, and nothing more: blanks separate
// words; '...' keeps everything inside literally; "..." keeps everything
// but \" \\ \$ \` (a backslash before anything else stays); a backslash
// outside quotes keeps the next character literally. What a shell would
// expand or interpret instead (unquoted $ ` | & ; < > ( ) * ? [, and a word
// starting with # or ~) is refused rather than passed on with a different
// meaning, as is an unterminated quote or an empty line.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated ' quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += 1 + end
			inWord = true
		case c == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) && strings.IndexByte("\"\\$`", s[j+1]) >= 0 {
					j++
				} else if s[j] == '$' || s[j] == '`' {
					return nil, fmt.Errorf("%q inside \"...\" would be expanded by a shell; use '...' or a backslash", s[j])
				}
				cur.WriteByte(s[j])
			}
			if j == len(s) {
				return nil, fmt.Errorf("unterminated \" quote")
			}
			i = j
			inWord = true
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("a backslash ends the line")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case strings.IndexByte("$`|&;<>()*?[", c) >= 0, !inWord && (c == '#' || c == '~'):
			return nil, fmt.Errorf("%q is shell syntax, and this is a command with its arguments, run without a shell: quote it, or give a shell yourself (sh -c '...')", c)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("no command: give a program and its arguments")
	}
	return words, nil
}

// shellWords shows argv as splitWords (and a shell) reads it back: plain
// words as they are, others single-quoted.
func shellWords(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		plain := a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0
		if plain {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
