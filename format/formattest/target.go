package formattest

import (
	"io"

	"github.com/diskimg/diskimg/format"
)

// WatchedTarget is an output file whose writes a test watches or fails:
// Write and WriteAt both reach OnWrite with their file offsets. It has the
// methods of a format.RandomTarget only (no ReadAt, no Fd), so a writer
// cannot read its output back through it.
type WatchedTarget struct {
	format.RandomTarget
	// OnWrite writes p at off to RandomTarget, or fails.
	OnWrite func(p []byte, off int64) (int, error)
	pos     int64
}

// WriteAt writes p at off through OnWrite.
func (w *WatchedTarget) WriteAt(p []byte, off int64) (int, error) { return w.OnWrite(p, off) }

// Write writes p at the position through OnWrite and moves past it.
func (w *WatchedTarget) Write(p []byte) (int, error) {
	n, err := w.OnWrite(p, w.pos)
	w.pos += int64(n)
	return n, err
}

// Seek moves the position Write writes at.
func (w *WatchedTarget) Seek(off int64, whence int) (int64, error) {
	if whence == io.SeekCurrent {
		off, whence = w.pos+off, io.SeekStart
	}
	pos, err := w.RandomTarget.Seek(off, whence)
	if err != nil {
		return 0, err
	}
	w.pos = pos
	return pos, nil
}
