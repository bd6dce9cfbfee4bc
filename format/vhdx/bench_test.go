package vhdx

import (
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// BenchmarkOpenEmpty1TiB opens an empty 1 TiB image, takes its info and
// walks its whole extent map: all metadata work, no guest data.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	for _, v := range []struct{ name, opts string }{
		{"default", "subformat=dynamic"},
		{"1M-blocks", "subformat=dynamic,block_size=1M,block_state_zero=off"},
	} {
		b.Run(v.name, func(b *testing.B) {
			formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, Name, "1T", "-o", v.opts), Name, 1)
		})
	}
}
