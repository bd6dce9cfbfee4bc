package vhdspectest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// The disks the tests of both formats write and read.

// Disk returns the first size bytes of the disk whose stored 2 MiB blocks
// are blocks, by block number, the rest zeros: what a parsed file
// describes.
func Disk(blocks map[uint32][]byte, size int64) []byte {
	out := make([]byte, size)
	for b, data := range blocks {
		if s := int64(b) * (2 << 20); s < size {
			copy(out[s:], data)
		}
	}
	return out
}

// ManyRunsSize is the size of the ManyRuns disk: eleven blocks, the last
// one partial.
const ManyRunsSize = 21<<20 + 512

// ManyRuns returns the stored blocks of a disk of ManyRunsSize bytes whose
// data and zero runs alternate, by block number, and the disk's bytes.
func ManyRuns() (blocks map[uint32][]byte, disk []byte) {
	blocks = map[uint32][]byte{}
	for _, b := range []uint32{0, 1, 2, 5, 7, 8, 10} {
		blocks[b] = bytes.Repeat([]byte{byte(b + 1), 0, 7, byte(b)}, 5000)
	}
	return blocks, Disk(blocks, ManyRunsSize)
}

// WantManyRuns asserts that img, the ManyRuns disk, reads as disk, has
// its extent map, and reads right forwards, backwards and in scattered
// order (through the readers' block cache).
func WantManyRuns(t testing.TB, img format.Image, disk []byte) {
	t.Helper()
	const mib = 1 << 20
	if !bytes.Equal(ReadAll(t, img), disk) {
		t.Errorf("bytes differ")
	}
	WantExtents(t, img, format.Data, 6*mib, 10*mib, 12*mib, 14*mib, 18*mib, 20*mib, ManyRunsSize)
	WantReads(t, img, disk, 2, 20*mib, 0, 20*mib+1, 3, 16*mib+3, 2*mib-1, 9*mib, 14*mib)
}

// SeedSource writes the raw disk the writers' fuzz seeds are made from
// and returns its path: 5 MiB and three sectors, with short compressible
// runs naming fmtName in blocks 0 and 1 and in the partial last block, so
// that a seed stays small.
func SeedSource(t testing.TB, fmtName string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(5<<20 + 1536); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 2 << 20, 5 << 20} {
		if _, err := f.WriteAt(bytes.Repeat([]byte(fmt.Sprintf("%s %d ", fmtName, i)), 100+i*50), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return src
}
