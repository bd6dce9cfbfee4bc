package qcow2_test

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qcow2"
)

// agree asserts our check gives qemu-img's counts and verdict on path and
// returns the verdict's exit code.
func agree(t *testing.T, path string) int {
	t.Helper()
	r := formattest.CompareCheck(t, "qcow2", path)
	if t.Failed() {
		t.Logf("our problems: %s", strings.Join(r.Problems, "\n"))
	}
	return formattest.Verdict(r)
}

// ourCheck runs the qcow2 checker on path.
func ourCheck(t *testing.T, path string) *format.CheckResult {
	t.Helper()
	_, _, r := formattest.OurCheck(t, "qcow2", path)
	return r
}

func TestCheckClean(t *testing.T) {
	dir := formattest.QemuDir(t)
	for _, v := range []struct {
		name    string
		content formattest.Content
		args    []string
	}{
		{"default-sparse", formattest.Sparse, nil},
		{"default-dense", formattest.Dense, nil},
		{"empty", formattest.Empty, nil},
		{"v2", formattest.Sparse, []string{"-o", "compat=0.10"}},
		{"c512", formattest.Sparse, []string{"-o", "cluster_size=512"}},
		{"c2M", formattest.Sparse, []string{"-o", "cluster_size=2M"}},
		{"zlib", formattest.Sparse, []string{"-c"}},
		{"zstd-dense", formattest.Dense, []string{"-c", "-o", "compression_type=zstd"}},
		{"zlib-512", formattest.Sparse, []string{"-c", "-o", "cluster_size=512"}},
		{"rc1", formattest.Sparse, []string{"-o", "refcount_bits=1"}},
		{"rc2", formattest.Sparse, []string{"-o", "refcount_bits=2"}},
		{"rc4", formattest.Sparse, []string{"-o", "refcount_bits=4"}},
		{"rc8", formattest.Sparse, []string{"-o", "refcount_bits=8"}},
		{"rc32", formattest.Sparse, []string{"-o", "refcount_bits=32"}},
		{"rc64", formattest.Sparse, []string{"-o", "refcount_bits=64"}},
		{"extl2", formattest.Sparse, []string{"-o", "extended_l2=on"}},
		{"zeros", formattest.Zeros, nil},
		{"prealloc-metadata", formattest.Sparse, []string{"-o", "preallocation=metadata"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			p := formattest.Generate(t, dir, v.name, "qcow2", 9<<20+512, v.content, v.args...)
			if code := agree(t, p); code != 0 {
				t.Errorf("exit code %d on a clean image", code)
			}
		})
	}
}

// TestCheckWritten checks images written by our own qcow2 writer.
func TestCheckWritten(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 7<<20, formattest.Sparse)
	for _, v := range writerVariants {
		t.Run(v.name, func(t *testing.T) {
			dst := filepath.Join(dir, v.name+".qcow2")
			convertFile(t, src, "raw", dst, v)
			if code := agree(t, dst); code != 0 {
				t.Errorf("exit code %d on our own image", code)
			}
		})
	}
}

func TestCheckSnapshotsAndBitmaps(t *testing.T) {
	dir := formattest.QemuDir(t)
	for _, opts := range []string{"cluster_size=65536", "cluster_size=512", "compat=0.10", "refcount_bits=8", "extended_l2=on"} {
		t.Run(opts, func(t *testing.T) {
			p := filepath.Join(dir, strings.NewReplacer("=", "-", ",", "-").Replace(opts)+".qcow2")
			formattest.Create(t, p, "qcow2", "8M", "-o", opts)
			formattest.QemuIO(t, "qcow2", p, "write -P 1 0 300k", "write -P 2 5M 64k")
			formattest.Qemu(t, "snapshot", "-c", "s1", p)
			formattest.QemuIO(t, "qcow2", p, "write -P 3 100k 8k", "write -P 4 7M 4k")
			formattest.Qemu(t, "snapshot", "-c", "s2", p)
			formattest.QemuIO(t, "qcow2", p, "write -c -P 5 2M 64k", "discard 5M 64k")
			if !strings.Contains(opts, "compat") {
				formattest.Qemu(t, "bitmap", "--add", p, "b0")
				formattest.Qemu(t, "bitmap", "--add", "-g", "512k", p, "b1")
			}
			if code := agree(t, p); code != 0 {
				t.Errorf("exit code %d on a clean image", code)
			}
			// Deleting a snapshot frees clusters and keeps the counts right.
			formattest.Qemu(t, "snapshot", "-d", "s1", p)
			agree(t, p)
		})
	}
}

