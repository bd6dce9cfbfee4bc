package qcow2_test

import (
	"encoding/binary"
	"errors"
	"os"
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
	qemuIO(t, path, "write -P 0x42 0 4096", "write -P 0x43 600000 1000")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
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
	cases := []struct {
		name, field string
		patch       func(d []byte) []byte
	}{
		{"truncated", "header", func(d []byte) []byte { return d[:40] }},
		{"version", "version", func(d []byte) []byte { be.PutUint32(d[4:], 4); return d }},
		{"cluster_bits-small", "cluster_bits", func(d []byte) []byte { be.PutUint32(d[20:], 8); return d }},
		{"cluster_bits-huge", "cluster_bits", func(d []byte) []byte { be.PutUint32(d[20:], 63); return d }},
		{"size", "size", func(d []byte) []byte { be.PutUint64(d[24:], 1<<62); return d }},
		{"crypt_method", "crypt_method", func(d []byte) []byte { be.PutUint32(d[32:], 9); return d }},
		{"l1_size-huge", "l1_size", func(d []byte) []byte { be.PutUint32(d[36:], 0xffffffff); return d }},
		{"l1_size-small", "l1_size", func(d []byte) []byte { be.PutUint32(d[36:], 1); return d }},
		{"l1_table_offset-eof", "l1_table_offset", func(d []byte) []byte { be.PutUint64(d[40:], 1<<40); return d }},
		{"l1_table_offset-unaligned", "l1_table_offset", func(d []byte) []byte { be.PutUint64(d[40:], 1000); return d }},
		{"l1_table_offset-zero", "l1_table_offset", func(d []byte) []byte { be.PutUint64(d[40:], 0); return d }},
		{"l1-past-eof", "l1_table_offset", func(d []byte) []byte {
			// A 32 GiB disk needs a larger L1 table than the file holds.
			be.PutUint64(d[24:], 1<<35)
			be.PutUint32(d[36:], 1<<20)
			return d
		}},
		{"incompatible_features", "incompatible_features", func(d []byte) []byte { be.PutUint64(d[72:], 1<<20); return d }},
		{"data-file-without-name", "incompatible_features", func(d []byte) []byte { be.PutUint64(d[72:], 1<<2); return d }},
		{"extended-l2-small-clusters", "cluster_bits", func(d []byte) []byte { be.PutUint64(d[72:], 1<<4); return d }},
		{"refcount_order", "refcount_order", func(d []byte) []byte { be.PutUint32(d[96:], 7); return d }},
		{"header_length-small", "header_length", func(d []byte) []byte { be.PutUint32(d[100:], 20); return d }},
		{"header_length-odd", "header_length", func(d []byte) []byte { be.PutUint32(d[100:], 107); return d }},
		{"header_length-huge", "header_length", func(d []byte) []byte { be.PutUint32(d[100:], 1<<20); return d }},
		{"compression_type", "compression_type", func(d []byte) []byte { d[104] = 7; return d }},
		{"compression_type-no-bit", "compression_type", func(d []byte) []byte { d[104] = 1; return d }},
		{"compression-bit-zlib", "incompatible_features", func(d []byte) []byte { be.PutUint64(d[72:], 1<<3); return d }},
		{"extension-length", "header extension length", func(d []byte) []byte {
			hl := be.Uint32(d[100:])
			be.PutUint32(d[hl:], 0x12345678)
			be.PutUint32(d[hl+4:], 0x7fffffff)
			return d
		}},
		{"backing_file_size", "backing_file_size", func(d []byte) []byte {
			be.PutUint64(d[8:], 200)
			be.PutUint32(d[16:], 5000)
			return d
		}},
		{"backing_file_offset", "backing_file_offset", func(d []byte) []byte {
			be.PutUint64(d[8:], 1<<30)
			be.PutUint32(d[16:], 10)
			return d
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.patch(append([]byte(nil), orig...))
			img, err := open(d)
			if err == nil {
				img.Close()
			}
			wantField(t, err, tc.field)
		})
	}
	t.Run("magic", func(t *testing.T) {
		d := append([]byte(nil), orig...)
		d[0] = 'X'
		if _, err := open(d); !errors.Is(err, format.ErrWrongType) {
			t.Fatalf("err = %v, want ErrWrongType", err)
		}
	})
	t.Run("unknown-feature-named", func(t *testing.T) {
		d := append([]byte(nil), orig...)
		be.PutUint64(d[72:], 1<<5)
		_, err := open(d)
		wantField(t, err, "incompatible_features")
	})
}

