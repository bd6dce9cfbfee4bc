package qed_test

import (
	"encoding/binary"
	"fmt"
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
	rc, m, _ := formattest.QemuCheck(t, "qed", path)
	return rc, m
}

// ourCheck runs diskimg's check on an image of this format.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "qed", path)
}

// compareCheck asserts diskimg and qemu-img agree on the image.
func compareCheck(t *testing.T, path string) *format.CheckResult {
	return formattest.CompareCheck(t, "qed", path)
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
		{"zeros", 3 << 20, formattest.Zeros, nil},
		{"cluster4k", 8 << 20, formattest.Sparse, []string{"-o", "cluster_size=4096"}},
		{"cluster1m", 40 << 20, formattest.Sparse, []string{"-o", "cluster_size=1M"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := formattest.Generate(t, dir, c.name, "qed", c.size, c.cont, c.args...)
			if r := compareCheck(t, p); r.Corruptions != 0 || r.Leaks != 0 || len(r.Problems) != 0 {
				t.Errorf("clean image: %+v", r)
			}
		})
	}
}

// TestCheckCorrupt patches L2 entries of a qemu-made image and expects
// qemu-img's verdict and counts and a problem naming the entry.
func TestCheckCorrupt(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	base := formattest.Generate(t, dir, "base", "qed", 3<<20, formattest.Dense)
	data, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	cs := uint64(le.Uint32(data[4:]))
	l1 := le.Uint64(data[40:])
	l2 := le.Uint64(data[l1:])
	entry := func(d []byte, j int) uint64 { return le.Uint64(d[l2+8*uint64(j):]) }
	at := func(j int) string {
		return fmt.Sprintf("L2 table entry %d of L1 entry 0 at offset %d", j, l2+8*uint64(j))
	}
	for _, c := range []struct {
		name         string
		patch        func(d []byte) []byte
		corrupt, lks int64
		want         string
	}{
		{"past-eof", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], uint64(len(d))+10*cs)
			return d
		}, 1, 1, at(1) + ": data cluster"},
		{"duplicate", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], entry(d, 0))
			return d
		}, 1, 1, at(1) + ": cluster at offset"},
		{"unaligned", func(d []byte) []byte {
			le.PutUint64(d[l2+8:], entry(d, 1)+512)
			return d
		}, 1, 1, at(1) + ": data cluster offset"},
		{"leak", func(d []byte) []byte {
			le.PutUint64(d[l2+8*5:], 0)
			return d
		}, 0, 1, "Leaked cluster at offset"},
		{"tail", func(d []byte) []byte {
			return append(d, make([]byte, 2*cs)...)
		}, 0, 2, fmt.Sprintf("Leaked cluster at offset %d", len(data))},
		{"l2-over-l1", func(d []byte) []byte {
			le.PutUint64(d[l1+8:], l1) // L1 entry 1 names the L1 table itself
			return d
		}, 4, 0, fmt.Sprintf("L1 table entry 1 at offset %d: cluster at offset %d is used twice", l1+8, l1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".qed")
			if err := os.WriteFile(p, c.patch(append([]byte(nil), data...)), 0o644); err != nil {
				t.Fatal(err)
			}
			r := compareCheck(t, p)
			if r.Corruptions != c.corrupt || r.Leaks != c.lks {
				t.Errorf("corruptions, leaks = %d, %d, want %d, %d: %q", r.Corruptions, r.Leaks, c.corrupt, c.lks, r.Problems)
			}
			if !strings.Contains(strings.Join(r.Problems, "\n"), c.want) {
				t.Errorf("problems %q do not name %q", r.Problems, c.want)
			}
		})
	}
}

// exerciseCheck runs the check on untrusted bytes (see formattest.ExerciseCheck).
func exerciseCheck(t *testing.T, data []byte) { formattest.ExerciseCheck(t, "qed", data) }

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/qed")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs the check on seeds with random bytes
// changed: a deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	formattest.MutateSeeds(t, "../../testdata/qed", 3000, 8, func(d []byte) { exerciseCheck(t, d) })
}

// TestCheckEmptyHuge checks an empty 2T image: clean, as for qemu-img,
// and quick, since an empty image has next to no metadata.
func TestCheckEmptyHuge(t *testing.T) {
	formattest.RequireQemu(t)
	p := filepath.Join(t.TempDir(), "huge.qed")
	formattest.Create(t, p, "qed", "2T")
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
