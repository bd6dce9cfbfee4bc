package qcow_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// qemuCheck runs qemu-img check on an image the test made.
func qemuCheck(t *testing.T, path string) (int, map[string]any, string) {
	return formattest.QemuCheck(t, "qcow", path)
}

// ourCheck runs diskimg's check on an image of this format.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "qcow", path)
}

// assertNoQemuCheck asserts qemu-img cannot check this format.
func assertNoQemuCheck(t *testing.T, path string) { formattest.AssertNoQemuCheck(t, "qcow", path) }

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
		{"sparse", 16<<20 + 512, formattest.Sparse, nil},
		{"dense", 5 << 20, formattest.Dense, nil},
		{"zeros", 3 << 20, formattest.Zeros, nil},
		{"compressed", 9 << 20, formattest.Sparse, []string{"-c"}},
		{"compressed-dense", 3 << 20, formattest.Dense, []string{"-c"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p string
			if len(c.args) > 0 {
				// qemu-img 7.2 exits 1 after a complete compressed
				// conversion to qcow (see qcow_test.go): judge it by compare.
				src := filepath.Join(dir, c.name+".raw")
				formattest.MakeRaw(t, src, c.size, c.cont)
				p = filepath.Join(dir, c.name+".qcow")
				exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow", "-c", src, p).Run()
				formattest.Qemu(t, "compare", "-q", "-f", "raw", "-F", "qcow", src, p)
			} else {
				p = formattest.Generate(t, dir, c.name, "qcow", c.size, c.cont, c.args...)
			}
			assertNoQemuCheck(t, p)
			if rc, _, r := ourCheck(t, p); rc != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
}

func TestCheckCorrupt(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	base := formattest.Generate(t, dir, "base", "qcow", 5<<20, formattest.Dense)
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	l1 := int(be.Uint64(data[40:]))
	l2 := int(be.Uint64(data[l1:]))
	c0 := int(be.Uint64(data[l2:]))
	for _, c := range []struct {
		name  string
		patch func(d []byte) []byte
		want  string
	}{
		{"duplicate-cluster", func(d []byte) []byte {
			be.PutUint64(d[l2+8:], uint64(c0))
			return d
		}, fmt.Sprintf("data cluster of L2 table entry 1 of L1 table entry 0 at offset %d overlaps the data cluster of L2 table entry 0 of L1 table entry 0 at offset %d", l2+8, l2)},
		{"cluster-past-eof", func(d []byte) []byte {
			be.PutUint64(d[l2+16:], uint64(len(d)))
			return d
		}, fmt.Sprintf("data cluster of L2 table entry 2 of L1 table entry 0 at offset %d: 4096 bytes at offset %d extend past the end of the file", l2+16, len(data))},
		{"cluster-over-l2", func(d []byte) []byte {
			be.PutUint64(d[l2+24:], uint64(l2))
			return d
		}, fmt.Sprintf("data cluster of L2 table entry 3 of L1 table entry 0 at offset %d overlaps the L2 table of L1 table entry 0 at offset %d", l2+24, l2)},
		{"l2-twice", func(d []byte) []byte {
			copy(d[l1+8:l1+16], d[l1:l1+8])
			return d
		}, fmt.Sprintf("L1 table entry 1 at offset %d: L2 table at offset %d is also used by L1 table entry 0", l1+8, l2)},
		{"l2-over-l1", func(d []byte) []byte {
			be.PutUint64(d[l1+16:], uint64(l1))
			return d
		}, fmt.Sprintf("L2 table of L1 table entry 2 at offset %d", l1)},
		{"compressed-past-eof", func(d []byte) []byte {
			be.PutUint64(d[l2+32:], 1<<63|uint64(100)<<(63-12)|uint64(len(d)-50))
			return d
		}, fmt.Sprintf("compressed cluster of L2 table entry 4 of L1 table entry 0 at offset %d: 100 bytes at offset %d extend past the end of the file", l2+32, len(data)-50)},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Patched(t, dir, c.name+".qcow", data, c.patch)
			assertNoQemuCheck(t, p)
			rc, _, r := ourCheck(t, p)
			if rc != 2 || !strings.Contains(strings.Join(r.Problems, "\n"), c.want) {
				t.Errorf("exit %d, problems %q, want %q", rc, r.Problems, c.want)
			}
		})
	}
}

// exerciseCheck runs the check on untrusted bytes (see formattest.ExerciseCheck).
func exerciseCheck(t *testing.T, data []byte) { formattest.ExerciseCheck(t, "qcow", data) }

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/qcow")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs the check on seeds with random bytes
// changed: a deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	formattest.MutateSeeds(t, "../../testdata/qcow", 3000, 8, func(d []byte) { exerciseCheck(t, d) })
}

// TestCheckEmptyHuge checks an empty 2T image: clean, as for qemu-img,
// and quick, since an empty image has next to no metadata.
func TestCheckEmptyHuge(t *testing.T) {
	formattest.RequireQemu(t)
	p := filepath.Join(t.TempDir(), "huge.qcow")
	formattest.Create(t, p, "qcow", "2T")
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
