package uffd

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// Recorder streams an access log to disk: each page's first successful
// install, in order. It flushes whenever 4 KiB of records have accumulated,
// when the last flush is older than FlushInterval, and when the server goes
// idle, so a crash loses at most the records of one flush interval. Its
// methods are safe to call from any goroutine.
type Recorder struct {
	pageSize uint64
	fileSize uint64

	mu sync.Mutex
	// Guarded by mu.
	f         *os.File
	w         *bufio.Writer
	seen      []bool // by page index
	count     int
	lastFlush time.Time
	err       error
	closed    bool
}

// RecorderFlushInterval bounds how long a record may sit in memory.
const RecorderFlushInterval = 100 * time.Millisecond

// CreateRecorder creates (or truncates) the access log at path for src's
// memory file, with records of pageSize bytes (the smallest page size of
// the regions it will see), and writes the header.
func CreateRecorder(path string, src Source, pageSize uint64) (*Recorder, error) {
	if pageSize != PageSize4K && pageSize != PageSize2M {
		return nil, fmt.Errorf("creating access log: page size %d: want %d or %d", pageSize, PageSize4K, PageSize2M)
	}
	size := uint64(src.Size())
	if size%pageSize != 0 {
		return nil, fmt.Errorf("creating access log: memory file size %d is not a multiple of the page size %d", size, pageSize)
	}
	id, err := FileIdentity(src)
	if err != nil {
		return nil, fmt.Errorf("creating access log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating access log: %w", err)
	}
	r := &Recorder{pageSize: pageSize, fileSize: size, f: f, w: bufio.NewWriterSize(f, 8<<10),
		seen: make([]bool, size/pageSize), lastFlush: time.Now()}
	r.w.WriteString(formatHeader(pageSize, size, id))
	if err := r.w.Flush(); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing access log header: %w", err)
	}
	return r, nil
}

// PageSize returns the record granularity.
func (r *Recorder) PageSize() uint64 { return r.pageSize }

// Record notes that the page holding file offset off was installed. Only
// the first install of each page is written.
func (r *Recorder) Record(off uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.err != nil || off >= r.fileSize {
		return
	}
	p := off / r.pageSize
	if r.seen[p] {
		return
	}
	r.seen[p] = true
	r.count++
	var buf [20]byte
	b := strconv.AppendUint(buf[:0], p*r.pageSize, 16)
	b = append(b, '\n')
	r.w.Write(b)
	if r.w.Buffered() >= 4<<10 || time.Since(r.lastFlush) >= RecorderFlushInterval {
		r.flushLocked()
	}
}

// Count returns the number of pages recorded so far.
func (r *Recorder) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// Flush writes buffered records to the file.
func (r *Recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.err
	}
	r.flushLocked()
	return r.err
}

func (r *Recorder) flushLocked() {
	if r.err != nil {
		return
	}
	if err := r.w.Flush(); err != nil {
		r.err = fmt.Errorf("writing access log: %w", err)
	}
	r.lastFlush = time.Now()
}

// Close flushes, stops recording and closes the file. It returns the first
// write error, if any: a log that could not be written completely is not a
// trustworthy recording.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.err
	}
	r.flushLocked()
	r.closed = true
	cerr := r.f.Close()
	if cerr != nil && r.err == nil {
		r.err = fmt.Errorf("closing access log: %w", cerr)
	}
	return errors.Join(r.err)
}
