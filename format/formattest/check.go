package formattest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/diskimg/diskimg/format"
)

// InfoKeys are the `info --output=json` keys diskimg must report exactly as
// qemu-img does.
var InfoKeys = []string{
	"virtual-size", "format", "cluster-size", "actual-size", "dirty-flag",
	"backing-filename", "full-backing-filename", "backing-filename-format",
	"format-specific", "encrypted", "snapshots",
}

// Options tune Check.
type Options struct {
	// Format forces the format; "" lets the registry probe.
	Format string
	// Policy is the open policy; tests of backing chains allow them.
	Policy format.Policy
	// MaxCompare bounds the byte comparison; larger images are compared on
	// their map and on sampled reads only. 0 means 256 MiB.
	MaxCompare int64
	// IgnoreKeys are InfoKeys not compared for this image, each with a
	// reason in the calling test.
	IgnoreKeys []string
	// QemuMapsAllData is set for formats qemu-img has no block status for
	// (VHDX): it maps the whole disk as data, while diskimg reports the
	// real allocation. The map check then only asserts that qemu says data
	// everywhere; CheckBytes proves that what diskimg skips reads as zeros.
	QemuMapsAllData bool
}

// Check asserts that diskimg reads the image at path as qemu-img does: the
// info keys, the data map, and every guest byte.
func Check(t *testing.T, path string, o Options) {
	t.Helper()
	img := openValid(t, path, o)
	defer img.Close()
	CheckInfo(t, path, img, o)
	CheckMap(t, path, img, o)
	CheckBytes(t, path, img, o)
}

// CheckEmpty asserts parity with qemu-img info for an image known to hold
// only zeros (preallocated formats may still map them as data), that the
// extent map covers the disk, and that reads return zeros.
func CheckEmpty(t *testing.T, path string, o Options) {
	t.Helper()
	img := openValid(t, path, o)
	defer img.Close()
	CheckInfo(t, path, img, o)
	var total int64
	err := format.Walk(img, 0, func(e format.Extent) error {
		total += e.Length
		return nil
	})
	if err != nil || total != img.Size() {
		t.Fatalf("extent map: %v, covers %d of %d bytes", err, total, img.Size())
	}
	buf := make([]byte, 64<<10)
	size := img.Size()
	for _, off := range []int64{0, size / 3, size/2 + 4095, size - int64(len(buf))} {
		if off < 0 {
			continue
		}
		n, err := img.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
		if !bytes.Equal(buf[:n], make([]byte, n)) {
			t.Fatalf("empty image reads data at %d", off)
		}
	}
	checkReadAtEnd(t, img)
}

// openValid opens the image at path and reports what Validate finds.
func openValid(t *testing.T, path string, o Options) format.Image {
	t.Helper()
	img, err := format.Open(path, o.Format, o.Policy)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	if err := Validate(img); err != nil {
		t.Errorf("%s: %v", filepath.Base(path), err)
	}
	return img
}

// CheckInfo compares diskimg's info report with qemu-img's on InfoKeys.
func CheckInfo(t *testing.T, path string, img format.Image, o Options) {
	t.Helper()
	// Both tools stat the files for actual-size: flushed first, their
	// allocation no longer changes between the two (delayed allocation
	// adding an extent block, seen as 4 KiB on a VHDX diskimg wrote).
	settle(t, path)
	for _, f := range img.Info().ExtentFiles {
		settle(t, format.FullName(path, f))
	}
	rep, err := format.NewReport(path, img)
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	js, _ := json.Marshal(rep)
	var ours map[string]any
	json.Unmarshal(js, &ours)
	args := []string{}
	if o.Format != "" {
		args = append(args, "-f", o.Format)
	}
	theirs := QemuInfo(t, path, args...)
	ignore := map[string]bool{}
	for _, k := range o.IgnoreKeys {
		ignore[k] = true
	}
	for _, k := range InfoKeys {
		if ignore[k] {
			continue
		}
		a, b := ours[k], theirs[k]
		if k == "full-backing-filename" && a != nil && b != nil {
			// qemu prints it as the image was named on its command line.
			a, b = filepath.Base(a.(string)), filepath.Base(b.(string))
		}
		if !reflect.DeepEqual(a, b) {
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			t.Errorf("%s: info %q: diskimg %s, qemu-img %s", filepath.Base(path), k, ja, jb)
		}
	}
}

