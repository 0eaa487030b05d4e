package uffd

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Source provides the memory file's bytes to the page server. The first
// implementation maps a file; compressed, remote or shared-memory sources
// can follow behind the same interface.
type Source interface {
	// Size returns the memory file's size in bytes.
	Size() int64
	// Bytes returns the n bytes at offset off. The returned memory is the
	// source of a UFFDIO_COPY: it must stay valid and unchanged until Close.
	Bytes(off, n uint64) ([]byte, error)
	// Check reports whether the source is still what it was when opened
	// (for a file: not truncated since). The server calls it to explain a
	// failed copy.
	Check() error
	// Close releases the source. No Server may use it afterwards.
	Close() error
}

// FileSource is a read-only MAP_PRIVATE mapping of a memory file. Every page
// server mapping the same file shares its page cache, so N clones of one
// template read the file from disk once.
type FileSource struct {
	f    *os.File
	data []byte
	size int64
}

// OpenFile maps the memory file at path.
func OpenFile(path string) (*FileSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening memory file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening memory file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("memory file %s is not a regular file (%v)", path, fi.Mode().Type())
	}
	size := fi.Size()
	if size == 0 {
		f.Close()
		return nil, fmt.Errorf("memory file %s is empty", path)
	}
	if size%PageSize4K != 0 {
		f.Close()
		return nil, fmt.Errorf("memory file %s is %d bytes, not a whole number of 4 KiB pages: truncated or not a memory file", path, size)
	}
	var data []byte
	rc, err := f.SyscallConn()
	if err == nil {
		var merr error
		err = rc.Control(func(fd uintptr) {
			data, merr = unix.Mmap(int(fd), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
		})
		if err == nil {
			err = merr
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mapping memory file %s: %w", path, err)
	}
	return &FileSource{f: f, data: data, size: size}, nil
}

// Size implements Source.
func (s *FileSource) Size() int64 { return s.size }

// Bytes implements Source; the slice aliases the mapping.
func (s *FileSource) Bytes(off, n uint64) ([]byte, error) {
	if s.data == nil {
		return nil, errors.New("memory file source is closed")
	}
	if off > uint64(s.size) || n > uint64(s.size)-off {
		return nil, fmt.Errorf("bytes [%#x, %#x) lie past the end of the %d-byte memory file", off, off+n, s.size)
	}
	return s.data[off : off+n : off+n], nil
}

// Check implements Source: it fails when the file has shrunk since it was
// mapped (reading the missing tail would fault).
func (s *FileSource) Check() error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("checking memory file: %w", err)
	}
	if fi.Size() < s.size {
		return fmt.Errorf("memory file %s shrank from %d to %d bytes while being served", s.f.Name(), s.size, fi.Size())
	}
	return nil
}

// Close unmaps the file.
func (s *FileSource) Close() error {
	if s.data == nil {
		return nil
	}
	err := unix.Munmap(s.data)
	s.data = nil
	return errors.Join(err, s.f.Close())
}
