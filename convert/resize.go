package convert

import (
	"fmt"

	"github.com/diskimg/diskimg/format"
)

// Grow presents img as a disk of size bytes: its own bytes, then zeros.
// Clouds that want whole MiB or GiB disks (Azure, GCP) get them by
// converting a grown image. Shrinking would drop data and is refused.
func Grow(img format.Image, size int64) (format.Image, error) {
	switch {
	case size == img.Size():
		return img, nil
	case size < img.Size():
		return nil, fmt.Errorf("resize to %d bytes would cut the %d-byte disk: diskimg only grows disks", size, img.Size())
	}
	return &resized{Image: img, size: size}, nil
}

// Head presents the first size bytes of img: a target larger than the
// image written into it in place (-n), for verifying what was written.
func Head(img format.Image, size int64) format.Image {
	if size >= img.Size() {
		return img
	}
	return &resized{Image: img, size: size}
}

// resized is img cut or padded with zeros to size bytes.
type resized struct {
	format.Image
	size int64
}

func (g *resized) Size() int64 { return g.size }

func (g *resized) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, g.size)
	if n == 0 {
		return 0, clipErr
	}
	inner := g.Image.Size()
	head := 0
	if off < inner {
		head = int(min(int64(n), inner-off))
		if m, err := g.Image.ReadAt(p[:head], off); m < head {
			return m, err
		}
	}
	clear(p[head:n])
	return n, clipErr
}

func (g *resized) Extent(off int64) (format.Extent, error) {
	if off < 0 || off >= g.size {
		return format.Extent{}, fmt.Errorf("extent offset %d outside the %d-byte disk", off, g.size)
	}
	if off >= g.Image.Size() {
		return format.Extent{Start: off, Length: g.size - off, Status: format.Unallocated, Offset: -1}, nil
	}
	e, err := g.Image.Extent(off)
	if err == nil && e.End() > g.size {
		e.Length = g.size - e.Start
	}
	return e, err
}

func (g *resized) Info() *format.Info {
	info := *g.Image.Info()
	info.VirtualSize = g.size
	return &info
}
