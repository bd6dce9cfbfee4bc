package convert

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/diskimg/diskimg/format"
)

// Stdin is the source name that means standard input.
const Stdin = "-"

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
// ("" for the system temp dir) that has no name (see format.AnonymousFile), so
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
	f, err := format.AnonymousFile(dir, "stdin")
	if err != nil {
		return nil, fmt.Errorf("standard input: spooling into %s: %w", dirOrTemp(dir), err)
	}
	size, err := format.Spool(ctx, f, r)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("standard input: %w", err)
	}
	return &StdinFile{File: f, size: size}, nil
}

// stdinPath names the file open as standard input, for comparing it with
// the output.
func stdinPath() string { return fmt.Sprintf("/proc/self/fd/%d", os.Stdin.Fd()) }

func dirOrTemp(dir string) string {
	if dir == "" {
		return os.TempDir()
	}
	return dir
}
