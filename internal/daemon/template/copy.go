package template

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/daemon/disk"
	"github.com/thawvm/thaw/internal/errdefs"
)

// place puts src at the new file dst: a reflink if the filesystems allow,
// else a sparse copy. It returns the size.
func place(src, dst string) (int64, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return 0, err
	}
	if err := disk.Clone(src, dst); err == nil {
		return fi.Size(), nil
	}
	if err := copySparse(src, dst); err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// copyBlock is the unit copySparse checks for zeros: a block of zeros in
// the source stays a hole in the copy.
const copyBlock = 4096

// copySparse copies src to the new file dst, reading only src's data
// extents (SEEK_DATA/SEEK_HOLE, lseek(2); a filesystem without them reports
// the whole file as data) and leaving all-zero blocks as holes. Disk
// images are mostly holes: a 1 GiB Debian image holds about 200 MiB, and a
// plain copy would write the rest as zeros. On failure dst is removed.
func copySparse(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
				err = errdefs.Mark(err, errdefs.ErrResourceExhausted)
			}
		}
	}()
	size := fi.Size()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		start, err := in.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		} else if err != nil {
			return fmt.Errorf("copying %s: finding data: %w", src, err)
		}
		end, err := in.Seek(start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copying %s: finding a hole: %w", src, err)
		}
		for pos := start; pos < end; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if n == 0 {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF // the file shrank under us
				}
				return fmt.Errorf("copying %s: %w", src, err)
			}
			for b := 0; b < n; b += copyBlock {
				blk := buf[b:min(b+copyBlock, n)]
				if allZero(blk) {
					continue
				}
				if _, err := out.WriteAt(blk, pos+int64(b)); err != nil {
					return fmt.Errorf("copying %s to %s: %w", src, dst, err)
				}
			}
			pos += int64(n)
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