// CheckMap compares the guest ranges holding data with `qemu-img map`:
// its "data": true, which includes the holes under allocated blocks
// (HostHole). qemu looks for those holes under some drivers only (under
// qcow2 clusters only when the image looks preallocated), so the zero
// key is compared by the tests of those images.
func CheckMap(t *testing.T, path string, img format.Image, o Options) {
	t.Helper()
	var ours, theirs [][2]int64
	add := func(list *[][2]int64, start, length int64) {
		if n := len(*list); n > 0 && (*list)[n-1][1] == start {
			(*list)[n-1][1] = start + length
			return
		}
		*list = append(*list, [2]int64{start, start + length})
	}
	var total int64
	err := format.Walk(img, 0, func(e format.Extent) error {
		total += e.Length
		if e.Status == format.Data || e.HostHole {
			add(&ours, e.Start, e.Length)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("extent map: %v", err)
	}
	if total != img.Size() {
		t.Errorf("extent map covers %d bytes, virtual size is %d", total, img.Size())
	}
	var args []string
	if o.Format != "" {
		args = append(args, "-f", o.Format)
	}
	for _, e := range QemuMap(t, path, args...) {
		if e.Data {
			add(&theirs, e.Start, e.Length)
		}
	}
	if o.QemuMapsAllData {
		if all := [][2]int64{{0, img.Size()}}; !reflect.DeepEqual(theirs, all) {
			t.Errorf("%s: qemu-img no longer maps the whole disk as data: %v", filepath.Base(path), clip(theirs))
		}
		return
	}
	if !reflect.DeepEqual(ours, theirs) {
		t.Errorf("%s: data ranges differ:\ndiskimg  %v\nqemu-img %v", filepath.Base(path), clip(ours), clip(theirs))
	}
}

func clip(r [][2]int64) [][2]int64 {
	if len(r) > 20 {
		return r[:20]
	}
	return r
}

// CheckBytes compares every guest byte with `qemu-img convert -O raw`, or
// for images larger than the limit, reads samples that must be zero where
// qemu-img's map says zero.
func CheckBytes(t *testing.T, path string, img format.Image, o Options) {
	t.Helper()
	limit := o.MaxCompare
	if limit == 0 {
		limit = 256 << 20
	}
	size := img.Size()
	if size > limit {
		checkSamples(t, path, img, o)
		return
	}
	ref := filepath.Join(t.TempDir(), "ref.raw")
	args := []string{"convert", "-O", "raw"}
	if o.Format != "" {
		args = append(args, "-f", o.Format)
	}
	Qemu(t, append(args, path, ref)...)
	want := ReadFile(t, ref)
	if int64(len(want)) != size {
		t.Fatalf("qemu-img convert gave %d bytes, diskimg virtual size %d", len(want), size)
	}
	// Odd chunk sizes exercise reads that straddle clusters and blocks.
	got := make([]byte, size)
	for off, chunk := int64(0), int64(1<<20+4608); off < size; off += chunk {
		n := min(chunk, size-off)
		m, err := img.ReadAt(got[off:off+n], off)
		if int64(m) != n || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, m, err)
		}
	}
	if i := FirstDiff(got, want); i >= 0 {
		t.Fatalf("%s: byte %d differs from qemu-img convert -O raw: diskimg %#x, qemu-img %#x", filepath.Base(path), i, got[i], want[i])
	}
	checkReadAtEnd(t, img)
}

// FirstDiff returns the first offset at which a and b differ (the shorter
// length when one is a prefix of the other), or -1 when they are equal.
func FirstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkReadAtEnd asserts io.ReaderAt's contract at the end of the disk.
func checkReadAtEnd(t *testing.T, img format.Image) {
	t.Helper()
	size := img.Size()
	buf := make([]byte, 4096)
	n, err := img.ReadAt(buf, size-100)
	if n != 100 || !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt across the end = %d, %v; want 100, io.EOF", n, err)
	}
	n, err = img.ReadAt(buf, size)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt at the end = %d, %v; want 0, io.EOF", n, err)
	}
}

func checkSamples(t *testing.T, path string, img format.Image, o Options) {
	t.Helper()
	buf := make([]byte, 64<<10)
	var args []string
	if o.Format != "" {
		args = append(args, "-f", o.Format)
	}
	for _, e := range QemuMap(t, path, args...) {
		if e.Data {
			continue
		}
		for _, off := range []int64{e.Start, e.Start + e.Length/2, e.Start + e.Length - 1} {
			n := min(int64(len(buf)), e.Start+e.Length-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("ReadAt(%d): %v", off, err)
			}
			if !bytes.Equal(buf[:n], make([]byte, n)) {
				t.Fatalf("offset %d: qemu-img says zero, diskimg read data", off)
			}
		}
	}
	checkReadAtEnd(t, img)
}
