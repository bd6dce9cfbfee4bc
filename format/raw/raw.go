// Package raw reads raw disk images: the file is the disk. Holes in a
// sparse file are found with SEEK_DATA/SEEK_HOLE, so an empty terabyte
// costs one system call.
package raw

import (
	"errors"
	"io"
	"syscall"

	"github.com/diskimg/diskimg/format"
)

// Name is qemu's name for the format.
const Name = "raw"

// Priority makes raw the fallback: it matches every file, so it probes last.
const Priority = 1000

func init() {
	format.Register(&format.Format{
		Name:     Name,
		Priority: Priority,
		Probe:    func(format.File) bool { return true },
		Open:     func(f format.File, _ *format.Opener) (format.Image, error) { return Open(f) },
	})
}

// Image is a raw disk image.
type Image struct {
	f    format.File
	size int64
	fd   int // -1 when the file has no descriptor to seek holes with
}

// Open opens f as a raw image.
func Open(f format.File) (*Image, error) {
	img := &Image{f: f, size: f.Size(), fd: -1}
	if fd, ok := f.(interface{ Fd() uintptr }); ok {
		img.fd = int(fd.Fd())
	}
	return img, nil
}

// ReadAt reads guest bytes, which are the file's bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.size)
	if n == 0 {
		return 0, clipErr
	}
	m, err := img.f.ReadAt(p[:n], off)
	if m < n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file shrank under us
		}
		return m, err
	}
	return m, clipErr
}

// Size returns the file size.
func (img *Image) Size() int64 { return img.size }

// Close closes the file.
func (img *Image) Close() error { return format.CloseFile(img.f) }

// Info describes the image as qemu-img does.
func (img *Image) Info() *format.Info {
	return &format.Info{Format: Name, VirtualSize: img.size}
}

// Extent reports data and holes from the filesystem's view of the file.
func (img *Image) Extent(off int64) (format.Extent, error) {
	if off < 0 || off >= img.size {
		return format.Extent{}, errors.New("raw: extent offset out of range")
	}
	e := format.Extent{Start: off, Length: img.size - off, Status: format.Data, Offset: off}
	if img.fd < 0 {
		return e, nil
	}
	data, err := syscall.Seek(img.fd, off, seekData)
	switch {
	case err == syscall.ENXIO: // no data after off: the rest is a hole
		e.Status = format.Zero
		return e, nil
	case err != nil: // the filesystem cannot tell: treat everything as data
		return e, nil
	case data > off:
		e.Status = format.Zero
		e.Length = min(data, img.size) - off
		return e, nil
	}
	hole, err := syscall.Seek(img.fd, off, seekHole)
	if err == nil && hole > off && hole < img.size {
		e.Length = hole - off
	}
	return e, nil
}

// Whence values for lseek(2) on Linux.
const (
	seekData = 3
	seekHole = 4
)
