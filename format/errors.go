package format

import (
	"errors"
	"fmt"
	"io"
	"syscall"
)

// ErrWrongType is returned by a format's Open when the file is not of that
// format at all (wrong magic), so the registry may try the next one.
var ErrWrongType = errors.New("wrong image type")

// ErrOutsideDirectory is returned when an image refers to a file (backing
// file, extent, parent) that policy does not allow it to open.
var ErrOutsideDirectory = errors.New("refers to a file outside the image directory")

// FormatError reports malformed image metadata: which field, where in the
// file, and what is wrong with it.
type FormatError struct {
	Format string // qemu's format name
	Field  string // the spec's name for the field
	Offset int64  // file offset of the field; -1 when unknown
	Reason string
	Err    error // underlying cause, if any
}

func (e *FormatError) Error() string {
	s := e.Format + ": " + e.Field
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at offset %d", e.Offset)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

// Errorf returns a FormatError for field at file offset off.
func Errorf(format, field string, off int64, reason string, args ...any) *FormatError {
	return &FormatError{Format: format, Field: field, Offset: off, Reason: fmt.Sprintf(reason, args...)}
}

// ReadFull reads len(p) bytes at off. A short read is an error naming the
// field, so truncated files never read as zeros; a read that fails (an
// I/O error) says so, with the offset that failed.
func ReadFull(r io.ReaderAt, p []byte, off int64, format, field string) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return &FormatError{Format: format, Field: field, Offset: off,
			Reason: fmt.Sprintf("reading %d bytes", len(p)), Err: &ReadError{Offset: off + int64(n), Err: err}}
	}
	return &FormatError{Format: format, Field: field, Offset: off,
		Reason: fmt.Sprintf("reading %d bytes: file ends after %d", len(p), n), Err: io.ErrUnexpectedEOF}
}

// ReadError is a read that failed at a file offset: "input/output error
// at offset N".
type ReadError struct {
	Offset int64
	Err    error
}

func (e *ReadError) Error() string {
	msg := e.Err.Error()
	var errno syscall.Errno
	if errors.As(e.Err, &errno) {
		msg = errno.Error() // without the *PathError's "read FILE: "
	}
	return fmt.Sprintf("%s at offset %d", msg, e.Offset)
}

func (e *ReadError) Unwrap() error { return e.Err }
