package raw

import (
	"fmt"
	"io"
	"syscall"

	"github.com/diskimg/diskimg/format"
)

// Preallocation modes, by qemu-img's -o preallocation values.
const (
	PreallocOff    = "off"    // holes for unallocated and zero ranges
	PreallocFalloc = "falloc" // holes, then fallocate(2) the whole file
	PreallocFull   = "full"   // write zeros into every hole
)

func init() {
	format.RegisterWriter(&format.WriterFormat{
		Name: Name,
		Options: []format.OptionSpec{{
			Name:     "preallocation",
			Help:     "off (sparse, the default), falloc (reserve space) or full (write zeros)",
			Validate: format.OneOf(PreallocOff, PreallocFalloc, PreallocFull),
		}},
		New:     format.Creates(NewWriter),
		Measure: Measure,
	})
}

// fileSize is the length of the raw file for a disk of size bytes.
func fileSize(size int64) int64 { return (size + SectorSize - 1) / SectorSize * SectorSize }

// Measure answers qemu-img measure for raw output: the file is the disk,
// rounded up to a whole sector, so both figures are that size.
func Measure(o format.WriteOptions) (format.Measurement, error) {
	n := fileSize(o.Size)
	if o.Layout == nil {
		n = o.Size // qemu-img measure --size takes the size as given
	}
	return format.Measurement{Required: n, FullyAllocated: n}, nil
}

// Writer writes a raw image of the virtual size rounded up to a whole
// sector, as qemu-img does. On a seekable destination (a new, empty
// regular file) it seeks over zero and unallocated blocks and sets the
// final length with Truncate, so the output is sparse; on a pipe it writes
// the zeros. It writes strictly front to back, so a hash of the stream is
// a hash of the file.
type Writer struct {
	dst      format.Target
	rt       format.RandomTarget // nil when dst cannot seek
	size     int64               // virtual size: blocks end here
	fileSize int64               // file length: size rounded up to a sector
	pos      int64               // file offset of the next byte to write
	prealloc string
}

// NewWriter returns a raw writer of o.Size bytes on dst.
func NewWriter(dst format.Target, o format.WriteOptions) (*Writer, error) {
	if o.Size < 0 {
		return nil, fmt.Errorf("raw: negative size %d", o.Size)
	}
	w := &Writer{dst: dst, size: o.Size, fileSize: fileSize(o.Size), prealloc: PreallocOff}
	if p, ok := o.Options["preallocation"]; ok {
		w.prealloc = p
	}
	rt, _, err := format.StartTarget(dst, Name)
	if err != nil {
		return nil, err
	}
	w.rt = rt
	return w, nil
}

// BlockSize is 1: a raw file can end on any byte and have data anywhere.
func (w *Writer) BlockSize() int64 { return 1 }

// Encode does nothing: raw data is stored as it is.
func (w *Writer) Encode(*format.Block) error { return nil }

// Write stores a Data block at its offset and skips (or, on a pipe,
// writes zeros for) everything else.
func (w *Writer) Write(b *format.Block) error {
	if b.Start != w.pos && (w.rt == nil || b.Start < w.pos) {
		if b.Start < w.pos {
			return fmt.Errorf("raw: block at %d arrived after offset %d was written", b.Start, w.pos)
		}
		if err := w.zeros(b.Start - w.pos); err != nil {
			return err
		}
	}
	if b.End() > w.size {
		return fmt.Errorf("raw: block [%d,+%d) past the disk size %d", b.Start, b.Length, w.size)
	}
	if b.Status != format.Data {
		if w.rt == nil || w.prealloc == PreallocFull {
			return w.zeros(b.Length)
		}
		return nil // a hole: seek over it at the next data
	}
	if int64(len(b.Data)) != b.Length {
		return fmt.Errorf("raw: data block [%d,+%d) carries %d bytes", b.Start, b.Length, len(b.Data))
	}
	if w.rt != nil && w.pos != b.Start {
		if _, err := w.rt.Seek(b.Start, io.SeekStart); err != nil {
			return err
		}
		w.pos = b.Start
	}
	n, err := w.dst.Write(b.Data)
	w.pos += int64(n)
	return err
}

// zeros writes n zero bytes at pos.
func (w *Writer) zeros(n int64) error {
	m, err := format.WriteZeros(w.dst, n)
	w.pos += m
	return err
}

// Close sets the file's length (making a trailing hole) or writes the
// trailing zeros, and reserves space for preallocation=falloc.
func (w *Writer) Close() error {
	if w.pos > w.size {
		return fmt.Errorf("raw: wrote %d bytes into a disk of %d", w.pos, w.size)
	}
	if w.rt == nil || w.prealloc == PreallocFull {
		return w.zeros(w.fileSize - w.pos)
	}
	if err := w.rt.Truncate(w.fileSize); err != nil {
		return err
	}
	if w.prealloc == PreallocFalloc && w.fileSize > 0 {
		f, ok := w.dst.(format.FileDescriptor)
		if !ok {
			return fmt.Errorf("raw: preallocation=falloc needs a file destination")
		}
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, w.fileSize); err != nil {
			return fmt.Errorf("raw: preallocation=falloc: %w", err)
		}
	}
	return nil
}
