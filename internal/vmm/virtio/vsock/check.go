package vsock

import (
	"errors"
	"fmt"
)

// checkInvariants makes the event loop verify its bookkeeping after every
// round (tests turn it on; see TestMain).
var checkInvariants = false

// check returns what is inconsistent in the loop's state. Only run calls it.
func (w *worker) check() error {
	var errs []error
	if int(w.live.Load()) != len(w.conns) {
		errs = append(errs, fmt.Errorf("live count %d, %d connections", w.live.Load(), len(w.conns)))
	}
	inList := map[*conn]int{}
	for _, c := range w.sendable {
		inList[c]++
	}
	for c, n := range inList {
		if n > 1 || !c.queued {
			errs = append(errs, fmt.Errorf("connection %v listed %d times as sendable, queued=%v", c.key, n, c.queued))
		}
	}
	for k, c := range w.conns {
		switch {
		case c.key != k || c.closed:
			errs = append(errs, fmt.Errorf("connection %v under key %v, closed=%v", c.key, k, c.closed))
		case c.queued && inList[c] == 0:
			errs = append(errs, fmt.Errorf("connection %v marked queued but not listed", k))
		case c.rxCnt-c.fwdCnt.Load() > bufAlloc:
			errs = append(errs, fmt.Errorf("connection %v buffers %d bytes, over %d", k, c.rxCnt-c.fwdCnt.Load(), bufAlloc))
		case c.state != stEstablished && len(c.inbuf) > 0:
			errs = append(errs, fmt.Errorf("connection %v holds host data in state %d", k, c.state))
		case len(c.inbuf) > readChunk:
			errs = append(errs, fmt.Errorf("connection %v holds %d bytes of host data, over %d", k, len(c.inbuf), readChunk))
		}
	}
	return errors.Join(errs...)
}
