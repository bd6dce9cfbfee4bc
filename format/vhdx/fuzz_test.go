package vhdx

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// A VHDX file is at least 3 MiB of mostly zeros (MiB-aligned header
// section, BAT and metadata regions), too large for seed files: seeds are
// kept sparse. The fuzz target opens a sparse input through a sparse
// file, and any other input as it is.
var sparse = formattest.SparseSeed{Magic: "vhdx-sparse\n", Limit: 16 << 20, Grain: 16, Run: 4096} // qemu starts data at 8 MiB

// exerciseLayer exercises the image of f alone: the fuzzer opens no
// other file, so a differencing image's own blocks and sector bitmaps are
// read without its parent.
func exerciseLayer(t *testing.T, f format.File) {
	img, err := Open(f, format.NewOpener(format.Policy{Untrusted: true}))
	if err != nil {
		return
	}
	defer img.Close()
	img.Backing()
	formattest.ExerciseImage(t, img)
}

func FuzzVhdx(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vhdx")
	f.Fuzz(func(t *testing.T, data []byte) {
		if f := sparse.File(data, "/nonexistent/fuzz.vhdx"); f != nil {
			exerciseLayer(t, f)
			return
		}
		formattest.Exercise(t, data, Name)
		exerciseLayer(t, &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.vhdx"})
	})
}

// TestSeeds checks that the sparse seeds expand to images that open, so
// the fuzzer starts from valid files. With VHDX_WRITE_SEEDS=1 it first
// regenerates them with qemu-img.
func TestSeeds(t *testing.T) {
	dir := "../../testdata/vhdx"
	if os.Getenv("VHDX_WRITE_SEEDS") == "1" {
		writeSeeds(t, dir)
	}
	for _, e := range formattest.Seeds(t, dir) {
		b := sparse.Expand(e.Data)
		if b == nil {
			continue
		}
		img, err := openBytes(b)
		if filepath.Ext(e.Name) == ".bad" {
			if err == nil {
				img.Close()
				t.Errorf("%s opened; it is meant to be refused", e.Name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", e.Name, err)
			continue
		}
		if err := format.Walk(img, 0, func(format.Extent) error { return nil }); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		img.Close()
	}
}

func writeSeeds(t *testing.T, dir string) {
	small := func(opts string) []byte {
		return makeImage(t, opts, "4M", "write -P 0x5a 1M 64", "write -P 0x6b 3M 64")
	}
	replay := small("subformat=dynamic,block_size=1M")
	writeLogEntry(t, replay, true)
	sparse.WriteSeeds(t, dir, map[string][]byte{
		"dynamic-1M.sparse":        small("subformat=dynamic,block_size=1M"),
		"dynamic-nozero-1M.sparse": small("subformat=dynamic,block_size=1M,block_state_zero=off"),
		"log-replay.sparse.bad":    replay,
		"differencing-1M.sparse":   diffSeed(t),
	})
}
