package vhdx

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/raw"
)

// qemuCheck runs qemu-img check on an image the test made.
func qemuCheck(t *testing.T, path string) (int, map[string]any, string) {
	return formattest.QemuCheck(t, "vhdx", path)
}

// ourCheck runs diskimg's check on an image of this format.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "vhdx", path)
}

// compareCheck asserts diskimg and qemu-img agree on the image.
func compareCheck(t *testing.T, path string) *format.CheckResult {
	return formattest.CompareCheck(t, "vhdx", path)
}

// ourConvert writes the raw image src as "vhdx" at dst with diskimg's writer.
func ourConvert(t *testing.T, src, dst string, opts map[string]string) {
	t.Helper()
	in, err := format.Open(src, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	w, err := format.LookupWriter("vhdx")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := convert.Convert(context.Background(), in, w, f, convert.Options{WriterOptions: opts}); err != nil {
		t.Fatalf("convert to %s: %v", dst, err)
	}
}

// checkFile runs vhdx.CheckFile on path, for files Open refuses.
func checkFile(t *testing.T, path string) *format.CheckResult {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := CheckFile(context.Background(), f)
	if err != nil {
		t.Fatalf("CheckFile %s: %v", path, err)
	}
	return r
}

func TestCheckClean(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		size int64
		cont formattest.Content
		args []string
	}{
		{"empty", 64 << 20, formattest.Empty, nil},
		{"sparse", 16<<20 + 4096, formattest.Sparse, nil},
		{"dense", 5 << 20, formattest.Dense, nil},
		{"block1m", 9 << 20, formattest.Sparse, []string{"-o", "block_size=1M"}},
		{"fixed", 3<<20 + 512, formattest.Sparse, []string{"-o", "subformat=fixed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Generate(t, dir, c.name, "vhdx", c.size, c.cont, c.args...)
			if r := compareCheck(t, p); r.Corruptions != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
	t.Run("bitmap-entries", func(t *testing.T) {
		// 20 blocks of 256 MiB: a sector bitmap entry after the 16th.
		p := filepath.Join(dir, "big.vhdx")
		formattest.Create(t, p, "vhdx", "5G", "-o", "block_size=256M")
		compareCheck(t, p)
	})
	for _, c := range []struct {
		name string
		opts map[string]string
	}{
		{"ours-dynamic", nil},
		{"ours-fixed", map[string]string{"subformat": "fixed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(dir, c.name+".raw")
			formattest.MakeRaw(t, src, 9<<20, formattest.Sparse)
			p := filepath.Join(dir, c.name+".vhdx")
			ourConvert(t, src, p, c.opts)
			if r := compareCheck(t, p); r.Corruptions != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
}

// batLayout returns the BAT region's file offset and the metadata
// region's, from the first region table.
func batLayout(t *testing.T, d []byte) (bat, meta int64) {
	t.Helper()
	rt := d[192<<10:]
	for i := range int(binary.LittleEndian.Uint32(rt[8:])) {
		e := rt[16+32*i:]
		off := int64(binary.LittleEndian.Uint64(e[16:]))
		switch e[0] {
		case 0x66: // 2DC27766-...: the BAT
			bat = off
		case 0x06: // 8B7CA206-...: metadata
			meta = off
		}
	}
	if bat == 0 || meta == 0 {
		t.Fatal("no BAT or metadata region")
	}
	return bat, meta
}

func TestCheckCorrupt(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	base := formattest.Generate(t, dir, "base", "vhdx", 3<<20, formattest.Dense, "-o", "block_size=1M")
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
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
		r := checkFile(t, p)
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
		r := checkFile(t, p)
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
		d, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bat, _ := batLayout(t, d)
		p = formattest.Patched(t, dir, "bitmap.vhdx", d, func(d []byte) []byte {
			le.PutUint64(d[bat+16*8:], uint64(len(d))<<1&^(1<<20-1)|6)
			return d
		})
		r := compareCheck(t, p) // Open accepts it: sector bitmaps are not read
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
		rc, _, r := ourCheck(t, p)
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
			if r := compareCheck(t, p); r.Corruptions != 0 {
				t.Errorf("ours %+v", r)
			}
		})
	}
}

// exerciseCheck runs the check on untrusted bytes (see formattest.ExerciseCheck).
func exerciseCheck(t *testing.T, data []byte) { formattest.ExerciseCheck(t, "vhdx", data) }

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vhdx")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs Check on seeds with random bytes changed: a
// deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	dir := "../../testdata/vhdx"
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		t.Fatalf("no seeds in %s: %v", dir, err)
	}
	rng := rand.New(rand.NewSource(8))
	for i := 0; i < 300; i++ { // each expands a seed to megabytes
		d, err := os.ReadFile(filepath.Join(dir, ents[rng.Intn(len(ents))].Name()))
		if err != nil {
			t.Fatal(err)
		}
		if x := expand(d); x != nil {
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
		exerciseCheck(t, d)
	}
}

// TestCheckEmptyHuge checks an empty 2T image: clean, as for qemu-img,
// and quick, since an empty image has next to no metadata.
func TestCheckEmptyHuge(t *testing.T) {
	formattest.RequireQemu(t)
	p := filepath.Join(t.TempDir(), "huge.vhdx")
	formattest.Create(t, p, "vhdx", "2T")
	t0 := time.Now()
	rc, _, r := ourCheck(t, p)
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("check took %v", d)
	}
	if rc != 0 || len(r.Problems) != 0 {
		t.Errorf("exit %d, %+v", rc, r)
	}
	compareCheck(t, p)
}
