package vhdspectest

import (
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

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
	if !reflect.DeepEqual(got, want) {
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
