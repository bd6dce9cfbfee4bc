package vdi_test

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

var checks = formattest.CheckSuite{
	Format: "vdi", QemuChecks: true, Seeds: "../../testdata/vdi", Huge: "2T",
	Clean: append(formattest.BasicClean(16<<20), []formattest.CleanImage{
		{Name: "static", Size: 5 << 20, Content: formattest.Sparse, Args: []string{"-o", "static=on"}},
	}...),
}

type corruption formattest.Corruption

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

// TestCheckCorrupt patches the block map and header of qemu-made images
// and expects qemu-img's verdict and a problem naming the entry.
func TestCheckCorrupt(t *testing.T) {
	data := checks.Image(t, 4<<20, formattest.Dense)
	offBmap := int(binary.LittleEndian.Uint32(data[0x154:]))
	entry := func(d []byte, i int) uint32 { return binary.LittleEndian.Uint32(d[offBmap+4*i:]) }
	formattest.Corrupt(t, checks, data, []corruption{
		{"duplicate", func(d []byte) []byte {
			put32(d, offBmap+4, entry(d, 0))
			return d
		}, 2, fmt.Sprintf("block map entry 1 at offset %d: block 0 is also used by block map entry 0", offBmap+4)},
		{"too-large", func(d []byte) []byte {
			put32(d, offBmap+8, 4) // block 4 of 4: stored past the last block
			return append(d, make([]byte, 1<<20)...)
		}, 2, fmt.Sprintf("block map entry 2 at offset %d: block index 4 is not below blocks in image (4)", offBmap+8)},
		{"allocated-count", func(d []byte) []byte {
			put32(d, 0x184, 3)
			return d
		}, 2, "blocks allocated at offset 388: header says 3, the block map holds 4"},
	})
}
