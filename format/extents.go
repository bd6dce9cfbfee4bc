package format

import (
	"fmt"
	"io"
)

// Walk calls fn for every extent of img from off to its end, in order.
func Walk(img Image, off int64, fn func(Extent) error) error {
	size := img.Size()
	for off < size {
		e, err := img.Extent(off)
		if err != nil {
			return err
		}
		if e.Start != off || e.Length <= 0 || e.Length > size-off {
			return fmt.Errorf("%s: extent map returned [%d,+%d) at offset %d", img.Info().Format, e.Start, e.Length, off)
		}
		if err := fn(e); err != nil {
			return err
		}
		off = e.End()
	}
	return nil
}

// NextData returns the first Data extent at or after off, clipped to start
// at off; ok is false when there is none.
func NextData(img Image, off int64) (e Extent, ok bool, err error) {
	err = Walk(img, off, func(x Extent) error {
		if x.Status == Data {
			e, ok = x, true
			return io.EOF
		}
		return nil
	})
	if err == io.EOF {
		err = nil
	}
	return e, ok, err
}

// AllocatedBytes sums the guest bytes that hold data: what `qemu-img map`
// reports with "data": true.
func AllocatedBytes(img Image) (int64, error) {
	var n int64
	err := Walk(img, 0, func(e Extent) error {
		if e.Status == Data {
			n += e.Length
		}
		return nil
	})
	return n, err
}

// ClipRead bounds a ReadAt of len(p) bytes at off to an image of size
// bytes. It returns how many bytes to read and io.EOF when the read is cut
// short (or starts at or past the end), as io.ReaderAt requires.
func ClipRead(p []byte, off, size int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	if int64(len(p)) > size-off {
		return int(size - off), io.EOF
	}
	return len(p), nil
}
