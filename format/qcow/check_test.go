package qcow_test

import (
	"bytes"
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
// file) and returns its exit code, JSON output and standard error.
func qemuCheck(t *testing.T, path string) (int, map[string]any, string) {
	t.Helper()
	formattest.RequireQemu(t)
	cmd := exec.Command("qemu-img", "check", "--output=json", "-f", "qcow", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
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
	return rc, m, stderr.String()
}

// ourCheck runs our Checker and returns qemu-img's exit code for the
// verdict and the result as qemu's JSON keys.
func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	t.Helper()
	img, err := format.Open(path, "qcow", format.Policy{})
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

// patched writes data with patch applied to a new file in dir.
func patched(t *testing.T, dir, name string, data []byte, patch func([]byte) []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, patch(append([]byte(nil), data...)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertNoQemuCheck asserts that qemu-img cannot check the image (exit 63),
// which is why diskimg's verdict stands alone for this format.
func assertNoQemuCheck(t *testing.T, path string) {
	t.Helper()
	if rc, _, stderr := qemuCheck(t, path); rc != 63 || !strings.Contains(stderr, "does not support checks") {
		t.Errorf("qemu-img check: exit %d, %q; want 63", rc, stderr)
	}
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
			p := patched(t, dir, c.name+".qcow", data, c.patch)
			assertNoQemuCheck(t, p)
			rc, _, r := ourCheck(t, p)
			if rc != 2 || !strings.Contains(strings.Join(r.Problems, "\n"), c.want) {
				t.Errorf("exit %d, problems %q, want %q", rc, r.Problems, c.want)
			}
		})
	}
}

// exerciseCheck opens data as qcow under the strictest policy and, when
// it opens, runs Check: no panic, no error but I/O, sane counts.
func exerciseCheck(t *testing.T, data []byte) {
	// No directory: whatever the image names cannot be opened.
	mf := &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.img"}
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(mf, "qcow")
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
	formattest.AddSeeds(f, "../../testdata/qcow")
	f.Fuzz(exerciseCheck)
}

// TestCheckMutatedSeeds runs Check on seeds with random bytes changed: a
// deterministic complement to FuzzCheck.
func TestCheckMutatedSeeds(t *testing.T) {
	dir := "../../testdata/qcow"
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
