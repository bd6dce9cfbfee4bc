package vdi_test

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/vdi"
)

var variants = []formattest.Variant{
	{Name: "dynamic"},
	{Name: "static", Args: []string{"-o", "static=on"}},
}

func TestConformance(t *testing.T) {
	formattest.Run(t, "vdi", variants, formattest.Options{})
	formattest.RunEmptyHuge(t, "vdi", "2T", variants, formattest.Options{})
}

// TestStaticLayout checks that a static image's driver maps it as data
// with host offsets, contiguous across blocks, as its block map lays it
// out, and that the opened image reads the file's holes there as zeros.
func TestStaticLayout(t *testing.T) {
	path := filepath.Join(formattest.QemuDir(t), "s.vdi")
	formattest.Create(t, path, "vdi", "5M", "-o", "static=on")
	img := formattest.Open(t, path, "")
	driver := format.TopLayer(img)
	e, err := driver.Extent(0)
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != format.Data || e.Length != 5<<20 || e.Offset <= 0 {
		t.Fatalf("Extent(0) = %+v, want one data extent over the disk", e)
	}
	e, _ = driver.Extent(3<<20 + 100)
	if e.Length != 2<<20-100 {
		t.Errorf("Extent(3M+100) = %+v", e)
	}
	e, _ = img.Extent(3<<20 + 100)
	if e.Status != format.Zero || !e.HostHole || e.End() != 5<<20 || e.Offset <= 0 {
		t.Errorf("opened image: Extent(3M+100) = %+v, want a hole under the block to the end", e)
	}
}

func openMem(t *testing.T, data []byte) (format.Image, error) {
	return formattest.OpenMem(t, "vdi", data)
}

func put32(d []byte, off int, v uint32) { binary.LittleEndian.PutUint32(d[off:], v) }

