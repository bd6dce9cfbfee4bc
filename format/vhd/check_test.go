package vhd_test

import (
	"context"
	"encoding/binary"
	"fmt"
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
	return formattest.QemuCheck(t, "vpc", path)
}

// ourCheck runs diskimg's check on an image of this format.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "vpc", path)
}

// ourConvert writes the raw image src as "vpc" at dst with diskimg's writer.
func ourConvert(t *testing.T, src, dst string, opts map[string]string) {
	t.Helper()
	in, err := format.Open(src, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	w, err := format.LookupWriter("vpc")
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

// assertNoQemuCheck asserts qemu-img cannot check this format.
func assertNoQemuCheck(t *testing.T, path string) { formattest.AssertNoQemuCheck(t, "vpc", path) }

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
		{"sparse", 16 << 20, formattest.Sparse, nil},
		{"dense", 5 << 20, formattest.Dense, nil},
		{"fixed", 8 << 20, formattest.Sparse, []string{"-o", "subformat=fixed"}},
		{"force-size", 9<<20 + 512, formattest.Sparse, []string{"-o", "force_size=on"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Generate(t, dir, c.name, "vpc", c.size, c.cont, c.args...)
			assertNoQemuCheck(t, p)
			if rc, _, r := ourCheck(t, p); rc != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
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
			p := filepath.Join(dir, c.name+".vhd")
			ourConvert(t, src, p, c.opts)
			if rc, _, r := ourCheck(t, p); rc != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
}

// fixSum stores the footer or header checksum of b at field.
func fixSum(b []byte, field int) {
	var sum uint32
	for i, c := range b {
		if i < field || i >= field+4 {
			sum += uint32(c)
		}
	}
	binary.BigEndian.PutUint32(b[field:], ^sum)
}

func TestCheckCorrupt(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	base := formattest.Generate(t, dir, "base", "vpc", 6<<20, formattest.Dense)
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	hdrOff := int(be.Uint64(data[16:]))
	bat := int(be.Uint64(data[hdrOff+16:]))
	tail := len(data) - 512
	for _, c := range []struct {
		name  string
		patch func(d []byte) []byte
		want  string
	}{
		{"footer-checksum", func(d []byte) []byte {
			d[tail+70]++
			return d
		}, fmt.Sprintf("footer checksum at offset %d", tail+64)},
		{"footer-differs", func(d []byte) []byte {
			d[tail+70]++
			fixSum(d[tail:], 64)
			return d
		}, fmt.Sprintf("footer at offset %d differs from its copy at offset 0 (first difference at byte", tail)},
		{"footer-missing", func(d []byte) []byte {
			return d[:tail]
		}, fmt.Sprintf("footer at offset %d: no \"conectix\" cookie", tail-512)},
		{"duplicate-block", func(d []byte) []byte {
			copy(d[bat+4:bat+8], d[bat:bat+4])
			return d
		}, fmt.Sprintf("bat entry 1 at offset %d: block at offset %d overlaps the block of bat entry 0", bat+4, int(be.Uint32(data[bat:]))*512)},
		{"block-over-bat", func(d []byte) []byte {
			be.PutUint32(d[bat+8:], uint32(bat/512))
			return d
		}, fmt.Sprintf("bat entry 2 at offset %d: block at offset %d overlaps the BAT at offset %d", bat+8, bat, bat)},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Patched(t, dir, c.name+".vhd", data, c.patch)
			assertNoQemuCheck(t, p)
			rc, _, r := ourCheck(t, p)
			if rc != 2 || !strings.Contains(strings.Join(r.Problems, "\n"), c.want) {
				t.Errorf("exit %d, problems %q, want %q", rc, r.Problems, c.want)
			}
		})
	}
}

// exerciseCheck runs the check on untrusted bytes (see formattest.ExerciseCheck).
func exerciseCheck(t *testing.T, data []byte) { formattest.ExerciseCheck(t, "vpc", data) }

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vhd")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs the check on seeds with random bytes
// changed: a deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	formattest.MutateSeeds(t, "../../testdata/vhd", 3000, 8, func(d []byte) { exerciseCheck(t, d) })
}

// TestCheckEmptyHuge checks an empty 2000G image: clean, as for qemu-img,
// and quick, since an empty image has next to no metadata.
func TestCheckEmptyHuge(t *testing.T) {
	formattest.RequireQemu(t)
	p := filepath.Join(t.TempDir(), "huge.vhd")
	formattest.Create(t, p, "vpc", "2000G")
	t0 := time.Now()
	rc, _, r := ourCheck(t, p)
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("check took %v", d)
	}
	if rc != 0 || len(r.Problems) != 0 {
		t.Errorf("exit %d, %+v", rc, r)
	}
	assertNoQemuCheck(t, p)
}
