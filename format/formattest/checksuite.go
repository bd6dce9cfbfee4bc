package formattest

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
)

// CheckSuite is the structural-check test of one format: clean images
// check clean, patched ones give qemu-img's verdict and name the broken
// structure, random mutations of the seeds neither panic nor hang, and an
// empty huge image checks clean in moments.
type CheckSuite struct {
	Format string
	// QemuChecks is set when qemu-img checks the format: every verdict
	// and count must then agree with it. Otherwise qemu-img must say it
	// cannot (exit 63) and diskimg's verdict stands alone.
	QemuChecks bool
	// Seeds is the directory of seed images for the mutations.
	Seeds string
	// Huge is the size (qemu-img create syntax) of the empty image that
	// must check clean within 2 s.
	Huge  string
	Clean []CleanImage
	// Convert writes the raw image src as the format at dst with
	// diskimg's writer and these -o options (convert.File), for the clean
	// images that are Ours.
	Convert func(src, dst string, options map[string]string) error
	// Mutations, when set, replaces the default run of ExerciseCheck on
	// mutated seeds.
	Mutations func(t *testing.T)
}

// CleanImage is an image that must check clean: made by qemu-img with
// Args, by diskimg's writer with Options when Ours is set (from a raw image
// of Size and Content), or by Make in dir.
type CleanImage struct {
	Name    string
	Size    int64
	Content Content
	Args    []string
	Ours    bool
	Options map[string]string
	Make    func(t *testing.T, dir string) string
}

// Corruption is a patched copy of a seed image: Verdict is qemu-img's exit
// code for it (2 corruptions, 3 leaks only) and Want a text a problem must
// contain.
type Corruption struct {
	Name    string
	Patch   func(d []byte) []byte
	Verdict int
	Want    string
}

// Check checks the image at path with diskimg (and, when it can, with
// qemu-img, which must agree) and returns diskimg's result.
func (s CheckSuite) Check(t *testing.T, path string) *format.CheckResult {
	t.Helper()
	if s.QemuChecks {
		return CompareCheck(t, s.Format, path)
	}
	AssertNoQemuCheck(t, s.Format, path)
	_, _, r := OurCheck(t, s.Format, path)
	return r
}

// Run runs the suite's tests of clean, mutated and huge images.
func (s CheckSuite) Run(t *testing.T) {
	t.Run("clean", func(t *testing.T) {
		RequireQemu(t)
		for _, c := range s.Clean {
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				p := s.make(t, c)
				if r := s.Check(t, p); Verdict(r) != 0 || len(r.Problems) != 0 {
					t.Errorf("clean image: %+v", r)
				}
			})
		}
	})
	t.Run("mutated-seeds", func(t *testing.T) {
		if s.Mutations != nil {
			s.Mutations(t)
			return
		}
		n := 3000
		if testing.Short() {
			n = 300
		}
		MutateSeeds(t, s.Seeds, n, 8, func(d []byte) { ExerciseCheck(t, s.Format, d) })
	})
	t.Run("empty-huge", func(t *testing.T) {
		p := filepath.Join(QemuDir(t), "huge.img")
		Create(t, p, s.Format, s.Huge)
		t0 := time.Now()
		rc, _, r := OurCheck(t, s.Format, p)
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("check took %v", d)
		}
		if rc != 0 || len(r.Problems) != 0 {
			t.Errorf("exit %d, %+v", rc, r)
		}
		s.Check(t, p)
	})
}

func (s CheckSuite) make(t *testing.T, c CleanImage) string {
	if c.Make != nil {
		return c.Make(t, t.TempDir())
	}
	if c.Ours {
		dir := t.TempDir()
		src, p := filepath.Join(dir, "src.raw"), filepath.Join(dir, c.Name+".img")
		MakeRaw(t, src, c.Size, c.Content)
		if err := s.Convert(src, p, c.Options); err != nil {
			t.Fatalf("convert to %s: %v", s.Format, err)
		}
		return p
	}
	return Generate(t, t.TempDir(), c.Name, s.Format, c.Size, c.Content, c.Args...)
}

// Corrupt checks a patched copy of data for each case. A test declares
// `type corruption formattest.Corruption` so its case tables may list the
// fields in order, unkeyed.
func Corrupt[C ~struct {
	Name    string
	Patch   func(d []byte) []byte
	Verdict int
	Want    string
}](t *testing.T, s CheckSuite, data []byte, cases []C) {
	dir := t.TempDir()
	for _, cc := range cases {
		c := Corruption(cc)
		t.Run(c.Name, func(t *testing.T) {
			r := s.Check(t, Patched(t, dir, c.Name+".img", data, c.Patch))
			if v := Verdict(r); v != c.Verdict {
				t.Errorf("verdict %d, want %d: %+v", v, c.Verdict, r)
			}
			if !strings.Contains(strings.Join(r.Problems, "\n"), c.Want) {
				t.Errorf("problems %q do not name %q", r.Problems, c.Want)
			}
		})
	}
}

// Fuzz runs the check on mutations of the seeds (see ExerciseCheck).
func (s CheckSuite) Fuzz(f *testing.F) {
	AddSeeds(f, s.Seeds)
	f.Fuzz(func(t *testing.T, data []byte) { ExerciseCheck(t, s.Format, data) })
}

// ExerciseMutatedHeaders opens seeds from dir with one to four random
// bytes changed, mostly in the first 512 bytes (the header), and runs
// Exercise on each: a deterministic complement to a fuzz test that needs
// no fuzzing time.
func ExerciseMutatedHeaders(t *testing.T, fmtName, dir string) {
	n := 500
	if testing.Short() {
		n = 100
	}
	MutateSeedsAt(t, dir, n, 1, 512, func(d []byte) { Exercise(t, d, fmtName) })
}

// BasicClean is the start of every suite's Clean list: an empty image, a
// sparse one of sparseSize bytes (an odd size where the format allows
// one) and a dense one.
func BasicClean(sparseSize int64) []CleanImage {
	return []CleanImage{
		{Name: "empty", Size: 64 << 20, Content: Empty},
		{Name: "sparse", Size: sparseSize, Content: Sparse},
		{Name: "dense", Size: 5 << 20, Content: Dense},
	}
}

// Image makes an image of the suite's format with qemu-img (Args as for
// Generate) and returns its bytes, for Corrupt to patch.
func (s CheckSuite) Image(t *testing.T, size int64, c Content, args ...string) []byte {
	t.Helper()
	RequireQemu(t)
	data := ReadFile(t, Generate(t, t.TempDir(), "base", s.Format, size, c, args...))
	return data
}
