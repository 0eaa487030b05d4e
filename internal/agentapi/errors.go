package agentapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind classifies an error so that callers can act on it without parsing
// messages. Each kind maps to one HTTP status (StatusForKind).
type Kind string

// Error kinds.
const (
	KindInvalid      Kind = "invalid_argument"
	KindNotFound     Kind = "not_found"
	KindExists       Kind = "already_exists"
	KindPermission   Kind = "permission_denied"
	KindPrecondition Kind = "failed_precondition"
	KindUnavailable  Kind = "unavailable"
	KindInternal     Kind = "internal"
)

// Sentinel errors, one per kind, for errors.Is.
var (
	ErrInvalid      = &Error{Kind: KindInvalid}
	ErrNotFound     = &Error{Kind: KindNotFound}
	ErrExists       = &Error{Kind: KindExists}
	ErrPermission   = &Error{Kind: KindPermission}
	ErrPrecondition = &Error{Kind: KindPrecondition}
	ErrUnavailable  = &Error{Kind: KindUnavailable}
	ErrInternal     = &Error{Kind: KindInternal}
)

// Error is the body of every non-2xx response, and the error the client
// returns for one.
type Error struct {
	Kind    Kind   `json:"kind"`
	Message string `json:"message"`
}

// Errorf returns an *Error of kind k.
func Errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Kind)
	}
	return e.Message
}

// Is makes errors.Is(err, ErrNotFound) true for any *Error of that kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Kind == e.Kind
}

// KindOf returns the kind of the first *Error in err's chain, or
// KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// StatusForKind is the one mapping from error kinds to HTTP statuses.
func StatusForKind(k Kind) int {
	switch k {
	case KindInvalid:
		return http.StatusBadRequest
	case KindNotFound:
		return http.StatusNotFound
	case KindExists:
		return http.StatusConflict
	case KindPermission:
		return http.StatusForbidden
	case KindPrecondition:
		return http.StatusPreconditionFailed
	case KindUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// kindForStatus inverts StatusForKind for responses without a JSON body.
func kindForStatus(status int) Kind {
	for _, k := range []Kind{KindInvalid, KindNotFound, KindExists, KindPermission, KindPrecondition, KindUnavailable} {
		if StatusForKind(k) == status {
			return k
		}
	}
	return KindInternal
}
