package vhdx

import (
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
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
			path := filepath.Join(b.TempDir(), "empty.vhdx")
			formattest.Create(b, path, Name, "1T", "-o", v.opts)
			b.ResetTimer()
			for b.Loop() {
				img, err := format.Open(path, Name, format.Policy{})
				if err != nil {
					b.Fatal(err)
				}
				img.Info()
				calls := 0
				if err := format.Walk(img, 0, func(format.Extent) error { calls++; return nil }); err != nil {
					b.Fatal(err)
				}
				if calls != 1 {
					b.Fatalf("%d extents for an empty image, want 1", calls)
				}
				img.Close()
			}
		})
	}
}
