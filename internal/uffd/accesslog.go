package uffd

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
)

// Access log format, version 1. Text, so that a log can be inspected and a
// crash mid-write damages at most the last line:
//
//	thaw-access-log v1 page_size=4096 file_size=536870912 file_id=0123…ef\n
//	<byte offset of a page in the memory file, lowercase hex>\n
//	...
//
// Offsets are listed in the order the pages were first installed, each at
// most once. A last line without its newline is a record cut short by a
// crash and is dropped.
//
// file_id is FileIdentity: a SHA-256 of the file's size and 64 sampled 4
// KiB blocks. It is cheap (256 KiB read, not the whole file) and, unlike an
// inode number or mtime, survives copying a template to another host. It
// can miss a file that differs only outside the samples; that costs only a
// worse prefetch order, never wrong memory, because pages are always copied
// from the real file.
const accessLogMagic = "thaw-access-log"

// AccessLogVersion is the version ReadAccessLog understands.
const AccessLogVersion = 1

// identitySamples is how many 4 KiB blocks FileIdentity hashes.
const identitySamples = 64

// AccessLog is a parsed access log: the prefetch order for one memory file.
type AccessLog struct {
	PageSize uint64
	FileSize uint64
	FileID   string
	// Offsets are page offsets in the memory file in first-install order.
	Offsets []uint64
}

// FileIdentity returns the cheap identity of src described above.
func FileIdentity(src Source) (string, error) {
	size := uint64(src.Size())
	h := sha256.New()
	var sz [8]byte
	binary.LittleEndian.PutUint64(sz[:], size)
	h.Write(sz[:])
	pages := size / PageSize4K
	for i := uint64(0); i < identitySamples && pages > 0; i++ {
		page := i * (pages - 1) / (identitySamples - 1)
		b, err := src.Bytes(page*PageSize4K, PageSize4K)
		if err != nil {
			return "", fmt.Errorf("sampling memory file for its identity: %w", err)
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// formatHeader returns the header line for a log.
func formatHeader(pageSize, fileSize uint64, fileID string) string {
	return fmt.Sprintf("%s v%d page_size=%d file_size=%d file_id=%s\n", accessLogMagic, AccessLogVersion, pageSize, fileSize, fileID)
}

// MaxAccessLogHeader bounds the header line.
const MaxAccessLogHeader = 512

// ReadAccessLog parses an access log. It rejects a malformed header, an
// unsupported version, and any complete record that is not a page-aligned
// offset inside the file or that repeats an earlier one; it drops a final
// line cut short (no newline).
func ReadAccessLog(r io.Reader) (*AccessLog, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	header, err := readLine(br, MaxAccessLogHeader)
	if err != nil {
		return nil, fmt.Errorf("reading access log header: %w", err)
	}
	l, err := parseHeader(header)
	if err != nil {
		return nil, err
	}
	maxRecords := l.FileSize / l.PageSize
	for line := 2; ; line++ {
		rec, err := readLine(br, 32)
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break // clean end, or a last record cut short
		}
		if err != nil {
			return nil, fmt.Errorf("access log line %d: %w", line, err)
		}
		off, err := strconv.ParseUint(string(rec), 16, 64)
		if err != nil || len(rec) == 0 || rec[0] == '+' {
			return nil, fmt.Errorf("access log line %d: %q is not a hex page offset", line, rec)
		}
		if off%l.PageSize != 0 || off >= l.FileSize {
			return nil, fmt.Errorf("access log line %d: offset %#x is not a %d-byte page inside the %d-byte file", line, off, l.PageSize, l.FileSize)
		}
		if uint64(len(l.Offsets)) >= maxRecords {
			return nil, fmt.Errorf("access log line %d: more records than the file has pages", line)
		}
		if len(l.Offsets) == cap(l.Offsets) {
			// Double, rather than append's 1.25x for large slices,
			// which allocated 4 times the final slice along the way.
			l.Offsets = slices.Grow(l.Offsets, max(len(l.Offsets), 512))
		}
		l.Offsets = append(l.Offsets, off)
	}
	if err := checkRepeats(l.Offsets, l.PageSize, l.FileSize); err != nil {
		return nil, err
	}
	return l, nil
}

// checkRepeats reports the first record that repeats an earlier offset
// (offsets are page-aligned and inside the file by now). It does not fill
// a set while reading: a map of every record of a large template's log
// (131072 for a 512 MiB working set) allocated several MiB in every shim
// that prefetched from it, and an idle shim never gives them back
// (docs/benchmarks/thawd.md). A bitmap of the file's pages costs a bit a
// page; where that is more than a sorted copy of the records (a short log
// of a huge file), sorting finds whether any repeats.
func checkRepeats(offsets []uint64, pageSize, fileSize uint64) error {
	repeat := func(i int, off uint64) error {
		return fmt.Errorf("access log line %d: offset %#x appears twice", i+2, off)
	}
	if pages := fileSize / pageSize; pages/8 <= 8*uint64(len(offsets)) {
		seen := make([]uint64, (pages+63)/64)
		for i, off := range offsets {
			p := off / pageSize
			if seen[p/64]&(1<<(p%64)) != 0 {
				return repeat(i, off)
			}
			seen[p/64] |= 1 << (p % 64)
		}
		return nil
	}
	sorted := slices.Clone(offsets)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) == len(offsets) {
		return nil
	}
	// A broken log: name the line of the first repeat.
	seen := make(map[uint64]bool)
	for i, off := range offsets {
		if seen[off] {
			return repeat(i, off)
		}
		seen[off] = true
	}
	return errors.New("access log: an offset appears twice") // not reached: the scan finds it
}

// readLine returns the next line without its newline. A line longer than
// max is an error; EOF before a newline is io.ErrUnexpectedEOF (or io.EOF
// when nothing was read).
//
// The line is a slice of br's buffer, valid until the next read: copying
// each line into its own slice allocated once per record, 131072 times
// for a large template's log.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	switch {
	case err == io.EOF && len(line) == 0:
		return nil, io.EOF
	case err == io.EOF:
		return nil, io.ErrUnexpectedEOF
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, fmt.Errorf("line longer than %d bytes", max)
	case err != nil:
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > max {
		return nil, fmt.Errorf("line longer than %d bytes", max)
	}
	return line, nil
}

