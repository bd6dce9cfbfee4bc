package raw_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/raw"
)

func TestConformance(t *testing.T) {
	formattest.Run(t, "raw", []formattest.Variant{{Name: "default"}}, formattest.Options{})
	formattest.RunEmptyHuge(t, "raw", "2T", []formattest.Variant{{Name: "default"}}, formattest.Options{})
}

func FuzzRaw(f *testing.F) { formattest.FuzzOpen(f, "raw", "../../testdata/raw") }

// A raw file whose length is not a whole sector is a disk rounded up to
// one, as qemu sees it; its tail reads as zeros.
func TestOddSizes(t *testing.T) {
	formattest.RequireQemu(t)
	for _, n := range []int64{17, 1000, 4097, 65536 + 511} {
		for _, c := range []formattest.Content{formattest.Dense, formattest.Empty} {
			path := t.TempDir() + "/odd.raw"
			formattest.MakeRaw(t, path, n, c)
			formattest.Check(t, path, formattest.Options{})
		}
	}
}

// blocks is a disk of 3 MiB + 100 bytes: data, a 1 MiB hole, data, zeros.
func blocks() (list []format.Block, want []byte) {
	const size = 3<<20 + 100
	want = make([]byte, (size+511)/512*512)
	d1 := bytes.Repeat([]byte{1}, 1<<20)
	d2 := bytes.Repeat([]byte{2}, 4096)
	copy(want, d1)
	copy(want[2<<20:], d2)
	list = []format.Block{
		{Start: 0, Length: 1 << 20, Status: format.Data, Data: d1},
		{Start: 1 << 20, Length: 1 << 20, Status: format.Unallocated},
		{Start: 2 << 20, Length: 4096, Status: format.Data, Data: d2},
		{Start: 2<<20 + 4096, Length: size - (2<<20 + 4096), Status: format.Zero},
	}
	return list, want
}

func writeAll(t *testing.T, dst format.Target, opts map[string]string) {
	t.Helper()
	list, _ := blocks()
	w, err := raw.NewWriter(dst, format.WriteOptions{Size: list[3].End(), Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	if w.BlockSize() != 1 {
		t.Errorf("BlockSize %d", w.BlockSize())
	}
	formattest.WriteBlocks(t, w, list)
}

func TestWriterFile(t *testing.T) {
	_, want := blocks()
	for _, prealloc := range []string{"", raw.PreallocOff, raw.PreallocFalloc, raw.PreallocFull} {
		path := filepath.Join(t.TempDir(), "out.raw")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		var opts map[string]string
		if prealloc != "" {
			opts = map[string]string{"preallocation": prealloc}
		}
		writeAll(t, f, opts)
		f.Close()
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got, want) {
			t.Fatalf("preallocation=%q: content differs (%d vs %d bytes)", prealloc, len(got), len(want))
		}
		alloc := formattest.Allocated(t, path)
		switch prealloc {
		case "", raw.PreallocOff:
			if alloc > 1<<20+64<<10 {
				t.Errorf("sparse output allocates %d bytes", alloc)
			}
		default:
			if alloc < int64(len(want)) {
				t.Errorf("preallocation=%s allocates only %d of %d bytes", prealloc, alloc, len(want))
			}
		}
	}
}

func TestWriterPipe(t *testing.T) {
	_, want := blocks()
	got := formattest.Piped(t, func(w *os.File) error {
		writeAll(t, w, nil)
		return nil
	})
	if !bytes.Equal(got, want) {
		t.Fatalf("pipe content differs (%d vs %d bytes)", len(got), len(want))
	}
}

func TestWriterErrors(t *testing.T) {
	var buf bytes.Buffer
	w, err := raw.NewWriter(&buf, format.WriteOptions{Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&format.Block{Start: 0, Length: 512, Status: format.Data, Data: make([]byte, 100)}); err == nil || !strings.Contains(err.Error(), "carries 100 bytes") {
		t.Errorf("short data: %v", err)
	}
	w.Write(&format.Block{Start: 0, Length: 1024, Status: format.Zero})
	if err := w.Write(&format.Block{Start: 512, Length: 512, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "arrived after") {
		t.Errorf("out of order block: %v", err)
	}
	if err := w.Write(&format.Block{Start: 1024, Length: 8192, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "past the disk size") {
		t.Errorf("block past the end: %v", err)
	}
	// A destination not at its start is refused.
	f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
	defer f.Close()
	f.Write([]byte("abc"))
	if _, err := raw.NewWriter(f, format.WriteOptions{Size: 4096}); err == nil {
		t.Error("writer accepted a file positioned at 3")
	}
}

func TestWriterRegistered(t *testing.T) {
	wf, err := format.LookupWriter("raw")
	if err != nil {
		t.Fatal(err)
	}
	m, err := wf.Measure(format.WriteOptions{Size: 17, Layout: format.AllData(17)})
	if err != nil || m.Required != 512 || m.FullyAllocated != 512 {
		t.Errorf("measure of a 17-byte disk: %+v, %v (qemu-img says 512)", m, err)
	}
	if err := wf.Validate(format.WriteOptions{Size: 1, Options: map[string]string{"preallocation": "metadata"}}); err == nil {
		t.Error("preallocation=metadata accepted for raw")
	}
}