// layout locates the structures a patch needs in a small image.
type layout struct {
	data          []byte
	cs            int64
	l2, refblock  int64 // offsets of L2 table 0 and refcount block 0
	refOrder      uint
	firstData     int64 // host offset of the cluster of guest offset 0
	secondL2Entry int64 // file offset of L2 entry 1
}

func readLayout(t *testing.T, path string) *layout {
	t.Helper()
	d := formattest.ReadFile(t, path)
	be := binary.BigEndian
	l := &layout{data: d, cs: 1 << be.Uint32(d[20:]), refOrder: 4}
	if be.Uint32(d[4:]) == 3 {
		l.refOrder = uint(be.Uint32(d[96:]))
	}
	l1 := int64(be.Uint64(d[40:]))
	l.l2 = int64(be.Uint64(d[l1:]) & 0x00fffffffffffe00)
	reft := int64(be.Uint64(d[48:]))
	l.refblock = int64(be.Uint64(d[reft:]) &^ 0x1ff)
	l.firstData = int64(be.Uint64(d[l.l2:]) & 0x00fffffffffffe00)
	l.secondL2Entry = l.l2 + 8
	if l.l2 == 0 || l.refblock == 0 || l.firstData == 0 {
		t.Fatal("sample image lacks an L2 table, refcount block or data cluster")
	}
	return l
}

// setRef sets the stored 16-bit refcount of the cluster at host offset off.
func (l *layout) setRef(off int64, v uint16) {
	binary.BigEndian.PutUint16(l.data[l.refblock+2*(off/l.cs):], v)
}

func TestCheckDamaged(t *testing.T) {
	dir := formattest.QemuDir(t)
	base := filepath.Join(dir, "base.qcow2")
	formattest.Create(t, base, "qcow2", "4M", "-o", "cluster_size=4k")
	formattest.QemuIO(t, "qcow2", base, "write -P 1 0 16k", "write -P 2 1M 8k")
	be := binary.BigEndian
	cases := []struct {
		name  string
		code  int
		patch func(l *layout) []byte
	}{
		{"clean", 0, func(l *layout) []byte { return l.data }},
		{"leak-refcount-up", 3, func(l *layout) []byte {
			// A data cluster counted twice, its copied flag cleared to
			// match: only a leak.
			l.setRef(l.firstData, 2)
			be.PutUint64(l.data[l.l2:], be.Uint64(l.data[l.l2:])&^(1<<63))
			return l.data
		}},
		{"leak-refcount-up-copied", 2, func(l *layout) []byte {
			// The same with the copied flag left set, which qemu counts
			// as a corruption.
			l.setRef(l.firstData, 2)
			return l.data
		}},
		{"leak-unused-cluster", 3, func(l *layout) []byte {
			// A cluster appended at the end and marked used by nothing.
			end := int64(len(l.data))
			d := append(l.data, make([]byte, l.cs)...)
			be.PutUint16(d[l.refblock+2*(end/l.cs):], 1)
			return d
		}},
		{"corrupt-refcount-down", 2, func(l *layout) []byte {
			l.setRef(l.firstData, 0)
			return l.data
		}},
		{"corrupt-refcount-l2", 2, func(l *layout) []byte {
			l.setRef(l.l2, 0)
			return l.data
		}},
		{"corrupt-shared-cluster", 2, func(l *layout) []byte {
			// Two L2 entries pointing at the same cluster.
			copy(l.data[l.secondL2Entry:], l.data[l.l2:l.l2+8])
			return l.data
		}},
		{"corrupt-l2-entry-past-eof", 2, func(l *layout) []byte {
			be.PutUint64(l.data[l.secondL2Entry:], 1<<63|1<<40)
			return l.data
		}},
		{"corrupt-l2-entry-unaligned", 2, func(l *layout) []byte {
			be.PutUint64(l.data[l.secondL2Entry:], be.Uint64(l.data[l.secondL2Entry:])+512)
			return l.data
		}},
		{"corrupt-reserved-bits", 2, func(l *layout) []byte {
			be.PutUint64(l.data[l.secondL2Entry:], be.Uint64(l.data[l.secondL2Entry:])|1<<57)
			return l.data
		}},
		{"corrupt-copied-flag", 2, func(l *layout) []byte {
			be.PutUint64(l.data[l.l2:], be.Uint64(l.data[l.l2:])&^(1<<63))
			return l.data
		}},
		{"corrupt-bit", 0, func(l *layout) []byte {
			// qemu-img check counts nothing for the bit itself.
			l.data[79] |= 2
			return l.data
		}},
		{"dirty-bit", 0, func(l *layout) []byte {
			l.data[79] |= 1
			return l.data
		}},
		{"l1-reserved-bits", 2, func(l *layout) []byte {
			l1 := int64(be.Uint64(l.data[40:]))
			be.PutUint64(l.data[l1:], be.Uint64(l.data[l1:])|1<<57)
			return l.data
		}},
		{"refblock-outside", 2, func(l *layout) []byte {
			reft := int64(be.Uint64(l.data[48:]))
			be.PutUint64(l.data[reft+8:], 1<<40)
			return l.data
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".qcow2")
			formattest.WriteFile(t, p, c.patch(readLayout(t, base)))
			start := time.Now()
			if code := agree(t, p); code != c.code {
				t.Errorf("exit code %d, want %d", code, c.code)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("check took %v", d)
			}
			if c.name == "corrupt-bit" {
				r := ourCheck(t, p)
				if !strings.Contains(strings.Join(r.Problems, "\n"), "corrupt bit") {
					t.Errorf("problems %q do not report the corrupt bit", r.Problems)
				}
			}
		})
	}
}

