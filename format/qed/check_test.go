package qed_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// qemuCheck runs qemu-img check on an image the test made (no backing
// file) and returns its exit code and JSON output.
func qemuCheck(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	formattest.RequireQemu(t)
	out, err := exec.Command("qemu-img", "check", "--output=json", "-f", "qed", path).Output()
	rc := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		rc = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if len(out) > 0 {
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("qemu-img check output %q: %v", out, err)
		}
	}
	return rc, m
}

// ourCheck runs our Checker and returns qemu-img's exit code for the
// verdict and the result as qemu's JSON keys.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	t.Helper()
	img, err := format.Open(path, "qed", format.Policy{})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer img.Close()
	r, err := img.(format.Checker).Check(context.Background())
	if err != nil {
		t.Fatalf("check %s: %v", path, err)
	}
	b, _ := json.Marshal(r)
	m := map[string]any{}
	json.Unmarshal(b, &m)
	rc := 0
	switch {
	case r.CheckErrors > 0:
		rc = 1
	case r.Corruptions > 0:
		rc = 2
	case r.Leaks > 0:
		rc = 3
	}
	return rc, m, r
}

// compareCheck asserts that qemu-img and diskimg agree on the verdict and
// on every count qemu-img reports.
func compareCheck(t *testing.T, path string) *format.CheckResult {
	t.Helper()
	qrc, qm := qemuCheck(t, path)
	rc, m, r := ourCheck(t, path)
	if rc != qrc {
		t.Errorf("%s: exit code %d, qemu-img %d (ours %+v)", filepath.Base(path), rc, qrc, r)
	}
	for k, v := range qm {
		if k == "filename" || k == "format" {
			continue
		}
		if m[k] != v {
			t.Errorf("%s: %s = %v, qemu-img %v", filepath.Base(path), k, m[k], v)
		}
	}
	for k := range m {
		if _, ok := qm[k]; !ok && k != "problems" && k != "filename" {
			t.Errorf("%s: key %s = %v that qemu-img does not report", filepath.Base(path), k, m[k])
		}
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

// exerciseCheck opens data as qed under the strictest policy and, when
// it opens, runs Check: no panic, no error but I/O, sane counts.
func exerciseCheck(t *testing.T, data []byte) {
	// No directory: whatever the image names cannot be opened.
	mf := &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.img"}
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(mf, "qed")
	if err != nil {
		return
	}
	defer img.Close()
	r, err := img.(format.Checker).Check(context.Background())
	if err != nil {
		return
	}
	if r.Corruptions < 0 || r.Leaks < 0 || r.CheckErrors < 0 || len(r.Problems) > 1001 ||
		int64(len(r.Problems)) > r.Corruptions+r.Leaks+r.CheckErrors {
		t.Fatalf("check result %+v", r)
	}
}

// FuzzCheck runs Check on mutations of the seeds in testdata.
func FuzzCheck(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/qed")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs Check on seeds with random bytes changed: a
// deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	dir := "../../testdata/qed"
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		t.Fatalf("no seeds in %s: %v", dir, err)
	}
	rng := rand.New(rand.NewSource(8))
	for i := 0; i < 3000; i++ {
		d, err := os.ReadFile(filepath.Join(dir, ents[rng.Intn(len(ents))].Name()))
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 1+rng.Intn(4); k++ {
			d[rng.Intn(len(d))] = byte(rng.Intn(256))
		}
		exerciseCheck(t, d)
	}
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
