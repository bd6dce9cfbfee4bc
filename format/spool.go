package format

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// spoolBlock is the unit in which a spooled stream is checked for zeros:
// an all-zero block becomes a hole in the spool file.
const spoolBlock = 64 << 10

// SpoolTemp copies r into a new file in dir ("" for the system temp dir)
// that has no name (AnonymousFile), so it leaves nothing behind however
// the process ends, and returns the file and the number of bytes copied.
// It makes a stream (a pipe, a server that cannot send ranges) readable at
// any offset. Zero blocks become holes, so the copy takes the disk space
// of the stream's data; memory is one buffer. The caller closes the file.
// Cancelling ctx stops the copy between reads.
func SpoolTemp(ctx context.Context, dir string, r io.Reader) (*os.File, int64, error) {
	f, err := AnonymousFile(dir, "spool")
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
