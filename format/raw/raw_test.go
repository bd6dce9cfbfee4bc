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
