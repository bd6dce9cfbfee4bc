package vdi_test

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// qemuCheck runs qemu-img check on an image the test made.
func qemuCheck(t *testing.T, path string) (int, map[string]any) {
	rc, m, _ := formattest.QemuCheck(t, "vdi", path)
	return rc, m
}

// ourCheck runs diskimg's check on an image of this format.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "vdi", path)
}

// compareCheck asserts diskimg and qemu-img agree on the image.
func compareCheck(t *testing.T, path string) *format.CheckResult {
	return formattest.CompareCheck(t, "vdi", path)
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
		{"sparse", 16 << 20, formattest.Sparse, nil},
		{"dense", 5 << 20, formattest.Dense, nil},
		{"static", 5 << 20, formattest.Sparse, []string{"-o", "static=on"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Generate(t, dir, c.name, "vdi", c.size, c.cont, c.args...)
			if r := compareCheck(t, p); r.Corruptions != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
}

// TestCheckCorrupt patches the block map and header of qemu-made images
// and expects qemu-img's verdict and a problem naming the entry.
func TestCheckCorrupt(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	base := formattest.Generate(t, dir, "base", "vdi", 4<<20, formattest.Dense)
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	offBmap := int(binary.LittleEndian.Uint32(data[0x154:]))
	entry := func(d []byte, i int) uint32 { return binary.LittleEndian.Uint32(d[offBmap+4*i:]) }
	for _, c := range []struct {
		name  string
		patch func(d []byte) []byte
		n     int64
		want  string
	}{
		{"duplicate", func(d []byte) []byte {
			put32(d, offBmap+4, entry(d, 0))
			return d
		}, 1, "block map entry 1 at offset " + itoa(offBmap+4) + ": block 0 is also used by block map entry 0"},
		{"too-large", func(d []byte) []byte {
			put32(d, offBmap+8, 4) // block 4 of 4: stored past the last block
			return append(d, make([]byte, 1<<20)...)
		}, 2, "block map entry 2 at offset " + itoa(offBmap+8) + ": block index 4 is not below blocks in image (4)"},
		{"allocated-count", func(d []byte) []byte {
			put32(d, 0x184, 3)
			return d
		}, 1, "blocks allocated at offset 388: header says 3, the block map holds 4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".vdi")
			if err := os.WriteFile(p, c.patch(append([]byte(nil), data...)), 0o644); err != nil {
				t.Fatal(err)
			}
			r := compareCheck(t, p)
			if r.Corruptions != c.n {
				t.Errorf("corruptions = %d, want %d: %q", r.Corruptions, c.n, r.Problems)
			}
			if !strings.Contains(strings.Join(r.Problems, "\n"), c.want) {
				t.Errorf("problems %q do not name %q", r.Problems, c.want)
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// exerciseCheck runs the check on untrusted bytes (see formattest.ExerciseCheck).
func exerciseCheck(t *testing.T, data []byte) { formattest.ExerciseCheck(t, "vdi", data) }

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/vdi")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs the check on seeds with random bytes
// changed: a deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	formattest.MutateSeeds(t, "../../testdata/vdi", 3000, 8, func(d []byte) { exerciseCheck(t, d) })
}

// TestCheckEmptyHuge checks an empty 2T image: clean, as for qemu-img,
// and quick, since an empty image has next to no metadata.
func TestCheckEmptyHuge(t *testing.T) {
	formattest.RequireQemu(t)
	p := filepath.Join(t.TempDir(), "huge.vdi")
	formattest.Create(t, p, "vdi", "2T")
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