// TestCheckHostile runs the check on patched images qemu-img never sees:
// it must finish quickly with counts, never panic or allocate per header
// field. (A snapshot table qemu refuses is refused at open:
// TestSnapshotsHostile.)
func TestCheckHostile(t *testing.T) {
	formattest.RequireQemu(t)
	orig, l1e, l2e := sample(t, "cluster_size=512")
	be := binary.BigEndian
	reft := int64(be.Uint64(orig[48:]))
	cases := []struct {
		name  string
		want  string // in the problems, or in the error
		patch func(d []byte) []byte
	}{
		{"l1-all-same-l2", "", func(d []byte) []byte {
			// Every L1 entry names the same L2 table: read once.
			e := be.Uint64(d[l1e:])
			for i := int64(0); i < 4; i++ {
				be.PutUint64(d[l1e+8*i:], e)
			}
			return d
		}},
		{"l2-all-same-cluster", "ERROR cluster", func(d []byte) []byte {
			e := be.Uint64(d[l2e:])
			for i := int64(0); i < 64; i++ {
				be.PutUint64(d[l2e+8*i:], e)
			}
			return d
		}},
		{"refcount-table-huge", "exceeding the end of the file", func(d []byte) []byte {
			be.PutUint32(d[56:], 0xffffffff)
			return d
		}},
		{"refcount-table-past-eof", "exceeding the end of the file", func(d []byte) []byte {
			be.PutUint64(d[48:], 1<<50)
			return d
		}},
		{"refblock-reserved-bits", "reserved bits", func(d []byte) []byte {
			be.PutUint64(d[reft:], be.Uint64(d[reft:])+8)
			return d
		}},
		{"l2-table-past-eof", "exceeding the end of the file", func(d []byte) []byte {
			be.PutUint64(d[l1e:], 1<<63|1<<45)
			return d
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.patch(append([]byte(nil), orig...))
			f := &formattest.MemFile{Data: d, Path: "/nonexistent/hostile.qcow2"}
			img, err := qcow2.Open(f, format.NewOpener(format.Policy{Untrusted: true}))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer img.Close()
			start := time.Now()
			r, err := img.Check(context.Background())
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("check took %v", d)
			}
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			text := strings.Join(r.Problems, "\n")
			if c.want != "" && !strings.Contains(text, c.want) {
				t.Errorf("problems %q do not mention %q", text, c.want)
			}
			if c.want != "" && r.Corruptions+r.CheckErrors+r.Leaks == 0 {
				t.Errorf("no corruption, leak or check error counted: %+v", r)
			}
		})
	}
}

