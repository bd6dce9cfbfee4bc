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
	return &grown{Image: img, size: size}, nil
}

type grown struct {
	format.Image
	size int64
}

func (g *grown) Size() int64 { return g.size }

func (g *grown) ReadAt(p []byte, off int64) (int, error) {
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

func (g *grown) Extent(off int64) (format.Extent, error) {
	inner := g.Image.Size()
	if off < inner {
		return g.Image.Extent(off)
	}
	if off >= g.size {
		return format.Extent{}, fmt.Errorf("extent offset %d outside the %d-byte disk", off, g.size)
	}
	return format.Extent{Start: off, Length: g.size - off, Status: format.Unallocated, Offset: -1}, nil
}

func (g *grown) Info() *format.Info {
	info := *g.Image.Info()
	info.VirtualSize = g.size
	return &info
}

// Head presents the first size bytes of img: a target larger than the
// image written into it in place (-n), for verifying what was written.
func Head(img format.Image, size int64) format.Image {
	if size >= img.Size() {
		return img
	}
	return &head{Image: img, size: size}
}

type head struct {
	format.Image
	size int64
}

func (h *head) Size() int64 { return h.size }

func (h *head) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, h.size)
	if n == 0 {
		return 0, clipErr
	}
	if m, err := h.Image.ReadAt(p[:n], off); m < n {
		return m, err
	}
	return n, clipErr
}

func (h *head) Extent(off int64) (format.Extent, error) {
	if off >= h.size {
		return format.Extent{}, fmt.Errorf("extent offset %d outside the %d-byte disk", off, h.size)
	}
	e, err := h.Image.Extent(off)
	if err == nil && e.End() > h.size {
		e.Length = h.size - e.Start
	}
	return e, err
}

func (h *head) Info() *format.Info {
	info := *h.Image.Info()
	info.VirtualSize = h.size
	return &info
}
