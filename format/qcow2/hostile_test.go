package qcow2_test

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qcow2"
)

// sample makes a small qcow2 image (512-byte clusters, data at offset 0)
// and returns its bytes with the offsets of L1[0] and L2[0].
func sample(t *testing.T, opts string) (data []byte, l1e, l2e int64) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "s.qcow2")
	formattest.Create(t, path, "qcow2", "1M", "-o", opts)
	formattest.QemuIO(t, "qcow2", path, "write -P 0x42 0 4096", "write -P 0x43 600000 1000")
	data = formattest.ReadFile(t, path)
	be := binary.BigEndian
	l1e = int64(be.Uint64(data[40:]))
	l2e = int64(be.Uint64(data[l1e:]) & 0x00fffffffffffe00)
	if l2e == 0 {
		t.Fatal("sample image has no L2 table at L1[0]")
	}
	return data, l1e, l2e
}

func open(data []byte) (*qcow2.Image, error) {
	f := &formattest.MemFile{Data: data, Path: "/nonexistent/hostile.qcow2"}
	return qcow2.Open(f, format.NewOpener(format.Policy{Untrusted: true}))
}

// hostile is a patched sample and the error it must give.
type hostile formattest.Hostile

func wantField(t *testing.T, err error, field string) {
	t.Helper()
	var fe *format.FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want a FormatError naming %s", err, field)
	}
	if fe.Field != field {
		t.Fatalf("err = %v, want field %s", err, field)
	}
}

func TestHostileHeader(t *testing.T) {
	formattest.RequireQemu(t)
	orig, _, _ := sample(t, "cluster_size=512")
	be := binary.BigEndian
	formattest.RunHostileOn(t, "qcow2", func(string) []byte { return orig }, []hostile{
		{"version", "512", func(d []byte) []byte { be.PutUint32(d[4:], 4); return d }, "version", formattest.AtOpen},
		{"cluster_bits-small", "512", func(d []byte) []byte { be.PutUint32(d[20:], 8); return d }, "cluster_bits", formattest.AtOpen},
		{"cluster_bits-huge", "512", func(d []byte) []byte { be.PutUint32(d[20:], 63); return d }, "cluster_bits", formattest.AtOpen},
		{"size", "512", func(d []byte) []byte { be.PutUint64(d[24:], 1<<62); return d }, "size", formattest.AtOpen},
		{"crypt_method", "512", func(d []byte) []byte { be.PutUint32(d[32:], 9); return d }, "crypt_method", formattest.AtOpen},
		{"l1_size-huge", "512", func(d []byte) []byte { be.PutUint32(d[36:], 0xffffffff); return d }, "l1_size", formattest.AtOpen},
		{"l1_size-small", "512", func(d []byte) []byte { be.PutUint32(d[36:], 1); return d }, "l1_size", formattest.AtOpen},
		{"l1_table_offset-eof", "512", func(d []byte) []byte { be.PutUint64(d[40:], 1<<40); return d }, "l1_table_offset", formattest.AtOpen},
		{"l1_table_offset-unaligned", "512", func(d []byte) []byte { be.PutUint64(d[40:], 1000); return d }, "l1_table_offset", formattest.AtOpen},
		{"l1_table_offset-zero", "512", func(d []byte) []byte { be.PutUint64(d[40:], 0); return d }, "l1_table_offset", formattest.AtOpen},
		{"l1-past-eof", "512", func(d []byte) []byte {
			// A 32 GiB disk needs a larger L1 table than the file holds.
			be.PutUint64(d[24:], 1<<35)
			be.PutUint32(d[36:], 1<<20)
			return d
		}, "l1_table_offset", formattest.AtOpen},
		{"incompatible_features", "512", func(d []byte) []byte { be.PutUint64(d[72:], 1<<20); return d }, "incompatible_features", formattest.AtOpen},
		{"data-file-without-name", "512", func(d []byte) []byte { be.PutUint64(d[72:], 1<<2); return d }, "incompatible_features", formattest.AtOpen},
		{"extended-l2-small-clusters", "512", func(d []byte) []byte { be.PutUint64(d[72:], 1<<4); return d }, "cluster_bits", formattest.AtOpen},
		{"refcount_order", "512", func(d []byte) []byte { be.PutUint32(d[96:], 7); return d }, "refcount_order", formattest.AtOpen},
		{"header_length-small", "512", func(d []byte) []byte { be.PutUint32(d[100:], 20); return d }, "header_length", formattest.AtOpen},
		{"header_length-odd", "512", func(d []byte) []byte { be.PutUint32(d[100:], 107); return d }, "header_length", formattest.AtOpen},
		{"header_length-huge", "512", func(d []byte) []byte { be.PutUint32(d[100:], 1<<20); return d }, "header_length", formattest.AtOpen},
		{"compression_type", "512", func(d []byte) []byte { d[104] = 7; return d }, "compression_type", formattest.AtOpen},
		{"compression_type-no-bit", "512", func(d []byte) []byte { d[104] = 1; return d }, "compression_type", formattest.AtOpen},
		{"compression-bit-zlib", "512", func(d []byte) []byte { be.PutUint64(d[72:], 1<<3); return d }, "incompatible_features", formattest.AtOpen},
		{"extension-length", "512", func(d []byte) []byte {
			hl := be.Uint32(d[100:])
			be.PutUint32(d[hl:], 0x12345678)
			be.PutUint32(d[hl+4:], 0x7fffffff)
			return d
		}, "header extension length", formattest.AtOpen},
		{"backing_file_size", "512", func(d []byte) []byte {
			be.PutUint64(d[8:], 200)
			be.PutUint32(d[16:], 5000)
			return d
		}, "backing_file_size", formattest.AtOpen},
		{"backing_file_offset", "512", func(d []byte) []byte {
			be.PutUint64(d[8:], 1<<30)
			be.PutUint32(d[16:], 10)
			return d
		}, "backing_file_offset", formattest.AtOpen},
		{"magic", "512", func(d []byte) []byte { d[0] = 'X'; return d }, "wrong image type", formattest.AtOpen},
		{"unknown-feature-named", "512", func(d []byte) []byte { be.PutUint64(d[72:], 1<<5); return d }, "incompatible_features", formattest.AtOpen},
	})
}

