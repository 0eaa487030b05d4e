package errdefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"
)

func TestConstructorsCarryKindAndMessage(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		kind   *Kind
		is     func(error) bool
		status int
	}{
		{"invalid", InvalidArgument("id %q: bad", "x/y"), ErrInvalidArgument, IsInvalidArgument, 400},
		{"notfound", NotFound("template %q", "a"), ErrNotFound, IsNotFound, 404},
		{"exists", AlreadyExists("sandbox %q", "a"), ErrAlreadyExists, IsAlreadyExists, 409},
		{"precondition", FailedPrecondition("build in use"), ErrFailedPrecondition, IsFailedPrecondition, 412},
		{"exhausted", ResourceExhausted("disk full"), ErrResourceExhausted, IsResourceExhausted, 429},
		{"unavailable", Unavailable("shim gone"), ErrUnavailable, IsUnavailable, 503},
		{"deadline", DeadlineExceeded("load took 30s"), ErrDeadlineExceeded, IsDeadlineExceeded, 504},
		{"notimpl", NotImplemented("diff snapshots"), ErrNotImplemented, IsNotImplemented, 501},
		{"unauthenticated", Unauthenticated("bad token"), ErrUnauthenticated, IsUnauthenticated, 401},
		{"ctx deadline", fmt.Errorf("waiting: %w", context.DeadlineExceeded), ErrDeadlineExceeded, IsDeadlineExceeded, 504},
		{"ctx canceled", fmt.Errorf("waiting: %w", context.Canceled), ErrCanceled, IsCanceled, 499},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wrapped := fmt.Errorf("creating sandbox: %w", tt.err)
			if got := KindOf(wrapped); got != tt.kind {
				t.Errorf("KindOf = %v, want %v", got, tt.kind)
			}
			if !tt.is(wrapped) {
				t.Errorf("Is* check on %q = false, want true", wrapped)
			}
			if got := HTTPStatus(wrapped); got != tt.status {
				t.Errorf("HTTPStatus = %d, want %d", got, tt.status)
			}
			// Only the one kind: no other Is* check may claim the error.
			for _, k := range kinds {
				if k.kind != tt.kind && errors.Is(wrapped, k.kind) {
					t.Errorf("error also matches kind %v", k.kind)
				}
			}
		})
	}
}

func TestMessageHasNoKindNoise(t *testing.T) {
	err := NotFound("template %q not found", "py")
	if got, want := err.Error(), `template "py" not found`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestMarkKeepsCause(t *testing.T) {
	cause := &fs.PathError{Op: "write", Path: "/data/x", Err: syscall.ENOSPC}
	err := fmt.Errorf("cloning disk: %w", Mark(cause, ErrResourceExhausted))
	if !IsResourceExhausted(err) {
		t.Errorf("IsResourceExhausted(%v) = false, want true", err)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("errors.Is(%v, ENOSPC) = false, want true: marking must keep the chain", err)
	}
	if got, want := err.Error(), "cloning disk: write /data/x: no space left on device"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if Mark(nil, ErrNotFound) != nil {
		t.Error("Mark(nil) != nil, want nil")
	}
	if got := Mark(cause, nil); got != error(cause) {
		t.Errorf("Mark(err, nil) = %v, want err unchanged", got)
	}
}

func TestUnknownIsInternal(t *testing.T) {
	err := errors.New("boom")
	if k := KindOf(err); k != nil {
		t.Errorf("KindOf(plain) = %v, want nil", k)
	}
	if got := HTTPStatus(err); got != StatusInternal {
		t.Errorf("HTTPStatus(plain) = %d, want %d", got, StatusInternal)
	}
	if KindOf(nil) != nil {
		t.Error("KindOf(nil) != nil")
	}
}

// TestHTTPRoundTrip: every kind survives server -> status -> client, which is
// what the API client relies on to give callers typed errors back.
func TestHTTPRoundTrip(t *testing.T) {
	seen := map[int]*Kind{}
	for _, k := range kinds {
		if prev, dup := seen[k.status]; dup {
			t.Fatalf("status %d maps from both %v and %v: the mapping must be one-to-one", k.status, prev, k.kind)
		}
		seen[k.status] = k.kind
		server := Mark(errors.New("the message"), k.kind)
		status := HTTPStatus(server)
		client := FromHTTP(status, server.Error())
		if got := KindOf(client); got != k.kind {
			t.Errorf("kind %v: round trip through %d gave kind %v", k.kind, status, got)
		}
		if got := client.Error(); got != "the message" {
			t.Errorf("kind %v: client message = %q, want %q", k.kind, got, "the message")
		}
	}
	if err := FromHTTP(500, ""); KindOf(err) != nil || err.Error() != "HTTP status 500" {
		t.Errorf("FromHTTP(500, \"\") = %q of kind %v, want \"HTTP status 500\" of no kind", err, KindOf(err))
	}
	if err := FromHTTP(418, "teapot"); KindOf(err) != nil {
		t.Errorf("FromHTTP(418) has kind %v, want none", KindOf(err))
	}
}

func TestFromKindName(t *testing.T) {
	for _, e := range kinds {
		err := FromKindName(e.kind.Error(), "boom")
		if KindOf(err) != e.kind || err.Error() != "boom" {
			t.Errorf("FromKindName(%q): got kind %v, %q, want %v, \"boom\"", e.kind.Error(), KindOf(err), err, e.kind)
		}
	}
	if err := FromKindName("no such kind", "boom"); KindOf(err) != nil {
		t.Errorf("unknown kind name: got kind %v, want none", KindOf(err))
	}
}
