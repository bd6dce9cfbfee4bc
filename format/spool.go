package format

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// spoolBlock is the unit in which a spooled stream is checked for zeros:
// an all-zero block becomes a hole in the spool file.
const spoolBlock = 64 << 10

// SpoolTemp copies r into a new temporary file in dir ("" for the system
// temp dir) that is unlinked at once, so it leaves nothing behind however
// the process ends, and returns the file and the number of bytes copied.
// It makes a stream (a pipe, a server that cannot send ranges) readable at
// any offset. Zero blocks become holes, so the copy takes the disk space
// of the stream's data; memory is one buffer. The caller closes the file.
// Cancelling ctx stops the copy between reads.
func SpoolTemp(ctx context.Context, dir string, r io.Reader) (*os.File, int64, error) {
	f, err := anonymousTemp(dir)
	if err != nil {
		return nil, 0, err
	}
	size, err := Spool(ctx, f, r)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
}

// anonymousTemp creates a file in dir that has no name: O_TMPFILE where
// the filesystem has it, so not even a kill between creating and
// unlinking can leave it behind; else a temporary name removed at once.
func anonymousTemp(dir string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, ".diskimg-spool")), nil
	}
	f, err := os.CreateTemp(dir, ".diskimg-spool-")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Spool copies r into f from offset 0, leaving holes for zero blocks, and
// truncates f to the number of bytes copied, which it returns. A stream
// longer than MaxVirtualSize is refused.
func Spool(ctx context.Context, f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := io.ReadFull(r, buf)
		for i := 0; i < n; i += spoolBlock {
			b := buf[i:min(i+spoolBlock, n)]
			if !IsZero(b) {
				if _, err := f.WriteAt(b, off+int64(i)); err != nil {
					return 0, err
				}
			}
		}
		off += int64(n)
		if off > MaxVirtualSize {
			return 0, fmt.Errorf("more than %d bytes", int64(MaxVirtualSize))
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
