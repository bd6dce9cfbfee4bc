package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/diskimg/diskimg/format"
)

// Stdin is the source name that means standard input.
const Stdin = "-"

// spoolBlock is the unit in which a spooled stream is checked for zeros:
// an all-zero block becomes a hole in the spool file.
const spoolBlock = 64 << 10

// StdinFile is an image file read from a stream.
type StdinFile struct {
	*os.File
	size int64
}

// Size returns the number of bytes read from the stream.
func (f *StdinFile) Size() int64 { return f.size }

// Name is "": a stream has no directory, so an image read from it can name
// no other file (a backing file, a VMDK extent).
func (f *StdinFile) Name() string { return "" }

// OpenStdin makes r (standard input) readable at any offset, so any
// image format can be read from it. A regular file (a shell redirect) is
// used in place. Anything else is copied into a temporary file in dir
// ("" for the system temp dir) that has no name (see openAnonymous), so
// it leaves nothing behind however the process ends: the image formats keep their
// tables anywhere in the file (a streamOptimized VMDK at its end), and a
// writer needs the source's map before its first byte. Zero blocks become
// holes, so the copy takes the disk space of the input's data; memory is
// one buffer. The caller closes the file. Cancelling ctx stops the copy
// between reads.
func OpenStdin(ctx context.Context, r *os.File, dir string) (*StdinFile, error) {
	if fi, err := r.Stat(); err == nil && fi.Mode().IsRegular() {
		size, err := r.Seek(0, io.SeekEnd)
		if err == nil {
			return &StdinFile{File: r, size: size}, nil
		}
	}
	f, err := openAnonymous(dir, "stdin")
	if err != nil {
		return nil, fmt.Errorf("standard input: spooling into %s: %w", dirOrTemp(dir), err)
	}
	size, err := spool(ctx, f, r)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("standard input: %w", err)
	}
	return &StdinFile{File: f, size: size}, nil
}

// stdinPath names the file open as standard input, for comparing it with
// the output.
func stdinPath() string { return fmt.Sprintf("/proc/self/fd/%d", os.Stdin.Fd()) }

// spool copies r into f, leaving holes for zero blocks, and returns the
// number of bytes copied.
func spool(ctx context.Context, f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := io.ReadFull(r, buf)
		for i := 0; i < n; i += spoolBlock {
			b := buf[i:min(i+spoolBlock, n)]
			if !format.IsZero(b) {
				if _, err := f.WriteAt(b, off+int64(i)); err != nil {
					return 0, err
				}
			}
		}
		off += int64(n)
		if off > format.MaxVirtualSize {
			return 0, fmt.Errorf("more than %d bytes", int64(format.MaxVirtualSize))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return off, f.Truncate(off)
}

func dirOrTemp(dir string) string {
	if dir == "" {
		return os.TempDir()
	}
	return dir
}
