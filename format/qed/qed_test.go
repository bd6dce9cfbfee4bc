package qed_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qed"
	_ "github.com/diskimg/diskimg/format/raw"
)

var variants = []formattest.Variant{
	{Name: "default"},
	{Name: "cluster4k", Args: []string{"-o", "cluster_size=4096"}},
	{Name: "cluster4k-table16", Args: []string{"-o", "cluster_size=4096,table_size=16"}},
}

func TestConformance(t *testing.T) {
	formattest.Run(t, "qed", variants, formattest.Options{})
	formattest.RunEmptyHuge(t, "qed", "2T", variants[:1], formattest.Options{})
	// Smaller clusters address less: these are the largest sizes qemu
	// creates with them (cluster² × table entries).
	formattest.RunEmptyHuge(t, "qed", "16G", variants[1:2], formattest.Options{})
	formattest.RunEmptyHuge(t, "qed", "256G", variants[2:3], formattest.Options{})
}

// TestBacking checks chains over raw (stored as "do not probe") and over
// qed (probed), a backing file smaller than the overlay, and zero clusters
// hiding backing data.
func TestBacking(t *testing.T) {
	formattest.RequireQemu(t)
	for _, baseFmt := range []string{"raw", "qed"} {
		t.Run(baseFmt, func(t *testing.T) {
			dir := t.TempDir()
			var opts []string
			if baseFmt == "qed" {
				opts = []string{"-o", "cluster_size=4096"}
			}
			base := formattest.Generate(t, dir, "base", baseFmt, 5<<20+512, formattest.Dense, opts...)
			top := filepath.Join(dir, "top.qed")
			formattest.Create(t, top, "qed", "9M", "-b", filepath.Base(base), "-F", baseFmt, "-o", "cluster_size=4096")
			formattest.QemuIO(t, "qed", top, "write -P 0x11 4096 8192", "write -P 0x22 3M 70000", "write -P 0x33 8M 4096", "write -z 1M 64k")
			formattest.Check(t, top, formattest.Options{})

			img := formattest.Open(t, top, "")
			info := img.Info()
			if info.BackingFile != filepath.Base(base) || info.Backing == nil {
				t.Fatalf("backing file %q, opened %v", info.BackingFile, info.Backing != nil)
			}
			if want := map[string]string{"raw": "raw", "qed": ""}[baseFmt]; info.BackingFormat != want {
				t.Errorf("backing format %q, want %q", info.BackingFormat, want)
			}
			for _, c := range []struct {
				off    int64
				status format.Status
				depth  int
			}{
				{0, format.Data, 1},
				{4096, format.Data, 0},
				{1 << 20, format.Zero, 0},
				{7 << 20, format.Unallocated, 0},
			} {
				e, err := img.Extent(c.off)
				if err != nil {
					t.Fatal(err)
				}
				if e.Status != c.status || e.Depth != c.depth {
					t.Errorf("Extent(%d) = %+v, want %v at depth %d", c.off, e, c.status, c.depth)
				}
			}
			e, _ := img.Extent(1 << 20)
			if e.Length != 64<<10 {
				t.Errorf("zero clusters: Extent(1M) = %+v, want 64 KiB", e)
			}
		})
	}
}

// TestDirty checks that the need-check feature is the dirty flag. qemu-img
// 7.2 prints "dirty-flag": false for such an image: opening it arms
// qemu's need-check timer, the drain in qemu-img info fires it, and it
// clears the flag in memory (the header write then fails on the read-only
// file), so qemu-img reports the state after its own repair, not the
// file's. diskimg reports the file as it is; every other key must agree.
func TestDirty(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := formattest.Generate(t, dir, "img", "qed", 1<<20, formattest.Sparse)
	data := formattest.ReadFile(t, path)
	data[16] |= 2 // QED_F_NEED_CHECK
	formattest.WriteFile(t, path, data)
	img := formattest.Open(t, path, "")
	if !img.Info().Dirty {
		t.Error("need-check image is not dirty")
	}
	formattest.CheckInfo(t, path, img, formattest.Options{IgnoreKeys: []string{"dirty-flag"}})
	formattest.CheckMap(t, path, img, formattest.Options{})
	formattest.CheckBytes(t, path, img, formattest.Options{})
	if d, _ := os.ReadFile(path); d[16]&2 == 0 {
		t.Fatal("qemu-img cleared the need-check bit in the file")
	}
}

func TestBackingPolicy(t *testing.T) {
	f := &formattest.MemFile{Data: formattest.ReadSeed(t, "../../testdata/qed", "overlay.qed"), Path: filepath.Join(t.TempDir(), "overlay.qed")}
	_, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(f, "qed")
	if err == nil || !errors.Is(err, format.ErrOutsideDirectory) {
		t.Fatalf("untrusted open of an overlay = %v, want ErrOutsideDirectory", err)
	}
	f.Path = filepath.Join(t.TempDir(), "overlay.qed")
	img, err := format.NewOpener(format.Policy{NoBacking: true}).OpenImage(f, "qed")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := img.Info(); got.BackingFile != "ov.raw" || got.BackingFormat != "raw" {
		t.Errorf("backing %q format %q, want ov.raw, raw", got.BackingFile, got.BackingFormat)
	}
}

