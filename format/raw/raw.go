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

// SectorSize is the unit qemu sizes raw disks in: a file of 1000 bytes is
// a disk of 1024, its tail reading as zeros, and a raw file qemu-img
// writes always ends on a whole sector.
const SectorSize = 512

// Image is a raw disk image.
type Image struct {
	format.Base       // Meta.VirtualSize: the file's size rounded up to a sector
	fileSize    int64 // bytes in the file
	fd          int   // -1 when the file has no descriptor to seek holes with
}

// Open opens f as a raw image.
func Open(f format.File) (*Image, error) {
	n := f.Size()
	img := &Image{Base: format.Base{File: f, Meta: format.Info{Format: Name, VirtualSize: fileSize(n)}}, fileSize: n, fd: -1}
	if fd, ok := f.(format.FileDescriptor); ok {
		img.fd = int(fd.Fd())
	}
	return img, nil
}

// ReadAt reads guest bytes, which are the file's bytes.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	n, clipErr := format.ClipRead(p, off, img.Size())
	if n == 0 {
		return 0, clipErr
	}
	inFile := 0
	if off < img.fileSize {
		inFile = int(min(int64(n), img.fileSize-off))
	}
	m, err := img.File.ReadAt(p[:inFile], off)
	if m < inFile {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file shrank under us
		}
		return m, err
	}
	clear(p[inFile:n]) // the partial last sector past the file's end
	return n, clipErr
}

// Extent reports data and holes from the filesystem's view of the file.
func (img *Image) Extent(off int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, errors.New("raw: extent offset out of range")
	}
	if off >= img.fileSize { // the padding of the last sector
		return format.Extent{Start: off, Length: img.Size() - off, Status: format.Zero, Offset: off, File: img.File}, nil
	}
	e := format.Extent{Start: off, Length: img.fileSize - off, Status: format.Data, Offset: off, File: img.File}
	if img.fd < 0 {
		return e, nil
	}
	data, err := syscall.Seek(img.fd, off, seekData)
	switch {
	case err == syscall.ENXIO: // no data after off: the rest is a hole
		e.Status = format.Zero
		e.Length = img.Size() - off
		return e, nil
	case err != nil: // the filesystem cannot tell: treat everything as data
		return e, nil
	case data > off:
		e.Status = format.Zero
		e.Length = min(data, img.fileSize) - off
		return e, nil
	}
	hole, err := syscall.Seek(img.fd, off, seekHole)
	if err == nil && hole > off && hole < img.fileSize {
		e.Length = hole - off
	}
	return e, nil
}

// Whence values for lseek(2) on Linux.
const (
	seekData = 3
	seekHole = 4
)
