package convert

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/diskimg/diskimg/format"
)

// directAlign is the alignment of O_DIRECT transfers: buffer address, file
// offset and length. 4 KiB covers every logical block size in use.
const directAlign = 4096

// directChunk is the largest O_DIRECT transfer through a bounce buffer.
const directChunk = 1 << 20

// openDirect opens path with O_DIRECT and flag; a variable so tests can
// play a filesystem that refuses it.
var openDirect = func(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, flag|syscall.O_DIRECT, 0)
}

// alignedBuf returns n bytes whose address is a multiple of directAlign.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % directAlign); r != 0 {
		skip = directAlign - r
	}
	return b[skip : skip+n : skip+n]
}

func isAligned(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

func alignDown(n int64) int64 { return n &^ (directAlign - 1) }
func alignUp(n int64) int64   { return (n + directAlign - 1) &^ (directAlign - 1) }

// refusedDirect reports an error that means O_DIRECT is not supported here.
func refusedDirect(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP)
}

// DirectFile is an image file read with O_DIRECT (-T none or directsync):
// reads bypass the page cache, through aligned buffers. Where the
// filesystem refuses O_DIRECT it reads through the page cache instead.
type DirectFile struct {
	*format.OSFile // the file opened normally: Name, Size, Fd, fallback reads
	direct         *os.File
	refused        atomic.Bool // the filesystem refused an O_DIRECT read
	bufs           sync.Pool
}

// OpenDirect opens path for reading with O_DIRECT where possible.
func OpenDirect(path string) (format.File, error) {
	f, err := format.OpenFile(path)
	if err != nil {
		return nil, err
	}
	d := &DirectFile{OSFile: f}
	if df, err := openDirect(path, os.O_RDONLY); err == nil {
		d.direct = df
	}
	return d, nil
}

// Direct reports whether reads bypass the page cache.
func (d *DirectFile) Direct() bool { return d.direct != nil && !d.refused.Load() }

// ReadAt reads the aligned blocks around [off, off+len(p)) and copies the
// requested bytes out.
func (d *DirectFile) ReadAt(p []byte, off int64) (int, error) {
	if !d.Direct() || off < 0 {
		return d.OSFile.ReadAt(p, off)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		start := alignDown(pos)
		end := min(alignUp(off+int64(len(p))), start+directChunk)
		buf := d.buffer()
		n, err := d.direct.ReadAt(buf[:end-start], start)
		if refusedDirect(err) && n == 0 {
			d.bufs.Put(buf)
			d.refused.Store(true)
			m, err := d.OSFile.ReadAt(p[done:], pos)
			return done + m, err
		}
		c := 0
		if int64(n) > pos-start {
			c = copy(p[done:], buf[pos-start:n])
		}
		d.bufs.Put(buf)
		done += c
		if done < len(p) && (err != nil || c == 0) {
			if err == nil {
				err = io.EOF
			}
			return done, err
		}
	}
	return done, nil
}

func (d *DirectFile) buffer() []byte {
	if b, ok := d.bufs.Get().([]byte); ok {
		return b
	}
	return alignedBuf(directChunk)
}

// Close closes both descriptors.
func (d *DirectFile) Close() error {
	if d.direct != nil {
		d.direct.Close()
	}
	return d.OSFile.Close()
}
