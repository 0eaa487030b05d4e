// Package errdefs defines the small set of error kinds Thaw's daemon reports
// (not found, already exists, invalid argument, ...), helpers that create or
// mark errors of a kind where they start, Is* checks that see through
// wrapping, and the one mapping between kinds and HTTP status codes used at
// the API edge and, in reverse, by the API client. containerd's errdefs is
// the model: code far from the edge says what kind of failure happened, and
// only the edge decides how to show it.
package errdefs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Kind is one class of failure. Kinds are comparable values; test for them
// with errors.Is or the Is* functions, never by comparing error strings.
type Kind struct{ name string }

// Error returns the kind's name, so that a bare kind is a usable error.
func (k *Kind) Error() string { return k.name }

// The kinds. Each maps to exactly one HTTP status (see HTTPStatus).
var (
	// ErrInvalidArgument: the request itself is wrong (a malformed id, a
	// negative size, an unknown option). Retrying the same request cannot
	// succeed.
	ErrInvalidArgument = &Kind{"invalid argument"}
	// ErrNotFound: the named object does not exist.
	ErrNotFound = &Kind{"not found"}
	// ErrAlreadyExists: an object with that name or id exists already.
	ErrAlreadyExists = &Kind{"already exists"}
	// ErrFailedPrecondition: the request is valid but the system is not in
	// a state that allows it (deleting a template build sandboxes still
	// use, resuming a sandbox that is not paused, a data directory on a
	// filesystem without reflinks).
	ErrFailedPrecondition = &Kind{"failed precondition"}
	// ErrResourceExhausted: a bounded resource ran out (a full disk, no
	// restore slot within the caller's deadline).
	ErrResourceExhausted = &Kind{"resource exhausted"}
	// ErrUnavailable: a dependency is (perhaps temporarily) unreachable: a
	// shim that does not answer, a store another daemon holds locked.
	ErrUnavailable = &Kind{"unavailable"}
	// ErrDeadlineExceeded: an operation ran out of time (a snapshot load
	// past its bound). context.DeadlineExceeded counts as this kind.
	ErrDeadlineExceeded = &Kind{"deadline exceeded"}
	// ErrCanceled: the caller gave up. context.Canceled counts as this
	// kind.
	ErrCanceled = &Kind{"canceled"}
	// ErrNotImplemented: the feature exists in the API but not in this
	// build or with this VMM.
	ErrNotImplemented = &Kind{"not implemented"}
	// ErrUnauthenticated: the request lacks valid credentials (the TCP
	// API's bearer token).
	ErrUnauthenticated = &Kind{"unauthenticated"}
)

// kinds lists every kind with its HTTP status, in the order KindOf tries
// them. It is the one mapping between kinds and HTTP; nothing else in the
// module may hard-code a status for a kind.
var kinds = []struct {
	kind   *Kind
	status int
}{
	{ErrInvalidArgument, http.StatusBadRequest},
	{ErrUnauthenticated, http.StatusUnauthorized},
	{ErrNotFound, http.StatusNotFound},
	{ErrAlreadyExists, http.StatusConflict},
	{ErrFailedPrecondition, http.StatusPreconditionFailed},
	{ErrResourceExhausted, http.StatusTooManyRequests},
	{ErrCanceled, StatusClientClosed},
	{ErrNotImplemented, http.StatusNotImplemented},
	{ErrUnavailable, http.StatusServiceUnavailable},
	{ErrDeadlineExceeded, http.StatusGatewayTimeout},
}

// StatusClientClosed is nginx's "client closed request", which grpc-gateway
// also uses for a canceled call; net/http has no name for it.
const StatusClientClosed = 499

// StatusInternal is the HTTP status of an error of no known kind.
const StatusInternal = http.StatusInternalServerError

// marked is an error that belongs to a kind while keeping its own chain: both
// errors.Is(m, kind) and errors.Is(m, cause) hold, so marking a syscall error
// as ErrResourceExhausted does not hide that it was ENOSPC.
type marked struct {
	kind  *Kind
	cause error
}

func (m *marked) Error() string   { return m.cause.Error() }
func (m *marked) Unwrap() []error { return []error{m.cause, m.kind} }

// Mark returns err as an error of kind k, keeping err's message and chain.
// A nil err stays nil; a nil k returns err unchanged.
func Mark(err error, k *Kind) error {
	if err == nil || k == nil {
		return err
	}
	return &marked{kind: k, cause: err}
}

// newf formats a new error of kind k. The message is the formatted text
// alone; the kind shows through errors.Is, not in the text.
func newf(k *Kind, format string, args ...any) error {
	return &marked{kind: k, cause: fmt.Errorf(format, args...)}
}

// InvalidArgument returns a new ErrInvalidArgument error with a formatted
// message (which may wrap another error with %w).
func InvalidArgument(format string, args ...any) error {
	return newf(ErrInvalidArgument, format, args...)
}

