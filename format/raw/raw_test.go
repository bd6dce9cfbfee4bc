package raw_test

import (
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/raw"
)

func TestConformance(t *testing.T) {
	formattest.Run(t, "raw", []formattest.Variant{{Name: "default"}}, formattest.Options{})
	formattest.RunEmptyHuge(t, "raw", "2T", []formattest.Variant{{Name: "default"}}, formattest.Options{})
}

func FuzzRaw(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/raw")
	f.Fuzz(func(t *testing.T, data []byte) { formattest.Exercise(t, data, "raw") })
}

// A raw file whose length is not a whole sector is a disk rounded up to
// one, as qemu sees it; its tail reads as zeros.
func TestOddSizes(t *testing.T) {
	formattest.RequireQemu(t)
	for _, n := range []int64{17, 1000, 4097, 65536 + 511} {
		for _, c := range []formattest.Content{formattest.Dense, formattest.Empty} {
			path := t.TempDir() + "/odd.raw"
			formattest.MakeRaw(t, path, n, c)
			formattest.Check(t, path, formattest.Options{})
		}
	}
}
