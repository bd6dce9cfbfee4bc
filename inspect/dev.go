package inspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// imageError marks a failure to read the image itself (as opposed to
// malformed guest content): Inspect returns it instead of a finding.
type imageError struct{ err error }

func (e *imageError) Error() string { return e.err.Error() }
func (e *imageError) Unwrap() error { return e.err }

// errOutside is returned for reads outside a device: guest metadata that
// points past the end of its partition.
var errOutside = errors.New("outside the device")

// dev is a window of the guest disk: a partition or the whole disk. Every
// read is checked against its bounds.
type dev struct {
	r    io.ReaderAt
	base int64 // offset of the window in the guest disk
	size int64
	// budget is the bytes a filesystem reader may still read, shared by
	// every dev cut from the same one, to bound time on hostile input.
	budget *int64
}

// maxReadBudget bounds the guest bytes one Inspect reads through all
// parsers and file readers together.
const maxReadBudget = 512 << 20

// read returns n bytes at off inside the device.
// header reads the n bytes at off that start a filesystem, with magic at
// magicOff in them; nil, and no error, when d is shorter or the magic
// differs.
func (d dev) header(off int64, n, magicOff int, magic string) ([]byte, error) {
	if d.size < off+int64(n) {
		return nil, nil
	}
	b, err := d.read(off, n)
	if err != nil || string(b[magicOff:magicOff+len(magic)]) != magic {
		return nil, err
	}
	return b, nil
}

func (d dev) read(off int64, n int) ([]byte, error) {
	if off < 0 || n < 0 || off > d.size || int64(n) > d.size-off {
		return nil, fmt.Errorf("read of %d bytes at offset %d: %w (%d bytes)", n, off, errOutside, d.size)
	}
	if d.budget != nil {
		if *d.budget < int64(n) {
			return nil, fmt.Errorf("read budget of %d bytes exhausted", maxReadBudget)
		}
		*d.budget -= int64(n)
	}
	p := make([]byte, n)
	m, err := d.r.ReadAt(p, d.base+off)
	if m < n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, &imageError{fmt.Errorf("reading guest offset %d: %w", d.base+off, err)}
	}
	return p, nil
}

// sub returns the window [off, off+size) of d, clipped to d.
func (d dev) sub(off, size int64) dev {
	if off < 0 || off > d.size {
		off, size = d.size, 0
	}
	size = min(size, d.size-off)
	return dev{r: d.r, base: d.base + off, size: size, budget: d.budget}
}

// blockCache keeps the last blocks read from the image: metadata reads
// are small and clustered (inodes, directory entries, registry cells),
// and in a compressed image each one would inflate a whole cluster.
type blockCache struct {
	r      io.ReaderAt
	size   int64
	blocks map[int64][]byte
	order  []int64 // oldest first
}

const (
	cacheBlock  = 64 << 10
	cacheBlocks = 64 // 4 MiB
)

func newBlockCache(r io.ReaderAt, size int64) *blockCache {
	return &blockCache{r: r, size: size, blocks: map[int64][]byte{}}
}

// ReadAt serves reads smaller than a block from cached blocks; larger
// ones go to the image.
func (c *blockCache) ReadAt(p []byte, off int64) (int, error) {
	if len(p) >= cacheBlock || off < 0 || off >= c.size {
		return c.r.ReadAt(p, off)
	}
	n := 0
	for n < len(p) && off+int64(n) < c.size {
		pos := off + int64(n)
		b, err := c.block(pos / cacheBlock)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], b[pos%cacheBlock:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (c *blockCache) block(i int64) ([]byte, error) {
	if b, ok := c.blocks[i]; ok {
		return b, nil
	}
	b := make([]byte, min(cacheBlock, c.size-i*cacheBlock))
	if m, err := c.r.ReadAt(b, i*cacheBlock); m < len(b) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(c.order) == cacheBlocks {
		delete(c.blocks, c.order[0])
		c.order = c.order[1:]
	}
	c.blocks[i] = b
	c.order = append(c.order, i)
	return b, nil
}

var (
	le = binary.LittleEndian
	be = binary.BigEndian
)

// guid formats a GPT-style mixed-endian GUID (the first three fields are
// little-endian) in lower case, as blkid does.
func guid(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

// uuidBE formats 16 bytes in order, as a standard (big-endian) UUID.
func uuidBE(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// cstr returns b up to its first NUL, with trailing spaces removed.
func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(strings.ToValidUTF8(string(b), "?"), " ")
}

// utf16le decodes UTF-16LE up to the first NUL.
func utf16le(b []byte) string { return format.UTF16Z(b, le) }
