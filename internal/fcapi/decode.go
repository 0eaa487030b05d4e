package fcapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Validator is implemented by every request body type.
type Validator interface {
	Validate() error
}

// Decode decodes one JSON document into v (a pointer to one of this
// package's body types) the way Firecracker's serde decoding does, then
// validates it:
//   - field names match exactly (encoding/json alone would match any case);
//   - unknown and duplicate fields are errors (serde's deny_unknown_fields);
//   - fields tagged `fc:"required"` must be present and not null;
//   - fields of Firecracker's API that Thaw does not implement are accepted
//     only with a value that asks for nothing (see notImplementer);
//   - nothing may follow the document, and it must be UTF-8.
//
// v should point to a zero value: fields absent from data are left as they
// are. Errors name the offending field and say what is allowed.
func Decode(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("fcapi.Decode needs a non-nil pointer, got %T", v)
	}
	if !utf8.Valid(data) {
		return errors.New("the body is not valid UTF-8")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("the body is empty: want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkNotNull(dec, rv.Type().Elem(), ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing characters after the JSON document")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return describeUnmarshalError(err)
	}
	if val, ok := v.(Validator); ok {
		return val.Validate()
	}
	return nil
}

func describeUnmarshalError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field `%s`: got JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type))
	}
	return err
}

// jsonKind names the JSON type that decodes into t.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return fmt.Sprintf("an integer that fits in %d bits", t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a non-negative integer that fits in %d bits", t.Bits())
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return t.String()
}

// notImplementer is implemented by body types whose Firecracker counterpart
// has fields Thaw does not implement. It maps each such field to the JSON
// values (compact) that ask for nothing beyond the default; null, [] and {}
// always do. A field with such a value is accepted and ignored, so configs
// exported by firecracker (which spell out "io_engine": "Sync",
// "balloon": null, ...) load; any other value is refused by name rather
// than called unknown.
type notImplementer interface {
	notImplemented() map[string][]string
}

// NotImplemented returns the JSON names of the fields of v's Firecracker
// counterpart that Thaw does not implement (see Decode), sorted.
func NotImplemented(v any) []string {
	ni, ok := v.(notImplementer)
	if !ok {
		return nil
	}
	var names []string
	for name := range ni.notImplemented() {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

type fieldInfo struct {
	typ      reflect.Type
	required bool
}

type structInfo struct {
	fields         map[string]fieldInfo
	names          []string // in declaration order, for messages
	required       []string
	notImplemented map[string][]string
}

var structInfos sync.Map // reflect.Type → *structInfo

func infoFor(t reflect.Type) *structInfo {
	if si, ok := structInfos.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{fields: map[string]fieldInfo{}}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		req := f.Tag.Get("fc") == "required"
		si.fields[name] = fieldInfo{typ: f.Type, required: req}
		si.names = append(si.names, name)
		if req {
			si.required = append(si.required, name)
		}
	}
	if ni, ok := reflect.Zero(t).Interface().(notImplementer); ok {
		si.notImplemented = ni.notImplemented()
	}
	structInfos.Store(t, si)
	return si
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// where renders path for an error message.
func where(path string) string {
	if path == "" {
		return "the body"
	}
	return "`" + path + "`"
}

// checkValue reads one JSON value from dec and checks it against t: object
// keys of structs (exact names, no unknown, duplicate or missing required
// fields), recursively through pointers, slices and nested structs. Scalars
// are only read; json.Unmarshal checks their types afterwards. null is
// allowed here (it leaves an optional field unset).
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
	}
	if tok == nil {
		return nil
	}
	return checkStarted(dec, tok, t, path)
}

// checkNotNull is checkValue for positions where null is not allowed: the
// whole document, required fields and array elements.
func checkNotNull(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
	}
	if tok == nil {
		return fmt.Errorf("%s is null: want %s", where(path), jsonKind(t))
	}
	return checkStarted(dec, tok, t, path)
}

// checkStarted checks the value whose first token, tok, was just read.
func checkStarted(dec *json.Decoder, tok json.Token, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return fmt.Errorf("%s: got JSON %s, want an object", where(path), describeToken(tok))
		}
		return checkObject(dec, t, path)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 { // []byte and json.RawMessage
			return skipRest(dec, tok)
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return fmt.Errorf("%s: got JSON %s, want an array", where(path), describeToken(tok))
		}
		for i := 0; dec.More(); i++ {
			if err := checkNotNull(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return syntaxError(err)
	}
	return skipRest(dec, tok)
}

func checkObject(dec *json.Decoder, t reflect.Type, path string) error {
	si := infoFor(t)
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		key := tok.(string) // object keys are always strings
		if seen[key] {
			return fmt.Errorf("%s: duplicate field `%s`", where(path), key)
		}
		seen[key] = true
		fi, ok := si.fields[key]
		if !ok {
			inert, known := si.notImplemented[key]
			if !known {
				return fmt.Errorf("%s: unknown field `%s`, want one of %s", where(path), key, quoteAll(si.names))
			}
			if err := checkInert(dec, join(path, key), inert); err != nil {
				return err
			}
			continue
		}
		if fi.required {
			err = checkNotNull(dec, fi.typ, join(path, key))
		} else {
			err = checkValue(dec, fi.typ, join(path, key))
		}
		if err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return syntaxError(err)
	}
	for _, r := range si.required {
		if !seen[r] {
			return fmt.Errorf("%s: missing field `%s`", where(path), r)
		}
	}
	return nil
}

// checkInert reads the value of a field Thaw does not implement and refuses
// it unless it is null, [], {} or one of inert.
func checkInert(dec *json.Decoder, path string, inert []string) error {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return syntaxError(err)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return syntaxError(err)
	}
	v := b.String()
	if v == "null" || v == "[]" || v == "{}" || slices.Contains(inert, v) {
		return nil
	}
	allowed := "null"
	if len(inert) > 0 {
		allowed += " or " + strings.Join(inert, " or ")
	}
	return fmt.Errorf("%s is part of Firecracker's API but not implemented by Thaw: want it absent or %s, got %.64s", where(path), allowed, v)
}

// skipRest consumes the rest of a value whose first token was tok.
func skipRest(dec *json.Decoder, tok json.Token) error {
	d, ok := tok.(json.Delim)
	if !ok || d == '}' || d == ']' {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
	}
	return nil
}

func syntaxError(err error) error {
	if err == nil {
		return nil
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.New("the JSON document is truncated")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, se)
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "array"
		}
		return "object"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "boolean"
	}
	return "null"
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	return strings.Join(q, ", ")
}
