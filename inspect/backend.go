package inspect

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskimg/diskimg/format"
)

// ErrReadOnly is returned by every write through a Backend.
var ErrReadOnly = errors.New("inspect: image is opened read-only")

// Backend presents a format.Image (qcow2, vmdk, vhd, vhdx, raw) to
// go-diskfs as a read-only backend.Storage, so go-diskfs's partition and
// filesystem readers work on any image format without converting it.
type Backend struct {
	img  format.Image
	name string
	mu   sync.Mutex
	pos  int64
}

var _ backend.Storage = (*Backend)(nil)

// NewBackend wraps img; name is what Stat and Path report.
func NewBackend(img format.Image, name string) *Backend {
	return &Backend{img: img, name: name}
}

// ReadAt reads guest bytes.
func (b *Backend) ReadAt(p []byte, off int64) (int, error) { return b.img.ReadAt(p, off) }

// Read reads at the current position, as os.File does.
func (b *Backend) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.img.ReadAt(p, b.pos)
	b.pos += int64(n)
	if n > 0 && errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// Seek sets the position for Read; SeekEnd is relative to the virtual size.
func (b *Backend) Seek(offset int64, whence int) (int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var base int64
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		base = b.pos
	case io.SeekEnd:
		base = b.img.Size()
	default:
		return 0, errors.New("inspect: invalid whence")
	}
	if base+offset < 0 {
		return 0, errors.New("inspect: negative seek position")
	}
	b.pos = base + offset
	return b.pos, nil
}

// Stat describes the virtual disk as a regular file of its virtual size.
func (b *Backend) Stat() (fs.FileInfo, error) { return diskInfo{b}, nil }

// Close does nothing: the caller owns the image.
func (b *Backend) Close() error { return nil }

// Sys returns an error: there is no OS file to issue ioctls on.
func (b *Backend) Sys() (*os.File, error) { return nil, backend.ErrNotSuitable }

// Writable always fails: images are never modified.
func (b *Backend) Writable() (backend.WritableFile, error) { return nil, ErrReadOnly }

// Path returns the name given to NewBackend.
func (b *Backend) Path() string { return b.name }

type diskInfo struct{ b *Backend }

func (d diskInfo) Name() string       { return d.b.name }
func (d diskInfo) Size() int64        { return d.b.img.Size() }
func (d diskInfo) Mode() fs.FileMode  { return 0o444 }
func (d diskInfo) ModTime() time.Time { return time.Time{} }
func (d diskInfo) IsDir() bool        { return false }
func (d diskInfo) Sys() any           { return nil }