func put32(d []byte, off int, v uint32) { binary.LittleEndian.PutUint32(d[off:], v) }
func put64(d []byte, off int, v uint64) { binary.LittleEndian.PutUint64(d[off:], v) }

// l2Of returns the file offset of the first L2 table of data.qed.
func l2Of(d []byte) uint64 {
	return binary.LittleEndian.Uint64(d[binary.LittleEndian.Uint64(d[40:]):])
}

// hostile lets the case table below list its fields unkeyed.
type hostile formattest.Hostile

// TestHostile opens patched copies of data.qed (4 KiB clusters, 4-cluster
// tables); each must fail with an error naming the field at fault.
func TestHostile(t *testing.T) {
	cases := []hostile{
		{"wrong magic", "data.qed", func(d []byte) []byte { d[0] = 'q'; return d }, "wrong image type", formattest.AtOpen},
		{"truncated header", "data.qed", func(d []byte) []byte { return d[:40] }, "header", formattest.AtOpen},
		{"unknown feature", "data.qed", func(d []byte) []byte { put64(d, 16, 1<<10); return d }, "features at offset 16", formattest.AtOpen},
		{"cluster size", "data.qed", func(d []byte) []byte { put32(d, 4, 3000); return d }, "cluster_size", formattest.AtOpen},
		{"cluster size huge", "data.qed", func(d []byte) []byte { put32(d, 4, 1<<31); return d }, "cluster_size", formattest.AtOpen},
		{"table size", "data.qed", func(d []byte) []byte { put32(d, 8, 32); return d }, "table_size", formattest.AtOpen},
		{"header size 0", "data.qed", func(d []byte) []byte { put32(d, 12, 0); return d }, "header_size", formattest.AtOpen},
		{"header size absurd", "data.qed", func(d []byte) []byte { put32(d, 12, 1<<20); return d }, "header_size", formattest.AtOpen},
		{"image size odd", "data.qed", func(d []byte) []byte { put64(d, 48, 131072+1); return d }, "image_size", formattest.AtOpen},
		{"image size absurd", "data.qed", func(d []byte) []byte { put64(d, 48, 1<<60); return d }, "image_size", formattest.AtOpen},
		{"largest tables", "data.qed", func(d []byte) []byte {
			// 64 MiB clusters, 16-cluster tables: the size limit is 2^80
			// bytes and must not wrap; the L1 offset is what is wrong.
			put32(d, 4, 64<<20)
			put32(d, 8, 16)
			put64(d, 48, 1<<50)
			return d
		}, "l1_table_offset", formattest.AtOpen},
		{"L1 past EOF", "data.qed", func(d []byte) []byte { put64(d, 40, 1<<40); return d }, "l1_table_offset", formattest.AtOpen},
		{"L1 unaligned", "data.qed", func(d []byte) []byte { put64(d, 40, 4097); return d }, "l1_table_offset", formattest.AtOpen},
		{"L1 in header", "data.qed", func(d []byte) []byte { put64(d, 40, 0); return d }, "l1_table_offset", formattest.AtOpen},
		{"L1 table cut", "data.qed", func(d []byte) []byte { put64(d, 40, uint64(len(d)-4096)); return d }, "l1_table_offset", formattest.AtOpen},
		{"L2 past EOF", "data.qed", func(d []byte) []byte {
			put64(d, int(binary.LittleEndian.Uint64(d[40:])), 1<<40)
			return d
		}, "L1 table entry 0", formattest.AtOpen},
		{"data past EOF", "data.qed", func(d []byte) []byte { put64(d, int(l2Of(d)), 1<<40); return d }, "L2 table entry 0 of L1 entry 0", formattest.OnRead},
		{"data unaligned", "data.qed", func(d []byte) []byte { put64(d, int(l2Of(d)), l2Of(d)+7); return d }, "L2 table entry 0 of L1 entry 0", formattest.OnRead},
		{"file cut", "data.qed", func(d []byte) []byte { return d[:len(d)-4096] }, "L2 table entry", formattest.OnRead},
		{"backing name outside header", "overlay.qed", func(d []byte) []byte { put32(d, 56, 4093); return d }, "backing_filename_offset", formattest.AtOpen},
		{"backing name too long", "overlay.qed", func(d []byte) []byte { put32(d, 60, 5000); return d }, "backing_filename_size", formattest.AtOpen},
	}
	formattest.RunHostile(t, "qed", "../../testdata/qed", cases)
}

func TestProbe(t *testing.T) {
	d := formattest.ReadSeed(t, "../../testdata/qed", "data.qed")
	if !qed.Probe(&formattest.MemFile{Data: d}) {
		t.Error("Probe rejects a qed image")
	}
	if qed.Probe(&formattest.MemFile{Data: d[:3]}) {
		t.Error("Probe accepts 3 bytes")
	}
}

func FuzzQed(f *testing.F) { formattest.FuzzOpen(f, "qed", "../../testdata/qed") }

// BenchmarkOpenEmpty1TiB measures open, info and a full extent walk of an
// empty 1 TiB image: metadata time only.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, "qed", "1T"), "", 1)
}

// TestMutatedSeeds exercises the reader on seeds with random bytes changed,
// mostly in the header.
func TestMutatedSeeds(t *testing.T) {
	formattest.ExerciseMutatedHeaders(t, "qed", "../../testdata/qed")
}
