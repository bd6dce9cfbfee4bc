package vmdk_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/raw"
)

var checks = formattest.CheckSuite{
	Format: "vmdk", QemuChecks: true, Seeds: "../../testdata/vmdk",
	// qemu-img preallocates grain tables: 128 MiB of them at 2T, which
	// qemu-img check takes seconds to walk.
	Huge: "256G",
	Clean: append(formattest.BasicClean(16<<20), []formattest.CleanImage{
		{Name: "stream", Size: 16 << 20, Content: formattest.Sparse, Args: []string{"-o", "subformat=streamOptimized"}},
		{Name: "zeroed-grain", Size: 8 << 20, Content: formattest.Zeros, Args: []string{"-o", "zeroed_grain=on"}},
		{Name: "compat6", Size: 8 << 20, Content: formattest.Sparse, Args: []string{"-o", "compat6=on"}},
		{Name: "flat", Size: 8 << 20, Content: formattest.Sparse, Args: []string{"-o", "subformat=monolithicFlat"}},
		{Name: "two-gb-sparse", Size: 8 << 20, Content: formattest.Sparse, Args: []string{"-o", "subformat=twoGbMaxExtentSparse"}},
		{Name: "ours-sparse", Size: 9 << 20, Content: formattest.Sparse, Ours: true},
		{Name: "ours-stream", Size: 9 << 20, Content: formattest.Sparse, Ours: true, Options: map[string]string{"subformat": "streamOptimized"}},
		{Name: "ours-zeroed", Size: 9 << 20, Content: formattest.Sparse, Ours: true, Options: map[string]string{"zeroed_grain": "on"}},
	}...),
	Convert: func(src, dst string, o map[string]string) error {
		return convert.File(context.Background(), src, "raw", dst, "vmdk", convert.Options{WriterOptions: o})
	},
}

func TestCheck(t *testing.T) { checks.Run(t) }

func FuzzCheck(f *testing.F) { checks.Fuzz(f) }

// qemuCheck runs qemu-img check on an image the test made.
func qemuCheck(t *testing.T, path string) (int, map[string]any, string) {
	return formattest.QemuCheck(t, "vmdk", path)
}

func ourCheck(t *testing.T, path string) (int, map[string]any, *format.CheckResult) {
	return formattest.OurCheck(t, "vmdk", path)
}

// TestCheckCorrupt patches grain directory and grain table entries of a
// qemu-made monolithicSparse image.
func TestCheckCorrupt(t *testing.T) {
	dir, data := denseBase(t)
	le := binary.LittleEndian
	gd := int(le.Uint64(data[56:])) * 512
	gt := int(le.Uint32(data[gd:])) * 512
	eofSector := uint32(len(data)/512 + 100)
	// The redundant copies are patched alike: a mismatch between the two
	// is a finding of its own (TestCheckRedundant).
	rgd := int(le.Uint64(data[48:])) * 512
	rgt := int(le.Uint32(data[rgd:])) * 512
	mirror := func(d []byte) []byte {
		copy(d[rgd:rgd+4], d[gd:gd+4])
		copy(d[rgt:rgt+2048], d[gt:gt+2048])
		return d
	}

	t.Run("grain-past-eof", func(t *testing.T) {
		p := formattest.Patched(t, dir, "grain.vmdk", data, func(d []byte) []byte {
			le.PutUint32(d[gt+4:], eofSector)
			le.PutUint32(d[gt+12:], eofSector+128)
			return mirror(d)
		})
		// qemu-img stops at the first such grain and fails the check
		// (exit 1); so does diskimg.
		qrc, _, qerr := qemuCheck(t, p)
		if qrc != 1 || !strings.Contains(qerr, "cluster offset for sector 128 points after EOF") {
			t.Errorf("qemu-img check: exit %d, %q", qrc, qerr)
		}
		rc, _, r := ourCheck(t, p)
		if rc != 1 || r.CheckErrors != 1 || r.Corruptions != 0 || len(r.Problems) != 1 {
			t.Errorf("ours: exit %d, %+v", rc, r)
		}
		want := fmt.Sprintf("grain table entry 1 of grain table 0 at offset %d: grain 1 at sector %d starts past the end of the file", gt+4, eofSector)
		if !strings.Contains(strings.Join(r.Problems, "\n"), want) {
			t.Errorf("problems %q do not name %q", r.Problems, want)
		}
	})
	t.Run("grain-across-eof", func(t *testing.T) {
		p := formattest.Patched(t, dir, "across.vmdk", data, func(d []byte) []byte {
			le.PutUint32(d[gt+8:], uint32(len(d)/512-1))
			return mirror(d)
		})
		// qemu only asks where a grain starts: clean for qemu-img, and
		// for diskimg too, with a warning.
		if qrc, _, qerr := qemuCheck(t, p); qrc != 0 {
			t.Errorf("qemu-img check: exit %d, %q", qrc, qerr)
		}
		rc, _, r := ourCheck(t, p)
		want := fmt.Sprintf("grain table entry 2 of grain table 0 at offset %d: grain 2 at sector %d extends past the end of the file", gt+8, len(data)/512-1)
		if rc != 0 || len(r.Problems) != 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], want) {
			t.Errorf("ours: exit %d, problems %q, warnings %q, want %q", rc, r.Problems, r.Warnings, want)
		}
	})
	t.Run("table-past-eof", func(t *testing.T) {
		p := formattest.Patched(t, dir, "table.vmdk", data, func(d []byte) []byte {
			le.PutUint32(d[gd:], eofSector)
			return mirror(d)
		})
		// qemu reads a grain table past the end of the file as zeros and
		// calls the image clean; diskimg agrees and warns.
		if qrc, _, qerr := qemuCheck(t, p); qrc != 0 {
			t.Errorf("qemu-img check: exit %d, %q", qrc, qerr)
		}
		rc, _, r := ourCheck(t, p)
		want := fmt.Sprintf("grain directory entry 0 at offset %d: grain table at sector %d extends past the end of the file", gd, eofSector)
		if rc != 0 || r.Corruptions != 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], want) {
			t.Errorf("ours: exit %d, %+v, want the warning %q", rc, r, want)
		}
	})
	t.Run("duplicate-grain", func(t *testing.T) {
		p := formattest.Patched(t, dir, "dup.vmdk", data, func(d []byte) []byte {
			le.PutUint32(d[gt+4:], le.Uint32(d[gt:]))
			return mirror(d)
		})
		// Neither qemu-img nor diskimg looks for grains used twice.
		checks.Check(t, p)
	})
}

