// Package raw reads raw disk images: the file is the disk. The opener
// finds the holes of a sparse file (SEEK_DATA/SEEK_HOLE), so an empty
// terabyte costs one system call.
package raw

import (
	"errors"
	"io"

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
		Open:     format.OpensFile(Open),
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
}

// Open opens f as a raw image.
func Open(f format.File) (*Image, error) {
	n := f.Size()
	return &Image{Base: format.Base{File: f, Meta: format.Info{Format: Name, VirtualSize: fileSize(n)}}, fileSize: n}, nil
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

// Extent reports the file as one run of data at its own offsets; the
// opener splits it by the file's holes (see format.Open).
func (img *Image) Extent(off int64) (format.Extent, error) {
	if off < 0 || off >= img.Size() {
		return format.Extent{}, errors.New("raw: extent offset out of range")
	}
	if off >= img.fileSize { // the padding of the last sector
		return format.Extent{Start: off, Length: img.Size() - off, Status: format.Zero, Offset: off, File: img.File}, nil
	}
	return format.Extent{Start: off, Length: img.fileSize - off, Status: format.Data, Offset: off, File: img.File}, nil
}
