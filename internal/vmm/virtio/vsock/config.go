// Package vsock is the virtio-vsock device (virtio 1.2 spec 5.10) with
// Firecracker's host side: guest AF_VSOCK stream sockets are bridged to
// AF_UNIX sockets on the host.
//
//   - Host-initiated: a host program connects to Config.UDSPath and writes
//     "CONNECT <port>\n"; the device asks the guest to connect to that port
//     and, once the guest accepts, answers "OK <hostport>\n" and forwards
//     bytes both ways. If the guest refuses (RST) or does not answer within
//     two seconds, the host connection is closed.
//   - Guest-initiated: a guest connection to the host (CID 2) on port P is
//     forwarded to a host program listening on "<UDSPath>_P"; if none is,
//     the guest gets RST.
//
// Flow control is the spec's credit scheme (buf_alloc/fwd_cnt, CREDIT_UPDATE
// and CREDIT_REQUEST) in both directions, and no direction buffers more than
// a fixed amount per connection: host-to-guest reads stop while one chunk
// waits for guest credit or receive buffers, and the guest may not send more
// than the buffer space the device advertised (a guest that does gets RST).
//
// Goroutines: New starts one accepting on UDSPath; Activate starts the
// device's event loop, which alone touches the virtqueues; each live
// connection has a reader and a writer goroutine. Reset stops the event
// loop and closes every connection; Close (called by the transport's Close)
// also closes the listener, and returns once every goroutine has exited.
package vsock

import (
	"errors"
	"fmt"
	"math"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

// Config is the vsock device the API asked for (Firecracker's PUT /vsock).
type Config struct {
	// GuestCID is the guest's context ID, at least 3 (0–2 are reserved,
	// vsock(7)) and at most 2^32-2 (the spec keeps the upper 32 bits zero).
	GuestCID uint64
	// UDSPath is the host unix socket the device listens on;
	// guest-initiated connections go to UDSPath + "_" + port.
	UDSPath string
}

// maxPathLen is the longest path a unix socket address holds (sun_path is
// 108 bytes including the terminating NUL).
const maxPathLen = 107

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if c.GuestCID <= abi.VsockCIDHost || c.GuestCID >= math.MaxUint32 {
		errs = append(errs, fmt.Errorf("guest CID %d is invalid; use a value from 3 to %d", c.GuestCID, uint64(math.MaxUint32-1)))
	}
	switch {
	case c.UDSPath == "":
		errs = append(errs, errors.New("vsock uds_path is empty; give the unix socket path host programs connect to"))
	case len(c.UDSPath)+len("_4294967295") > maxPathLen:
		errs = append(errs, fmt.Errorf("vsock uds_path %q is too long: with a \"_<port>\" suffix it must fit a unix socket address (%d bytes)", c.UDSPath, maxPathLen))
	}
	return errors.Join(errs...)
}