// TestHostileTables patches L1 and L2 entries: every bad pointer must be an
// error naming the entry, from Extent and from ReadAt, never zeros.
func TestHostileTables(t *testing.T) {
	formattest.RequireQemu(t)
	orig, l1e, l2e := sample(t, "cluster_size=4k")
	be := binary.BigEndian
	cases := []struct {
		name, field string
		patch       func(d []byte) []byte
	}{
		{"l1-past-eof", "l1_entry", func(d []byte) []byte { be.PutUint64(d[l1e:], 1<<40); return d }},
		{"l1-unaligned", "l1_entry", func(d []byte) []byte { be.PutUint64(d[l1e:], uint64(l2e)+512); return d }},
		{"l2-table-truncated", "l1_entry", func(d []byte) []byte { return d[:l2e+100] }},
		{"l2-data-past-eof", "l2_entry", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<40|1<<63); return d }},
		{"l2-data-unaligned", "l2_entry", func(d []byte) []byte { be.PutUint64(d[l2e:], 1000); return d }},
		{"l2-compressed-past-eof", "l2_entry", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<62|1<<40); return d }},
		{"l2-compressed-zero", "l2_entry", func(d []byte) []byte { be.PutUint64(d[l2e:], 1<<62); return d }},
		{"data-file-truncated", "l2_entry", func(d []byte) []byte {
			// The data cluster of guest offset 0 is the last thing cut off.
			host := int64(be.Uint64(d[l2e:]) & 0x00fffffffffffe00)
			return d[:host+100]
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.patch(append([]byte(nil), orig...))
			img, err := open(d)
			if err != nil {
				wantField(t, err, tc.field)
				return
			}
			defer img.Close()
			_, err = img.Extent(0)
			wantField(t, err, tc.field)
			_, err = img.ReadAt(make([]byte, 4096), 0)
			wantField(t, err, tc.field)
		})
	}
	t.Run("compressed-garbage", func(t *testing.T) {
		d := append([]byte(nil), orig...)
		// Point cluster 0 at the header, compressed: it is not deflate data.
		be.PutUint64(d[l2e:], 1<<62|8)
		img, err := open(d)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if _, err := img.Extent(0); err != nil {
			t.Fatalf("Extent: %v", err)
		}
		_, err = img.ReadAt(make([]byte, 512), 0)
		wantField(t, err, "l2_entry")
	})
}

func TestHostileExtendedL2(t *testing.T) {
	formattest.RequireQemu(t)
	orig, _, l2e := sample(t, "cluster_size=16k,extended_l2=on")
	be := binary.BigEndian
	for name, bitmap := range map[string]uint64{
		"alloc-and-zero": 1 | 1<<32,
	} {
		t.Run(name, func(t *testing.T) {
			d := append([]byte(nil), orig...)
			be.PutUint64(d[l2e+8:], bitmap)
			img, err := open(d)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			_, err = img.Extent(0)
			wantField(t, err, "l2_bitmap")
			_, err = img.ReadAt(make([]byte, 512), 0)
			wantField(t, err, "l2_bitmap")
		})
	}
	t.Run("alloc-without-host", func(t *testing.T) {
		d := append([]byte(nil), orig...)
		be.PutUint64(d[l2e:], 0)
		be.PutUint64(d[l2e+8:], 1)
		img, err := open(d)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		_, err = img.Extent(0)
		wantField(t, err, "l2_bitmap")
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
	formattest.RequireQemu(t)
	path := filepath.Join(t.TempDir(), "b.qcow2")
	formattest.Create(t, path, "qcow2", "1M", "-o", "cluster_size=512")
	formattest.Qemu(t, "bitmap", "--add", path, "bm0")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
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