// NotFound returns a new ErrNotFound error with a formatted message.
func NotFound(format string, args ...any) error { return newf(ErrNotFound, format, args...) }

// AlreadyExists returns a new ErrAlreadyExists error with a formatted message.
func AlreadyExists(format string, args ...any) error {
	return newf(ErrAlreadyExists, format, args...)
}

// FailedPrecondition returns a new ErrFailedPrecondition error with a
// formatted message.
func FailedPrecondition(format string, args ...any) error {
	return newf(ErrFailedPrecondition, format, args...)
}

// ResourceExhausted returns a new ErrResourceExhausted error with a formatted
// message.
func ResourceExhausted(format string, args ...any) error {
	return newf(ErrResourceExhausted, format, args...)
}

// Unavailable returns a new ErrUnavailable error with a formatted message.
func Unavailable(format string, args ...any) error { return newf(ErrUnavailable, format, args...) }

// DeadlineExceeded returns a new ErrDeadlineExceeded error with a formatted
// message.
func DeadlineExceeded(format string, args ...any) error {
	return newf(ErrDeadlineExceeded, format, args...)
}

// NotImplemented returns a new ErrNotImplemented error with a formatted
// message.
func NotImplemented(format string, args ...any) error {
	return newf(ErrNotImplemented, format, args...)
}

// IsInvalidArgument reports whether err is of kind ErrInvalidArgument.
func IsInvalidArgument(err error) bool { return errors.Is(err, ErrInvalidArgument) }

// IsNotFound reports whether err is of kind ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsAlreadyExists reports whether err is of kind ErrAlreadyExists.
func IsAlreadyExists(err error) bool { return errors.Is(err, ErrAlreadyExists) }

// IsFailedPrecondition reports whether err is of kind ErrFailedPrecondition.
func IsFailedPrecondition(err error) bool { return errors.Is(err, ErrFailedPrecondition) }

// IsResourceExhausted reports whether err is of kind ErrResourceExhausted.
func IsResourceExhausted(err error) bool { return errors.Is(err, ErrResourceExhausted) }

// IsUnavailable reports whether err is of kind ErrUnavailable.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// IsDeadlineExceeded reports whether err is of kind ErrDeadlineExceeded or
// wraps context.DeadlineExceeded.
func IsDeadlineExceeded(err error) bool {
	return errors.Is(err, ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)
}

// IsCanceled reports whether err is of kind ErrCanceled or wraps
// context.Canceled.
func IsCanceled(err error) bool {
	return errors.Is(err, ErrCanceled) || errors.Is(err, context.Canceled)
}

// Unauthenticated returns a new ErrUnauthenticated error with a formatted
// message.
func Unauthenticated(format string, args ...any) error {
	return newf(ErrUnauthenticated, format, args...)
}

// IsUnauthenticated reports whether err is of kind ErrUnauthenticated.
func IsUnauthenticated(err error) bool { return errors.Is(err, ErrUnauthenticated) }

// IsNotImplemented reports whether err is of kind ErrNotImplemented.
func IsNotImplemented(err error) bool { return errors.Is(err, ErrNotImplemented) }

// KindOf returns the kind of err, or nil when err is nil or of no kind. An
// error marked with more than one kind reports the first in the order of the
// kinds table (the most specific to the caller's request first).
// context.DeadlineExceeded and context.Canceled count as their kinds.
func KindOf(err error) *Kind {
	if err == nil {
		return nil
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			return k.kind
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return ErrDeadlineExceeded
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	}
	return nil
}

// HTTPStatus returns the HTTP status code an API server answers err with:
// the status of its kind, or StatusInternal (500) for an error of no kind.
// It must not be called with a nil error.
func HTTPStatus(err error) int {
	k := KindOf(err)
	for _, e := range kinds {
		if e.kind == k {
			return e.status
		}
	}
	return StatusInternal
}

// FromHTTP rebuilds, on the client side, the error an API server answered
// with: an error whose text is msg (or the status when msg is empty) and
// whose kind is the one status maps to. A status of no kind (500, or any
// status the table lacks) gives an error of no kind.
func FromHTTP(status int, msg string) error {
	if msg == "" {
		msg = fmt.Sprintf("HTTP status %d", status)
	}
	for _, e := range kinds {
		if e.status == status {
			return &marked{kind: e.kind, cause: errors.New(msg)}
		}
	}
	return errors.New(msg)
}

// FromKindName rebuilds an error of the kind named name (Kind.Error(), as
// an API body carries it) with message msg; an unknown or empty name gives
// an error of no kind.
func FromKindName(name, msg string) error {
	for _, e := range kinds {
		if e.kind.name == name {
			return &marked{kind: e.kind, cause: errors.New(msg)}
		}
	}
	return errors.New(msg)
}
