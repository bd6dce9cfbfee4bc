package vdi_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
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
	out, err := exec.Command("qemu-img", "check", "--output=json", "-f", "vdi", path).Output()
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
	img, err := format.Open(path, "vdi", format.Policy{})
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

// exerciseCheck opens data as vdi under the strictest policy and, when
// it opens, runs Check: no panic, no error but I/O, sane counts.
func exerciseCheck(t *testing.T, data []byte) {
	// No directory: whatever the image names cannot be opened.
	mf := &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.img"}
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(mf, "vdi")
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
	formattest.AddSeeds(f, "../../testdata/vdi")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs Check on seeds with random bytes changed: a
// deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	dir := "../../testdata/vdi"
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