// TestCheckRedundant: the redundant grain directory and tables must match
// the primary ones (a warning, which keeps qemu's verdict), and a
// redundant directory past the end of the file is a check error, as qemu
// cannot open such a file.
func TestCheckRedundant(t *testing.T) {
	dir, data := denseBase(t)
	le := binary.LittleEndian
	rgd := int(le.Uint64(data[48:])) * 512
	rgt := int(le.Uint32(data[rgd:])) * 512
	p := formattest.Patched(t, dir, "rgt.vmdk", data, func(d []byte) []byte {
		d[rgt+4] ^= 1
		return d
	})
	rc, _, r := ourCheck(t, p)
	if rc != 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "redundant grain table 0") {
		t.Errorf("redundant table differs: exit %d, %+v", rc, r)
	}
	// Past the end of the file qemu reads zeros: clean, with a warning.
	p = formattest.Patched(t, dir, "rgd.vmdk", data, func(d []byte) []byte {
		le.PutUint64(d[48:], uint64(len(d)/512+10))
		return d
	})
	if qrc, _, _ := qemuCheck(t, p); qrc != 0 {
		t.Errorf("qemu-img check on a redundant directory past the end: exit %d, want 0", qrc)
	}
	if rc, _, r := ourCheck(t, p); rc != 0 || len(r.Warnings) != 1 {
		t.Errorf("redundant directory past the end: exit %d, %+v", rc, r)
	}
	// At 2^63 bytes (a negative offset to qemu) it cannot open the file.
	p = formattest.Patched(t, dir, "rgd-huge.vmdk", data, func(d []byte) []byte {
		le.PutUint64(d[48:], 1<<54)
		return d
	})
	if qrc, _, _ := qemuCheck(t, p); qrc != 1 {
		t.Errorf("qemu-img check on a redundant directory at 2^63: exit %d, want 1", qrc)
	}
	if rc, _, r := ourCheck(t, p); rc != 1 || r.CheckErrors != 1 {
		t.Errorf("redundant directory at 2^63: exit %d, %+v", rc, r)
	}
}

// denseBase makes a qemu-made 3 MiB monolithicSparse image full of data
// in a temporary directory and returns the directory and its bytes.
func denseBase(t *testing.T) (string, []byte) {
	t.Helper()
	return t.TempDir(), checks.Image(t, 3<<20, formattest.Dense)
}
