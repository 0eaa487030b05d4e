package testenv

import (
	"bytes"
	"sync"
)

// Buffer collects output written from several goroutines (a process's
// stdout, a VMM's serial console, a daemon's log) and lets a test read it
// while writes continue. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer // guarded by mu
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
