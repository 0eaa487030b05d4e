package agent

import (
	"errors"
	"log/slog"
	"net"
	"time"
)

// retryListener keeps accepting through errors that leave the listening
// socket usable. After a snapshot restore the VMM has reset every live vsock
// connection, and a connection reset between the kernel queueing it and
// accept(2) surfaces as ECONNRESET or ECONNABORTED; resource exhaustion
// (EMFILE, ENFILE, ENOBUFS) passes. Only a closed listener ends Accept.
type retryListener struct {
	net.Listener
	log *slog.Logger
}

const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

func (l *retryListener) Accept() (net.Conn, error) {
	backoff := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
		l.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
		time.Sleep(backoff)
	}
}
