package vhd_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	_ "github.com/diskimg/diskimg/format/raw"
)

var checks = formattest.CheckSuite{
	Format: "vpc", Seeds: "../../testdata/vhd", Huge: "2000G",
	Clean: append(formattest.BasicClean(16<<20), []formattest.CleanImage{
		{Name: "fixed", Size: 8 << 20, Content: formattest.Sparse, Args: []string{"-o", "subformat=fixed"}},
		{Name: "force-size", Size: 9<<20 + 512, Content: formattest.Sparse, Args: []string{"-o", "force_size=on"}},
		{Name: "ours-dynamic", Size: 9 << 20, Content: formattest.Sparse, Ours: true},
		{Name: "ours-fixed", Size: 9 << 20, Content: formattest.Sparse, Ours: true, Options: map[string]string{"subformat": "fixed"}},
	}...),
	Convert: func(src, dst string, o map[string]string) error {
		return convert.File(context.Background(), src, "raw", dst, "vpc", convert.Options{WriterOptions: o})
	},
}

type corruption formattest.Corruption

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

func TestCheckCorrupt(t *testing.T) {
	data := checks.Image(t, 6<<20, formattest.Dense)
	be := binary.BigEndian
	hdrOff := int(be.Uint64(data[16:]))
	bat := int(be.Uint64(data[hdrOff+16:]))
	tail := len(data) - 512
	formattest.Corrupt(t, checks, data, []corruption{
		{"footer-checksum", func(d []byte) []byte {
			d[tail+70]++
			return d
		}, 2, fmt.Sprintf("footer checksum at offset %d", tail+64)},
		{"footer-differs", func(d []byte) []byte {
			d[tail+70]++
			fixSum(d[tail:], 64)
			return d
		}, 2, fmt.Sprintf("footer at offset %d differs from its copy at offset 0 (first difference at byte", tail)},
		{"footer-missing", func(d []byte) []byte {
			return d[:tail]
		}, 2, fmt.Sprintf("footer at offset %d: no \"conectix\" cookie", tail-512)},
		{"duplicate-block", func(d []byte) []byte {
			copy(d[bat+4:bat+8], d[bat:bat+4])
			return d
		}, 2, fmt.Sprintf("bat entry 1 at offset %d: block at offset %d overlaps the block of bat entry 0", bat+4, int(be.Uint32(data[bat:]))*512)},
		{"block-over-bat", func(d []byte) []byte {
			be.PutUint32(d[bat+8:], uint32(bat/512))
			return d
		}, 2, fmt.Sprintf("bat entry 2 at offset %d: block at offset %d overlaps the BAT at offset %d", bat+8, bat, bat)},
	})
}

// fixSum stores the footer or header checksum of b at field.
func fixSum(b []byte, field int) {
	binary.BigEndian.PutUint32(b[field:], vhdspec.Checksum(b, field))
}
