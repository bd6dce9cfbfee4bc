package zvhd2

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

// BenchmarkOpenEmpty1TiB opens an empty 1 TiB image (16 bitmap segments,
// no index), takes its info and walks its whole extent map.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "empty.zvhd2")
	if err := os.WriteFile(path, spec{origSize: 1 << 40, method: vhdspec.MethodZstd}.build(b), 0o644); err != nil {
		b.Fatal(err)
	}
	formattest.BenchOpenEmpty(b, path, Name, 1)
}

// BenchmarkT2 opens the 64 GiB reference image t2.zvhd2, walks its extent
// map and reads every stored block in full.
func BenchmarkT2(b *testing.B) {
	path := vhdspectest.VectorPath(b, "t2.zvhd2")
	buf := make([]byte, vhdspec.BlockSize)
	for b.Loop() {
		img, err := format.Open(path, Name, format.Policy{})
		if err != nil {
			b.Fatal(err)
		}
		calls := 0
		err = format.Walk(img, 0, func(e format.Extent) error {
			calls++
			if e.Status != format.Data {
				return nil
			}
			for off := e.Start; off < e.End(); off += vhdspec.BlockSize {
				n := min(vhdspec.BlockSize, e.End()-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if calls != 5 {
			b.Fatalf("%d extents, want 5", calls)
		}
		img.Close()
	}
}