// FuzzQcow2Check runs the check on arbitrary files: it must return
// without panicking or hanging.
func FuzzQcow2Check(f *testing.F) {
	formattest.AddSeeds(f, "../../testdata/qcow2")
	f.Fuzz(func(t *testing.T, data []byte) {
		mf := &formattest.MemFile{Data: data, Path: "/nonexistent/fuzz.qcow2"}
		img, err := qcow2.Open(mf, format.NewOpener(format.Policy{Untrusted: true}))
		if err != nil {
			return
		}
		defer img.Close()
		r, err := img.Check(context.Background())
		if err == nil && (r.Corruptions < 0 || r.Leaks < 0 || r.ImageEndOffset < 0) {
			t.Fatalf("negative counts: %+v", r)
		}
	})
}

// BenchmarkCheckEmpty1TiB shows a check's cost follows the file, not the
// virtual size.
func BenchmarkCheckEmpty1TiB(b *testing.B) {
	formattest.RequireQemu(b)
	p := filepath.Join(b.TempDir(), "empty.qcow2")
	formattest.Create(b, p, "qcow2", "1T")
	img := formattest.Open(b, p, "qcow2")
	for b.Loop() {
		r, err := img.(format.Checker).Check(context.Background())
		if err != nil || r.Corruptions+r.Leaks+r.CheckErrors != 0 {
			b.Fatalf("%v %+v", err, r)
		}
	}
}

// TestCheckUnopenable: header fields that make qemu refuse to open the
// image (exit 1) are check errors for diskimg too, where its reader
// opens the image, and refuse the open where it does not (refused).
func TestCheckUnopenable(t *testing.T) {
	dir := formattest.QemuDir(t)
	base := filepath.Join(dir, "base.qcow2")
	formattest.Create(t, base, "qcow2", "4M", "-o", "cluster_size=4k")
	be := binary.BigEndian
	for _, c := range []struct {
		name, qemu string
		patch      func(d []byte)
		refused    string // diskimg's open error, when the open fails as qemu's
	}{
		{"backing-offset", "Invalid backing file offset", func(d []byte) { be.PutUint64(d[8:], 1<<20) }, ""},
		{"snapshot-offset", "snapshot table offset invalid", func(d []byte) { be.PutUint64(d[64:], 4096+8) }, "snapshots_offset"},
		{"end-marker-length", "Header extension too large", func(d []byte) {
			// The end marker of the extensions, with a length past the cluster.
			for pos := int(be.Uint32(d[100:])); pos+8 <= 4096; pos += 8 + int(be.Uint32(d[pos+4:])+7)&^7 {
				if be.Uint32(d[pos:]) == 0 {
					be.PutUint32(d[pos+4:], 1<<16)
					return
				}
			}
			t.Fatal("no end marker")
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := formattest.ReadFile(t, base)
			p := formattest.Patched(t, dir, c.name+".qcow2", data, func(d []byte) []byte {
				c.patch(d)
				return d
			})
			if code, _, stderr := formattest.QemuCheck(t, "qcow2", p); code != 1 || !strings.Contains(stderr, c.qemu) {
				t.Errorf("qemu-img check: exit %d, %s", code, stderr)
			}
			if c.refused != "" {
				if _, err := format.Open(p, "qcow2", format.Policy{Untrusted: true}); err == nil || !strings.Contains(err.Error(), c.refused) {
					t.Errorf("open: %v, want an error naming %s", err, c.refused)
				}
				return
			}
			r := ourCheck(t, p)
			if r.CheckErrors == 0 || !strings.Contains(strings.Join(r.Problems, "\n"), c.qemu) {
				t.Errorf("ours: %+v, want a check error saying %q", r, c.qemu)
			}
		})
	}
}
