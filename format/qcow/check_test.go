package qcow_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

var checks = formattest.CheckSuite{
	Format: "qcow", Seeds: "../../testdata/qcow", Huge: "2T",
	Clean: append(formattest.BasicClean(16<<20+512), []formattest.CleanImage{
		{Name: "zeros", Size: 3 << 20, Content: formattest.Zeros},
		{Name: "compressed", Make: compressed(9<<20, formattest.Sparse)},
		{Name: "compressed-dense", Make: compressed(3<<20, formattest.Dense)},
	}...),
}

type corruption formattest.Corruption

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

// compressed makes a compressed image with qemu-img (convertCompressed).
func compressed(size int64, c formattest.Content) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		src := filepath.Join(dir, "src.raw")
		formattest.MakeRaw(t, src, size, c)
		p := filepath.Join(dir, "img.qcow")
		convertCompressed(t, src, p)
		return p
	}
}

func TestCheckCorrupt(t *testing.T) {
	data := checks.Image(t, 5<<20, formattest.Dense)
	be := binary.BigEndian
	l1 := int(be.Uint64(data[40:]))
	l2 := int(be.Uint64(data[l1:]))
	c0 := int(be.Uint64(data[l2:]))
	formattest.Corrupt(t, checks, data, []corruption{
		{"duplicate-cluster", func(d []byte) []byte {
			be.PutUint64(d[l2+8:], uint64(c0))
			return d
		}, 2, fmt.Sprintf("data cluster of L2 table entry 1 of L1 table entry 0 at offset %d overlaps the data cluster of L2 table entry 0 of L1 table entry 0 at offset %d", l2+8, l2)},
		{"cluster-past-eof", func(d []byte) []byte {
			be.PutUint64(d[l2+16:], uint64(len(d)))
			return d
		}, 2, fmt.Sprintf("data cluster of L2 table entry 2 of L1 table entry 0 at offset %d: 4096 bytes at offset %d extend past the end of the file", l2+16, len(data))},
		{"cluster-over-l2", func(d []byte) []byte {
			be.PutUint64(d[l2+24:], uint64(l2))
			return d
		}, 2, fmt.Sprintf("data cluster of L2 table entry 3 of L1 table entry 0 at offset %d overlaps the L2 table of L1 table entry 0 at offset %d", l2+24, l2)},
		{"l2-twice", func(d []byte) []byte {
			copy(d[l1+8:l1+16], d[l1:l1+8])
			return d
		}, 2, fmt.Sprintf("L1 table entry 1 at offset %d: L2 table at offset %d is also used by L1 table entry 0", l1+8, l2)},
		{"l2-over-l1", func(d []byte) []byte {
			be.PutUint64(d[l1+16:], uint64(l1))
			return d
		}, 2, fmt.Sprintf("L2 table of L1 table entry 2 at offset %d", l1)},
		{"compressed-past-eof", func(d []byte) []byte {
			be.PutUint64(d[l2+32:], 1<<63|uint64(100)<<(63-12)|uint64(len(d)-50))
			return d
		}, 2, fmt.Sprintf("compressed cluster of L2 table entry 4 of L1 table entry 0 at offset %d: 100 bytes at offset %d extend past the end of the file", l2+32, len(data)-50)},
	})
}
