package convert_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// TestGrowAndHead reads an image grown with zeros and cut to its first
// bytes: the bytes, the extent map and the size agree.
func TestGrowAndHead(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(&formattest.MemFile{Data: data, Path: "/nonexistent/x.raw"}, "raw")
	if err != nil {
		t.Fatal(err)
	}
	grown, err := convert.Grow(img, 100<<10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := convert.Grow(img, 1000); err == nil {
		t.Error("Grow shrank the disk")
	}
	for _, tc := range []struct {
		img  format.Image
		want []byte
	}{
		{grown, append(append([]byte{}, data...), make([]byte, 36<<10)...)},
		{convert.Head(img, 5000), data[:5000]},
		{convert.Head(img, 1<<20), data},
	} {
		if tc.img.Size() != int64(len(tc.want)) || tc.img.Info().VirtualSize != int64(len(tc.want)) {
			t.Errorf("size %d, want %d", tc.img.Size(), len(tc.want))
		}
		got := make([]byte, len(tc.want)+100)
		n, err := tc.img.ReadAt(got, 0)
		if n != len(tc.want) || err != io.EOF || !bytes.Equal(got[:n], tc.want) {
			t.Errorf("ReadAt = %d, %v; want %d bytes and EOF", n, err, len(tc.want))
		}
		var end int64
		if err := format.Walk(tc.img, 0, func(e format.Extent) error {
			if e.Start != end {
				t.Errorf("extent at %d, want %d", e.Start, end)
			}
			if e.Status == format.Data && e.End() > int64(len(data)) {
				t.Errorf("data extent %+v past the image's bytes", e)
			}
			end = e.End()
			return nil
		}); err != nil || end != int64(len(tc.want)) {
			t.Errorf("extent map ends at %d (%v), want %d", end, err, len(tc.want))
		}
	}
}
