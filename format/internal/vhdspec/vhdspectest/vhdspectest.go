// Package vhdspectest holds what the tests of ZVHD and ZVHD2 share: the
// reference vectors, reads and extent maps, and the structural checks,
// which qemu-img cannot check (it has no driver for them): their verdicts
// stand alone, asserted on patched copies of the reference vectors.
package vhdspectest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// Check checks data as format fmtName the way `diskimg check` does: the
// opened image's check, or, when Open refuses the file's structure, the
// format's CheckFile. It returns the error a check cannot get past.
func Check(fmtName string, data []byte) (*format.CheckResult, error) {
	f := &formattest.MemFile{Data: data, Path: "/nonexistent/x." + fmtName}
	img, err := format.NewOpener(format.Policy{Untrusted: true, NoBacking: true}).OpenImage(f, fmtName)
	if err == nil {
		defer img.Close()
		return img.(format.Checker).Check(context.Background())
	}
	ft, lerr := format.Lookup(fmtName)
	var fe *format.FormatError
	if lerr != nil || ft.CheckFile == nil || !errors.As(err, &fe) {
		return nil, err
	}
	return ft.CheckFile(context.Background(), f)
}

// Run checks a patched copy of seed for each case (formattest.Corruption):
// Verdict is qemu-img check's exit code (0 clean, 2 corruptions, 3 leaks
// only), or -1 when the check must fail with an error; Want is a text the
// error, a problem or, for verdict 0, a warning must contain ("" for a
// file that must check clean without a warning).
func Run[C ~struct {
	Name    string
	Patch   func(d []byte) []byte
	Verdict int
	Want    string
}](t *testing.T, fmtName string, seed []byte, cases []C) {
	for _, cc := range cases {
		c := formattest.Corruption(cc)
		t.Run(c.Name, func(t *testing.T) {
			r, err := Check(fmtName, c.Patch(append([]byte(nil), seed...)))
			if c.Verdict < 0 {
				if err == nil || !strings.Contains(err.Error(), c.Want) {
					t.Fatalf("check: %v, %+v; want an error containing %q", err, r, c.Want)
				}
				return
			}
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			if v := formattest.Verdict(r); v != c.Verdict {
				t.Errorf("verdict %d, want %d: %+v", v, c.Verdict, r)
			}
			found := append(r.Problems, r.Warnings...)
			if c.Want == "" && len(found) > 0 || !strings.Contains(strings.Join(found, "\n"), c.Want) {
				t.Errorf("findings %q; want one containing %q", found, c.Want)
			}
		})
	}
}

// Clean asserts that data checks clean, without a warning.
func Clean(t *testing.T, fmtName, name string, data []byte) {
	t.Helper()
	r, err := Check(fmtName, data)
	switch {
	case err != nil:
		t.Errorf("%s: check: %v", name, err)
	case formattest.Verdict(r) != 0 || len(r.Problems) > 0 || len(r.Warnings) > 0:
		t.Errorf("%s: not clean: %+v", name, r)
	}
}

// Exercise runs the check on data, an arbitrary file, both ways: on the
// opened image (formattest.ExerciseCheck) and through CheckFile on a file
// Open may refuse. Neither may panic, hang or give counts that make no
// sense.
func Exercise(t testing.TB, fmtName string, data []byte) {
	formattest.ExerciseCheck(t, fmtName, data)
	ft, err := format.Lookup(fmtName)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ft.CheckFile(context.Background(), &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.img"})
	if err != nil {
		return
	}
	if r.Corruptions < 0 || r.Leaks < 0 || r.CheckErrors < 0 || len(r.Problems) > format.MaxProblems || len(r.Warnings) > format.MaxProblems ||
		int64(len(r.Problems)) > r.Corruptions+r.Leaks+r.CheckErrors || r.AllocatedClusters > r.TotalClusters {
		t.Fatalf("check result %+v", r)
	}
}

// vectors holds the files written by Huawei's driver (see
// testdata/README.md), relative to a format package's directory.
const vectors = "../../testdata/external/zvhd2-vectors.tar.zst"

// ReadVector returns the reference vector name.
func ReadVector(t testing.TB, name string) []byte {
	t.Helper()
	return formattest.ArchiveFile(t, vectors, name)
}

// VectorPath extracts the reference vector name into a temporary
// directory and returns its path.
func VectorPath(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(formattest.Extract(t, vectors, name), name)
}

// ReadAll reads the whole disk in odd-sized chunks that straddle blocks.
func ReadAll(t testing.TB, img format.Image) []byte {
	t.Helper()
	got := make([]byte, img.Size())
	for off := int64(0); off < img.Size(); off += 1<<20 + 4608 {
		n := min(1<<20+4608, img.Size()-off)
		if m, err := img.ReadAt(got[off:off+n], off); int64(m) != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, m, err)
		}
	}
	return got
}

// WantReads reads n bytes at each offset in turn, in that order (so
// backwards too, through the readers' block cache), and compares them with
// disk, the whole disk's bytes. Only a read across the end may give io.EOF.
func WantReads(t testing.TB, img format.Image, disk []byte, n int64, offs ...int64) {
	t.Helper()
	for _, off := range offs {
		got := make([]byte, n)
		m, err := img.ReadAt(got, off)
		want := disk[off:min(off+n, int64(len(disk)))]
		eofOK := err == io.EOF && off+n > img.Size()
		if m != len(want) || err != nil && !eofOK || !bytes.Equal(got[:m], want) {
			t.Errorf("ReadAt(%d, %d) = %d, %v: % x, want % x", off, n, m, err, got[:m], want)
		}
	}
}

type ext struct {
	Start, Length int64
	Status        format.Status
}

// WantExtents asserts the extent map of img: runs alternating between
// first and the other of Data and Zero, ending at ends. Data is
// compressed and Zero is not; neither has a host offset.
func WantExtents(t testing.TB, img format.Image, first format.Status, ends ...int64) {
	t.Helper()
	var want []ext
	s, start := first, int64(0)
	for _, end := range ends {
		want = append(want, ext{start, end - start, s})
		start = end
		if s = format.Zero; want[len(want)-1].Status == format.Zero {
			s = format.Data
		}
	}
	var got []ext
	err := format.Walk(img, 0, func(e format.Extent) error {
		if e.Offset != -1 || e.Compressed != (e.Status == format.Data) {
			t.Errorf("extent %+v: want Offset -1, Compressed for data only", e)
		}
		got = append(got, ext{e.Start, e.Length, e.Status})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("extents %v\nwant %v", got, want)
	}
}

// MustFailAs asserts that err is a *format.FormatError of format fmtName
// naming field.
func MustFailAs(t testing.TB, err error, fmtName, field string) {
	t.Helper()
	var fe *format.FormatError
	switch {
	case err == nil:
		t.Fatalf("accepted; want an error naming %q", field)
	case !errors.As(err, &fe):
		t.Fatalf("error %v is not a *format.FormatError", err)
	case fe.Field != field || !strings.HasPrefix(err.Error(), fmtName+": "+field):
		t.Fatalf("error %q does not name %q", err, field)
	}
}
