package vhdx

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

var checks = formattest.CheckSuite{
	Format: "vhdx", QemuChecks: true, Seeds: "../../testdata/vhdx", Huge: "2T",
	Clean: append(formattest.BasicClean(16<<20+4096), []formattest.CleanImage{
		{Name: "block1m", Size: 9 << 20, Content: formattest.Sparse, Args: []string{"-o", "block_size=1M"}},
		{Name: "fixed", Size: 3<<20 + 512, Content: formattest.Sparse, Args: []string{"-o", "subformat=fixed"}},
		// 20 blocks of 256 MiB: a sector bitmap entry after the 16th.
		{Name: "bitmap-entries", Make: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "big.vhdx")
			formattest.Create(t, p, "vhdx", "5G", "-o", "block_size=256M")
			return p
		}},
		{Name: "ours-dynamic", Size: 9 << 20, Content: formattest.Sparse, Ours: true},
		{Name: "ours-fixed", Size: 9 << 20, Content: formattest.Sparse, Ours: true, Options: map[string]string{"subformat": "fixed"}},
	}...),
	Convert: func(src, dst string, o map[string]string) error {
		return convert.File(context.Background(), src, "raw", dst, "vhdx", convert.Options{WriterOptions: o})
	},
	Mutations: mutatedSeeds,
}

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

func qemuCheck(t *testing.T, path string) (int, map[string]any, string) {
	return formattest.QemuCheck(t, "vhdx", path)
}

// batLayout returns the BAT region's file offset and the metadata
// region's, from the first region table.
func batLayout(t *testing.T, d []byte) (bat, meta int64) {
	_, bat = regionOffset(t, d, batGUID)
	_, meta = regionOffset(t, d, metadataGUID)
	return bat, meta
}

func TestCheckCorrupt(t *testing.T) {
	dir := t.TempDir()
	data := checks.Image(t, 3<<20, formattest.Dense, "-o", "block_size=1M")
	le := binary.LittleEndian
	bat, meta := batLayout(t, data)
	all := func(r *format.CheckResult) string { return strings.Join(r.Problems, "\n") }

	t.Run("truncated", func(t *testing.T) {
		// qemu-img check's case: "Image has probably been truncated".
		p := formattest.Patched(t, dir, "trunc.vhdx", data, func(d []byte) []byte { return d[:len(d)-(1<<20)] })
		qrc, qm, qerr := qemuCheck(t, p)
		if _, err := format.Open(p, "vhdx", format.Policy{}); err == nil {
			t.Error("Open accepted a truncated image")
		}
		r := formattest.CheckFile(t, p, CheckFile)
		if qrc != 2 || qm["corruptions"] != float64(r.Corruptions) || !strings.Contains(qerr, "points after end of file") {
			t.Errorf("qemu-img: exit %d, %v, %q; ours %+v", qrc, qm, qerr, r)
		}
		want := fmt.Sprintf("BAT entry 2 at offset %d: block at offset", bat+16)
		if !strings.Contains(all(r), want) {
			t.Errorf("problems %q do not name %q", r.Problems, want)
		}
	})
	t.Run("overlaps-metadata", func(t *testing.T) {
		p := formattest.Patched(t, dir, "overlap.vhdx", data, func(d []byte) []byte {
			le.PutUint64(d[bat+8:], uint64(meta)|6)
			return d
		})
		qrc, qm, _ := qemuCheck(t, p)
		r := formattest.CheckFile(t, p, CheckFile)
		if qrc != 2 || qm["corruptions"] != float64(r.Corruptions) {
			t.Errorf("qemu-img: exit %d, %v; ours %+v", qrc, qm, r)
		}
		want := fmt.Sprintf("BAT entry 1 at offset %d: payload block at offset %d overlaps the metadata", bat+8, meta)
		if !strings.Contains(all(r), want) {
			t.Errorf("problems %q do not name %q", r.Problems, want)
		}
	})
	t.Run("bitmap-past-eof", func(t *testing.T) {
		p := filepath.Join(dir, "big.vhdx")
		formattest.Create(t, p, "vhdx", "5G", "-o", "block_size=256M")
		d := formattest.ReadFile(t, p)
		bat, _ := batLayout(t, d)
		p = formattest.Patched(t, dir, "bitmap.vhdx", d, func(d []byte) []byte {
			le.PutUint64(d[bat+16*8:], uint64(len(d))<<1&^(1<<20-1)|6)
			return d
		})
		r := checks.Check(t, p) // Open accepts it: sector bitmaps are not read
		want := fmt.Sprintf("BAT entry 16 at offset %d: block at offset", bat+16*8)
		if r.Corruptions != 1 || !strings.Contains(all(r), want) {
			t.Errorf("ours %+v, want %q", r, want)
		}
	})
	t.Run("region-table-1", func(t *testing.T) {
		p := formattest.Patched(t, dir, "rt1.vhdx", data, func(d []byte) []byte {
			d[192<<10+100] ^= 0xff
			return d
		})
		// qemu-img reads only the first region table and cannot open the
		// file; diskimg opens it with the second and reports the first.
		if qrc, _, qerr := qemuCheck(t, p); qrc != 1 {
			t.Errorf("qemu-img: exit %d, %q", qrc, qerr)
		}
		rc, _, r := formattest.OurCheck(t, "vhdx", p)
		if rc != 2 || !strings.Contains(all(r), "region table 1 at offset 196608: CRC-32C") {
			t.Errorf("ours: exit %d, %+v", rc, r)
		}
	})
	for _, c := range []struct {
		name string
		off  int
	}{{"header-1", 64<<10 + 100}, {"header-2", 128<<10 + 100}, {"region-table-2", 256<<10 + 100}} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Patched(t, dir, c.name+".vhdx", data, func(d []byte) []byte {
				d[c.off] ^= 0xff
				return d
			})
			// One torn copy is what an interrupted update leaves: clean
			// for both.
			if r := checks.Check(t, p); r.Corruptions != 0 {
				t.Errorf("ours %+v", r)
			}
		})
	}
}

// mutatedSeeds runs Check on seeds expanded to full size with random bytes
// changed, mostly in the metadata: a deterministic complement to FuzzCheck.
func mutatedSeeds(t *testing.T) {
	seeds := formattest.Seeds(t, "../../testdata/vhdx")
	rng := rand.New(rand.NewSource(8))
	n := 300 // each expands a seed to megabytes
	if testing.Short() {
		n = 30
	}
	for i := 0; i < n; i++ {
		d := bytes.Clone(seeds[rng.Intn(len(seeds))].Data)
		if x := sparse.Expand(d); x != nil {
			d = x
		}
		for k := 0; k < 1+rng.Intn(4); k++ {
			// Mostly the metadata: the header section, then anywhere.
			p := rng.Intn(min(len(d), 320<<10))
			if rng.Intn(3) == 0 {
				p = rng.Intn(len(d))
			}
			d[p] = byte(rng.Intn(256))
		}
		formattest.ExerciseCheck(t, "vhdx", d)
	}
}