// TestHostileTables patches L1 and L2 entries: every bad pointer must be an
// error naming the entry, from Extent and from ReadAt, never zeros.
func TestHostileTables(t *testing.T) {
	formattest.RequireQemu(t)
	orig, l1e, l2e := sample(t, "cluster_size=4k")
	be := binary.BigEndian
	formattest.RunHostileOn(t, "qcow2", func(string) []byte { return orig }, []hostile{
		{"l1-unaligned", "4k", func(d []byte) []byte { be.PutUint64(d[l1e:], uint64(l2e)+512); return d }, "l1_entry", formattest.AtOpenOrRead},
		{"l2-table-truncated", "4k", func(d []byte) []byte { return d[:l2e+100] }, "l1_entry", formattest.AtOpenOrRead},
		{"l2-data-past-eof", "4k", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<40|1<<63); return d }, "l2_entry", formattest.AtOpenOrRead},
		{"l2-data-unaligned", "4k", func(d []byte) []byte { be.PutUint64(d[l2e:], 1000); return d }, "l2_entry", formattest.AtOpenOrRead},
		{"l2-compressed-past-eof", "4k", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<62|1<<40); return d }, "l2_entry", formattest.AtOpenOrRead},
		{"l2-compressed-zero", "4k", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<62); return d }, "l2_entry", formattest.AtOpenOrRead},
		{"data-file-truncated", "4k", func(d []byte) []byte {
			// The data cluster of guest offset 0 is the last thing cut off.
			host := int64(be.Uint64(d[l2e:]) & 0x00fffffffffffe00)
			return d[:host+100]
		}, "l2_entry", formattest.AtOpenOrRead},
		// Cluster 0 points at the header, compressed: it is not deflate data.
		{"compressed-garbage", "4k", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<62|8); return d }, "l2_entry", formattest.OnRead},
	})
}