// data.vdi is qemu's image of a 1536-byte disk whose one block holds 512
// bytes of 9, 512 of zeros and 512 of 7, trimmed after the disk's bytes.
func TestSeedData(t *testing.T) {
	img, err := openMem(t, formattest.ReadSeed(t, "../../testdata/vdi", "data.vdi"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	want := append(append(bytes.Repeat([]byte{9}, 512), make([]byte, 512)...), bytes.Repeat([]byte{7}, 512)...)
	got := make([]byte, 1536)
	if n, err := img.ReadAt(got, 0); n != 1536 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data.vdi reads wrong bytes")
	}
	e, _ := img.Extent(0)
	if e.Status != format.Data || e.Offset != 1024 || e.Length != 1536 {
		t.Errorf("Extent(0) = %+v", e)
	}
}

// TestDiscarded checks that a discarded block reads as zeros and maps as
// zero, and that an odd disk size is rounded up to whole sectors.
func TestDiscarded(t *testing.T) {
	d := formattest.ReadSeed(t, "../../testdata/vdi", "data.vdi")
	put32(d, 1024-512, 0xfffffffe) // entry 0 of the block map at 0x200
	binary.LittleEndian.PutUint64(d[0x170:], 1500)
	img, err := openMem(t, d)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 1536 {
		t.Errorf("size %d, want 1500 rounded up to 1536", img.Size())
	}
	e, _ := img.Extent(0)
	if e.Status != format.Zero || e.Length != 1536 {
		t.Errorf("Extent(0) = %+v, want zero", e)
	}
	got := make([]byte, 1536)
	img.ReadAt(got, 0)
	if !bytes.Equal(got, make([]byte, 1536)) {
		t.Error("discarded block does not read as zeros")
	}
}

// hostile lets the case table below list its fields unkeyed.
type hostile formattest.Hostile

// TestHostile opens patched images; each must fail with an error naming
// the field at fault.
func TestHostile(t *testing.T) {
	cases := []hostile{
		{"wrong signature", "data.vdi", func(d []byte) []byte { d[0x40] = 0; return d }, "wrong image type", formattest.AtOpenOrRead},
		{"truncated header", "data.vdi", func(d []byte) []byte { return d[:0x100] }, "header", formattest.AtOpenOrRead},
		{"version", "data.vdi", func(d []byte) []byte { put32(d, 0x44, 0x00010000); return d }, "version at offset 68", formattest.AtOpenOrRead},
		{"header size", "data.vdi", func(d []byte) []byte { put32(d, 0x48, 16); return d }, "header size", formattest.AtOpenOrRead},
		{"image type", "data.vdi", func(d []byte) []byte { put32(d, 0x4c, 4); return d }, "image type", formattest.AtOpenOrRead},
		{"sector size", "data.vdi", func(d []byte) []byte { put32(d, 0x168, 4096); return d }, "sector size", formattest.AtOpenOrRead},
		{"block size", "data.vdi", func(d []byte) []byte { put32(d, 0x178, 4096); return d }, "block size", formattest.AtOpenOrRead},
		{"block extra", "data.vdi", func(d []byte) []byte { put32(d, 0x17c, 512); return d }, "block extra", formattest.AtOpenOrRead},
		{"link uuid", "data.vdi", func(d []byte) []byte { d[0x1a8] = 1; return d }, "link UUID", formattest.AtOpenOrRead},
		{"parent uuid", "data.vdi", func(d []byte) []byte { d[0x1c7] = 1; return d }, "parent UUID", formattest.AtOpenOrRead},
		{"too many blocks", "data.vdi", func(d []byte) []byte { put32(d, 0x180, 0x40000000); return d }, "blocks in image", formattest.AtOpenOrRead},
		{"blocks allocated", "data.vdi", func(d []byte) []byte { put32(d, 0x184, 2); return d }, "blocks allocated", formattest.AtOpenOrRead},
		{"disk size vs blocks", "data.vdi", func(d []byte) []byte { binary.LittleEndian.PutUint64(d[0x170:], 2<<20); return d }, "disk size", formattest.AtOpenOrRead},
		{"disk size absurd", "data.vdi", func(d []byte) []byte { binary.LittleEndian.PutUint64(d[0x170:], 1<<62); return d }, "disk size", formattest.AtOpenOrRead},
		{"huge block map", "data.vdi", func(d []byte) []byte {
			put32(d, 0x180, 0x3fffffff) // 4 GiB of block map, claimed
			return d
		}, "offset blocks", formattest.AtOpenOrRead},
		{"block map unaligned", "data.vdi", func(d []byte) []byte { put32(d, 0x154, 0x201); return d }, "offset blocks", formattest.AtOpenOrRead},
		{"block map past EOF", "data.vdi", func(d []byte) []byte { put32(d, 0x154, 1<<30); return d }, "offset blocks", formattest.AtOpenOrRead},
		{"data offset unaligned", "data.vdi", func(d []byte) []byte { put32(d, 0x158, 0x401); return d }, "offset data", formattest.AtOpenOrRead},
		{"block past EOF", "data.vdi", func(d []byte) []byte { put32(d, 0x200, 7); return d }, "block map entry 0", formattest.AtOpenOrRead},
		{"block cut", "data.vdi", func(d []byte) []byte { return d[:len(d)-1] }, "block map entry 0", formattest.AtOpenOrRead},
		{"static cut", "static-truncated.vdi", func(d []byte) []byte { return d }, "block map entry 0", formattest.AtOpenOrRead},
	}
	formattest.RunHostile(t, "vdi", "../../testdata/vdi", cases)
}

func TestProbe(t *testing.T) {
	d := formattest.ReadSeed(t, "../../testdata/vdi", "empty.vdi")
	if !vdi.Probe(&formattest.MemFile{Data: d}) {
		t.Error("Probe rejects a vdi image")
	}
	if vdi.Probe(&formattest.MemFile{Data: d[:0x42]}) {
		t.Error("Probe accepts a cut signature")
	}
}

func FuzzVdi(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vdi")
	f.Fuzz(func(t *testing.T, data []byte) {
		formattest.Exercise(t, data, "vdi")
		// A differencing image alone: the untrusted policy opens no
		// parent, so the chain above refuses it.
		if img, err := vdi.Open(&formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.vdi"}); err == nil {
			img.Backing()
			formattest.ExerciseImage(t, img)
			img.Close()
		}
	})
}

// BenchmarkOpenEmpty1TiB measures open, info and a full extent walk of an
// empty 1 TiB image: metadata time only (a 4 MiB block map).
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, "vdi", "1T"), "", 1)
}

// TestMutatedSeeds exercises the reader on seeds with random bytes changed,
// mostly in the header.
func TestMutatedSeeds(t *testing.T) {
	formattest.ExerciseMutatedHeaders(t, "vdi", "../../testdata/vdi")
}