func parseHeader(h []byte) (*AccessLog, error) {
	fields := bytes.Fields(h)
	if len(fields) != 5 || string(fields[0]) != accessLogMagic {
		return nil, fmt.Errorf("not a thaw access log: header %q, want %q", quoteStart(h), "thaw-access-log v1 page_size=N file_size=N file_id=HEX")
	}
	if string(fields[1]) != fmt.Sprintf("v%d", AccessLogVersion) {
		return nil, fmt.Errorf("access log version %q is not supported: want v%d", fields[1], AccessLogVersion)
	}
	l := &AccessLog{}
	for _, kv := range fields[2:] {
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if !ok {
			return nil, fmt.Errorf("access log header field %q is not key=value", kv)
		}
		switch string(k) {
		case "page_size", "file_size":
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("access log header %s=%q: %w", k, v, err)
			}
			if string(k) == "page_size" {
				l.PageSize = n
			} else {
				l.FileSize = n
			}
		case "file_id":
			if _, err := hex.DecodeString(string(v)); err != nil || len(v) == 0 {
				return nil, fmt.Errorf("access log header file_id=%q is not hex", v)
			}
			l.FileID = string(v)
		default:
			return nil, fmt.Errorf("access log header has unknown field %q", k)
		}
	}
	if l.PageSize != PageSize4K && l.PageSize != PageSize2M {
		return nil, fmt.Errorf("access log page_size=%d: want %d or %d", l.PageSize, PageSize4K, PageSize2M)
	}
	if l.FileSize == 0 || l.FileSize%l.PageSize != 0 {
		return nil, fmt.Errorf("access log file_size=%d is not a positive multiple of page_size=%d", l.FileSize, l.PageSize)
	}
	if l.FileID == "" {
		return nil, fmt.Errorf("access log header lacks file_id")
	}
	return l, nil
}

// Matches reports whether the log was recorded for src, naming the
// difference when it was not.
func (l *AccessLog) Matches(src Source) error {
	if uint64(src.Size()) != l.FileSize {
		return fmt.Errorf("access log is for a %d-byte memory file, this one has %d bytes", l.FileSize, src.Size())
	}
	id, err := FileIdentity(src)
	if err != nil {
		return err
	}
	if id != l.FileID {
		return fmt.Errorf("access log is for memory file %s, this one is %s", l.FileID, id)
	}
	return nil
}

// LoadAccessLog reads the access log at path for src. A missing,
// unreadable or malformed log, or one recorded for another memory file, is
// not an error: the prefetch order is an optimisation, so LoadAccessLog
// logs a warning saying why and returns nil (the server then prefetches
// sequentially).
func LoadAccessLog(path string, src Source, log *slog.Logger) *AccessLog {
	f, err := os.Open(path)
	if err != nil {
		log.Warn("access log unusable, prefetching sequentially", "path", path, "err", err)
		return nil
	}
	defer f.Close()
	l, err := ReadAccessLog(f)
	if err != nil {
		log.Warn("access log unusable, prefetching sequentially", "path", path, "err", err)
		return nil
	}
	if err := l.Matches(src); err != nil {
		log.Warn("access log belongs to another memory file, ignoring it", "path", path, "err", err)
		return nil
	}
	return l
}
