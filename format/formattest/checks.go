package formattest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// Verdict is qemu-img check's exit code for a result: 1 check errors,
// 2 corruptions, 3 leaks only, 0 clean.
func Verdict(r *format.CheckResult) int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// QemuCheck runs `qemu-img check --output=json -f fmt` on an image the
// test made (no backing file) and returns its exit code, JSON output and
// standard error.
func QemuCheck(t testing.TB, fmtName, path string) (int, map[string]any, string) {
	t.Helper()
	RequireQemu(t)
	cmd := exec.Command("qemu-img", "check", "--output=json", "-f", fmtName, path)
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

// OurCheck opens path as fmt and runs its Checker; it returns the exit
// code qemu-img would give the verdict, the result under qemu's JSON keys
// and the result itself.
func OurCheck(t testing.TB, fmtName, path string) (int, map[string]any, *format.CheckResult) {
	t.Helper()
	img, err := format.Open(path, fmtName, format.Policy{})
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
	return Verdict(r), m, r
}

// CheckFile runs check (a driver's CheckFile) on the file at path, for
// files Open refuses.
func CheckFile(t testing.TB, path string, check func(context.Context, format.File) (*format.CheckResult, error)) *format.CheckResult {
	t.Helper()
	f, err := format.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := check(context.Background(), f)
	if err != nil {
		t.Fatalf("CheckFile %s: %v", path, err)
	}
	return r
}

// CompareCheck asserts that qemu-img and diskimg agree on the verdict and
// on every count qemu-img reports, and that diskimg reports no key qemu
// does not.
func CompareCheck(t testing.TB, fmtName, path string) *format.CheckResult {
	t.Helper()
	qrc, qm, _ := QemuCheck(t, fmtName, path)
	rc, m, r := OurCheck(t, fmtName, path)
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

// AssertNoQemuCheck asserts that qemu-img cannot check the image (exit
// 63), which is why diskimg's verdict stands alone for the format.
func AssertNoQemuCheck(t testing.TB, fmtName, path string) {
	t.Helper()
	if rc, _, stderr := QemuCheck(t, fmtName, path); rc != 63 || !strings.Contains(stderr, "does not support checks") {
		t.Errorf("qemu-img check: exit %d, %q; want 63", rc, stderr)
	}
}

// Patched writes a copy of data with patch applied to dir/name.
func Patched(t testing.TB, dir, name string, data []byte, patch func([]byte) []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	WriteFile(t, p, patch(append([]byte(nil), data...)))
	return p
}

// ExerciseCheck opens data as fmt under the strictest policy and, when it
// opens, runs its Checker: no panic, no error but I/O, sane counts.
func ExerciseCheck(t testing.TB, fmtName string, data []byte) {
	// No directory: whatever the image names cannot be opened.
	mf := &MemFile{Data: data, Path: "/nonexistent/fuzz.img"}
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(mf, fmtName)
	if err != nil {
		return
	}
	defer img.Close()
	ch, ok := img.(format.Checker)
	if !ok {
		return
	}
	r, err := ch.Check(context.Background())
	if err != nil {
		return
	}
	if r.Corruptions < 0 || r.Leaks < 0 || r.CheckErrors < 0 || len(r.Problems) > 1001 || len(r.Warnings) > 1000 ||
		int64(len(r.Problems)) > r.Corruptions+r.Leaks+r.CheckErrors {
		t.Fatalf("check result %+v", r)
	}
}

// MutateSeeds calls fn n times with a copy of a seed file from dir with
// one to four random bytes changed; the same seed gives the same inputs,
// a deterministic complement to a fuzz test.
func MutateSeeds(t testing.TB, dir string, n int, seed int64, fn func([]byte)) {
	MutateSeedsAt(t, dir, n, seed, 0, fn)
}

// MutateSeedsAt is MutateSeeds with two changes in three among the first
// head bytes (the header) when head is not 0.
func MutateSeedsAt(t testing.TB, dir string, n int, seed, head int64, fn func([]byte)) {
	t.Helper()
	seeds := Seeds(t, dir)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < n; i++ {
		d := bytes.Clone(seeds[rng.Intn(len(seeds))].Data)
		if len(d) == 0 {
			continue
		}
		for k := 0; k < 1+rng.Intn(4); k++ {
			var p int
			if head == 0 {
				p = rng.Intn(len(d))
			} else if p = rng.Intn(min(len(d), int(head))); rng.Intn(3) == 0 {
				p = rng.Intn(len(d))
			}
			d[p] = byte(rng.Intn(256))
		}
		fn(d)
	}
}
