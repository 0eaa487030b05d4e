package api

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// Listen binds the API unix socket at path for Serve. Like firecracker, it
// refuses a path that already exists instead of removing it: another VMM may
// be serving there, and whoever starts VMMs owns their socket paths. Closing
// the listener (Serve does) removes the socket file.
func Listen(path string) (net.Listener, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("opening the API socket at %s: the path exists; check that it is not already used, or remove it: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the API socket at %s: %w", path, err)
	}
	return l, nil
}