func TestHostileExtendedL2(t *testing.T) {
	formattest.RequireQemu(t)
	orig, _, l2e := sample(t, "cluster_size=16k,extended_l2=on")
	be := binary.BigEndian
	formattest.RunHostileOn(t, "qcow2", func(string) []byte { return orig }, []hostile{
		{"alloc-and-zero", "16k", func(d []byte) []byte { be.PutUint64(d[l2e+8:], 1|1<<32); return d }, "l2_bitmap", formattest.OnRead},
		{"alloc-without-host", "16k", func(d []byte) []byte {
			be.PutUint64(d[l2e:], 0)
			be.PutUint64(d[l2e+8:], 1)
			return d
		}, "l2_bitmap", formattest.OnRead},
	})
}

// TestHugeL1 checks that a header claiming a huge L1 table is refused at
// once, without allocating it.
func TestHugeL1(t *testing.T) {
	d := make([]byte, 4096)
	be := binary.BigEndian
	copy(d, "QFI\xfb")
	be.PutUint32(d[4:], 2)
	be.PutUint32(d[20:], 16)
	be.PutUint64(d[24:], 1<<55)
	be.PutUint32(d[36:], 1<<30)
	be.PutUint64(d[40:], 1<<16)
	start := time.Now()
	var ms, ms2 runtimeMem
	ms.read()
	_, err := open(d)
	ms2.read()
	wantField(t, err, "l1_size")
	if time.Since(start) > 100*time.Millisecond {
		t.Fatalf("refusing took %v", time.Since(start))
	}
	if grew := ms2.total - ms.total; grew > 1<<20 {
		t.Fatalf("refusing allocated %d bytes", grew)
	}
}

type runtimeMem struct{ total uint64 }

func (m *runtimeMem) read() {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.total = s.TotalAlloc
}

func TestHostileBitmaps(t *testing.T) {
	path := filepath.Join(formattest.QemuDir(t), "b.qcow2")
	formattest.Create(t, path, "qcow2", "1M", "-o", "cluster_size=512")
	formattest.Qemu(t, "bitmap", "--add", path, "bm0")
	orig := formattest.ReadFile(t, path)
	be := binary.BigEndian
	// Find the bitmaps extension.
	ext := -1
	for pos := int(be.Uint32(orig[100:])); pos+8 <= 512; {
		typ, n := be.Uint32(orig[pos:]), int(be.Uint32(orig[pos+4:]))
		if typ == 0x23852875 {
			ext = pos + 8
			break
		}
		if typ == 0 {
			break
		}
		pos += 8 + (n+7)&^7
	}
	if ext < 0 {
		t.Fatal("no bitmaps extension")
	}
	dirOff := int(be.Uint64(orig[ext+16:]))
	for _, tc := range []struct {
		name, field string
		patch       func(d []byte)
	}{
		{"nb_bitmaps", "nb_bitmaps", func(d []byte) { be.PutUint32(d[ext:], 1<<20) }},
		{"too-many", "bitmap directory entry", func(d []byte) { be.PutUint32(d[ext:], 50) }},
		{"directory-past-eof", "bitmap_directory_offset", func(d []byte) { be.PutUint64(d[ext+16:], 1<<40) }},
		{"directory-huge", "bitmap_directory_offset", func(d []byte) { be.PutUint64(d[ext+8:], 1<<40) }},
		{"name-overrun", "bitmap directory entry", func(d []byte) { be.PutUint16(d[dirOff+18:], 1000) }},
		{"extra-overrun", "bitmap directory entry", func(d []byte) { be.PutUint32(d[dirOff+20:], 0xffffffff) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := append([]byte(nil), orig...)
			tc.patch(d)
			img, err := open(d)
			if err == nil {
				img.Close()
			}
			wantField(t, err, tc.field)
		})
	}
}
