package qcow_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qcow"
	_ "github.com/diskimg/diskimg/format/raw"
)

func TestConformance(t *testing.T) {
	formattest.Run(t, "qcow", []formattest.Variant{{Name: "default"}}, formattest.Options{})
	// qemu-img map asks the qcow driver for one cluster at a time (4 KiB),
	// so a 2 TiB map takes qemu-img many minutes; 64 GiB takes seconds and
	// still spans thousands of L2 tables. Our own walk of 1 TiB is timed
	// by BenchmarkOpenEmpty1TiB.
	formattest.RunEmptyHuge(t, "qcow", "64G", []formattest.Variant{{Name: "default"}}, formattest.Options{})
}

// convertCompressed runs qemu-img convert -O qcow -c. qemu-img 7.2 exits
// 1 at the end of a compressed conversion to qcow (the final empty
// compressed write that marks the end is not supported by the driver)
// after writing a complete image, so success is judged by qemu-img
// compare instead of the exit status.
func convertCompressed(t *testing.T, src, dst string) {
	t.Helper()
	formattest.RequireQemu(t)
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow", "-c", src, dst).CombinedOutput(); err != nil {
		t.Logf("qemu-img convert -c: %v %s (checking the result with qemu-img compare)", err, out)
	}
	formattest.Qemu(t, "compare", "-q", "-f", "raw", "-F", "qcow", src, dst)
}

// TestConformanceCompressed checks images written with -c against qemu-img.
func TestConformanceCompressed(t *testing.T) {
	formattest.RequireQemu(t)
	for _, size := range formattest.Sizes {
		for _, c := range formattest.Contents {
			if testing.Short() && (size != formattest.Sizes[1] || c != formattest.Sparse) {
				continue // -short: one size and content, as formattest.Run
			}
			t.Run(fmt.Sprintf("compressed/%d/%s", size, c), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				src := filepath.Join(dir, "src.raw")
				formattest.MakeRaw(t, src, size, c)
				dst := filepath.Join(dir, "img.qcow")
				convertCompressed(t, src, dst)
				formattest.Check(t, dst, formattest.Options{})
				if c == formattest.Dense {
					assertCompressedExtent(t, dst)
				}
			})
		}
	}
}

func assertCompressedExtent(t *testing.T, path string) {
	t.Helper()
	img := formattest.Open(t, path, "")
	// Random data does not compress: qemu stores those clusters as they
	// are. Nothing else to assert but that extents are well formed.
	err := format.Walk(img, 0, func(e format.Extent) error {
		if e.Compressed && e.Offset != -1 {
			return fmt.Errorf("compressed extent %+v has a host offset", e)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBacking checks chains: qcow over raw and over qcow, with a backing
// file smaller than the overlay.
func TestBacking(t *testing.T) {
	formattest.RequireQemu(t)
	for _, baseFmt := range []string{"raw", "qcow"} {
		t.Run(baseFmt, func(t *testing.T) {
			dir := t.TempDir()
			base := formattest.Generate(t, dir, "base", baseFmt, 5<<20+512, formattest.Sparse)
			top := filepath.Join(dir, "top.qcow")
			formattest.Create(t, top, "qcow", "9M", "-b", filepath.Base(base), "-F", baseFmt)
			formattest.QemuIO(t, "qcow", top, "write -P 0x11 4096 8192", "write -P 0x22 3M 70000", "write -P 0x33 8M 4096", "write -z 1M 4096")
			formattest.Check(t, top, formattest.Options{})

			img := formattest.Open(t, top, "")
			info := img.Info()
			if info.BackingFile != filepath.Base(base) || info.Backing == nil {
				t.Fatalf("backing file %q, opened %v", info.BackingFile, info.Backing != nil)
			}
			for _, c := range []struct {
				off    int64
				status format.Status
				depth  int
			}{
				{0, format.Data, 1},              // from the backing file
				{4096, format.Data, 0},           // in the image
				{7 << 20, format.Unallocated, 0}, // past the end of the smaller backing file: zeros, not stored
			} {
				e, err := img.Extent(c.off)
				if err != nil {
					t.Fatal(err)
				}
				if e.Status != c.status || e.Depth != c.depth || c.depth == 0 && e.Status == format.Data && e.Offset < 0 {
					t.Errorf("Extent(%d) = %+v, want %v at depth %d", c.off, e, c.status, c.depth)
				}
			}

			// Without backing files the unstored ranges read as zeros.
			nb := formattest.OpenPolicy(t, top, "", format.Policy{NoBacking: true})
			buf := make([]byte, 1000)
			if _, err := nb.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			if string(buf) != string(make([]byte, 1000)) {
				t.Error("NoBacking: unallocated range does not read as zeros")
			}
		})
	}
}

// TestBackingPolicy checks that the backing file is opened only through
// the opener's policy.
func TestBackingPolicy(t *testing.T) {
	data := formattest.ReadSeed(t, "../../testdata/qcow", "overlay.qcow")
	f := &formattest.MemFile{Data: data, Path: filepath.Join(t.TempDir(), "overlay.qcow")}
	_, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(f, "qcow")
	if err == nil || !errors.Is(err, format.ErrOutsideDirectory) {
		t.Fatalf("untrusted open of an overlay = %v, want ErrOutsideDirectory", err)
	}
	// A name leaving the directory is refused by default.
	hdrOff := binary.BigEndian.Uint64(data[8:])
	n := binary.BigEndian.Uint32(data[16:])
	bad := append([]byte(nil), data...)
	copy(bad[hdrOff:hdrOff+uint64(n)], "../ba")
	bad = append(bad[:hdrOff+5], bad[hdrOff+uint64(n):]...)
	binary.BigEndian.PutUint32(bad[16:], 5)
	f = &formattest.MemFile{Data: bad, Path: filepath.Join(t.TempDir(), "overlay.qcow")}
	_, err = format.NewOpener(format.Policy{}).OpenImage(f, "qcow")
	if err == nil || !errors.Is(err, format.ErrOutsideDirectory) {
		t.Fatalf("backing file ../ba = %v, want ErrOutsideDirectory", err)
	}
}

// TestEncrypted checks that an AES image reports encrypted as qemu-img
// does, maps its clusters, and refuses to read them.
func TestEncrypted(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := filepath.Join(dir, "enc.qcow")
	secret := "secret,id=sec0,data=123456"
	formattest.Qemu(t, "create", "-q", "-f", "qcow", "--object", secret, "-o", "encrypt.format=aes,encrypt.key-secret=sec0", path, "1M")
	if out, err := exec.Command("qemu-io", "--object", secret, "--image-opts",
		"driver=qcow,file.filename="+path+",encrypt.key-secret=sec0", "-c", "write -P 0x5a 8192 4096").CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	img := formattest.Open(t, path, "")
	formattest.CheckInfo(t, path, img, formattest.Options{})
	e, err := img.Extent(8192)
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != format.Data || e.Length != 4096 || e.Offset != -1 {
		t.Errorf("Extent(8192) = %+v, want 4096 bytes of data without a host offset", e)
	}
	buf := make([]byte, 4096)
	if _, err := img.ReadAt(buf, 8192); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("ReadAt of encrypted data = %v, want an error", err)
	}
	if _, err := img.ReadAt(buf, 0); err != nil {
		t.Errorf("ReadAt of an unallocated range = %v", err)
	}
}

// TestOddSize checks qemu's rule that the virtual size is the header's
// size rounded down to whole sectors.
func TestOddSize(t *testing.T) {
	data := formattest.ReadSeed(t, "../../testdata/qcow", "data.qcow")
	binary.BigEndian.PutUint64(data[24:], 131072-100)
	img, err := openMem(t, data)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got := img.Size(); got != 131072-512 {
		t.Fatalf("size %d, want %d", got, 131072-512)
	}
}

func openMem(t *testing.T, data []byte) (format.Image, error) {
	return formattest.OpenMem(t, "qcow", data)
}

// Offsets in data.qcow (made by qemu-img from the seed's raw data).
func l1Entry0(data []byte) int64 {
	return int64(binary.BigEndian.Uint64(data[binary.BigEndian.Uint64(data[40:]):]))
}

// hostile lets the case table below list its fields unkeyed.
type hostile formattest.Hostile

// TestHostile opens patched images; each must fail with an error naming
// the field at fault.
func TestHostile(t *testing.T) {
	cases := []hostile{
		{"wrong magic", "data.qcow", func(d []byte) []byte { d[0] = 'X'; return d }, "wrong image type", formattest.AtOpen},
		{"qcow2 version", "data.qcow", func(d []byte) []byte { binary.BigEndian.PutUint32(d[4:], 2); return d }, "wrong image type", formattest.AtOpen},
		{"truncated header", "data.qcow", func(d []byte) []byte { return d[:30] }, "header", formattest.AtOpen},
		{"size too small", "data.qcow", func(d []byte) []byte { binary.BigEndian.PutUint64(d[24:], 1); return d }, "size at offset 24", formattest.AtOpen},
		{"size absurd", "data.qcow", func(d []byte) []byte { binary.BigEndian.PutUint64(d[24:], 1<<62); return d }, "size at offset 24", formattest.AtOpen},
		{"cluster bits", "data.qcow", func(d []byte) []byte { d[32] = 17; return d }, "cluster_bits", formattest.AtOpen},
		{"l2 bits", "data.qcow", func(d []byte) []byte { d[33] = 5; return d }, "l2_bits", formattest.AtOpen},
		{"crypt method", "data.qcow", func(d []byte) []byte { binary.BigEndian.PutUint32(d[36:], 2); return d }, "crypt_method", formattest.AtOpen},
		{"L1 past EOF", "data.qcow", func(d []byte) []byte { binary.BigEndian.PutUint64(d[40:], 1<<40); return d }, "l1_table_offset", formattest.AtOpen},
		{"L1 table cut", "data.qcow", func(d []byte) []byte {
			binary.BigEndian.PutUint64(d[40:], uint64(len(d)-4))
			return d
		}, "l1_table_offset", formattest.AtOpen},
		{"huge L1", "data.qcow", func(d []byte) []byte {
			// 2^56 bytes of 512-byte clusters with 64-entry L2 tables:
			// an L1 table of 2^41 entries, far more than the file.
			d[32], d[33] = 9, 6
			binary.BigEndian.PutUint64(d[24:], 1<<56)
			return d
		}, "l1_table_offset", formattest.AtOpen},
		{"L2 table past EOF", "data.qcow", func(d []byte) []byte {
			binary.BigEndian.PutUint64(d[binary.BigEndian.Uint64(d[40:]):], uint64(len(d))-100)
			return d
		}, "L1 table entry 0", formattest.AtOpen},
		{"data cluster past EOF", "data.qcow", func(d []byte) []byte {
			binary.BigEndian.PutUint64(d[l1Entry0(d):], 1<<40)
			return d
		}, "L2 table entry 0 of L1 entry 0", formattest.OnRead},
		{"data cluster cut", "data.qcow", func(d []byte) []byte {
			binary.BigEndian.PutUint64(d[l1Entry0(d):], uint64(len(d))-100)
			return d
		}, "L2 table entry 0 of L1 entry 0", formattest.OnRead},
		{"compressed cluster past EOF", "compressed.qcow", func(d []byte) []byte {
			e := binary.BigEndian.Uint64(d[l1Entry0(d):])
			if e>>63 == 0 {
				panic("seed's first cluster is not compressed")
			}
			binary.BigEndian.PutUint64(d[l1Entry0(d):], e|uint64(1)<<40)
			return d
		}, "L2 table entry 0 of L1 entry 0", formattest.OnRead},
		{"compressed garbage", "compressed.qcow", func(d []byte) []byte {
			e := binary.BigEndian.Uint64(d[l1Entry0(d):])
			host := e & (1<<(63-12) - 1)
			for i := host; i < host+16; i++ {
				d[i] = 0xff
			}
			return d
		}, "compressed cluster", formattest.OnRead},
		{"backing name too long", "overlay.qcow", func(d []byte) []byte { binary.BigEndian.PutUint32(d[16:], 1024); return d }, "backing_file_size", formattest.AtOpen},
		{"backing name past EOF", "overlay.qcow", func(d []byte) []byte { binary.BigEndian.PutUint64(d[8:], uint64(len(d))-2); return d }, "backing_file_offset", formattest.AtOpen},
	}
	formattest.RunHostile(t, "qcow", "../../testdata/qcow", cases)
}

func TestProbe(t *testing.T) {
	d := formattest.ReadSeed(t, "../../testdata/qcow", "data.qcow")
	if !qcow.Probe(&formattest.MemFile{Data: d}) {
		t.Error("Probe rejects a qcow image")
	}
	binary.BigEndian.PutUint32(d[4:], 3)
	if qcow.Probe(&formattest.MemFile{Data: d}) {
		t.Error("Probe accepts a qcow2 (version 3) header")
	}
}

func FuzzQcow(f *testing.F) { formattest.FuzzOpen(f, "qcow", "../../testdata/qcow") }

// BenchmarkOpenEmpty1TiB measures open, info and a full extent walk of an
// empty 1 TiB image: metadata time only.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, "qcow", "1T"), "", 1)
}

// TestSharedL2Table checks a hand-made image whose 2000 L1 entries all
// point at one empty L2 table (1000 GiB of 64 KiB clusters): the map is
// one unallocated extent, and the table is read once, not once per entry
// (found by fuzzing: the walk took seconds).
func TestSharedL2Table(t *testing.T) {
	const l1n = 2000
	d := make([]byte, 48+l1n*8+65536)
	copy(d, "QFI\xfb")
	binary.BigEndian.PutUint32(d[4:], 1)
	binary.BigEndian.PutUint64(d[24:], uint64(l1n)<<29)
	d[32], d[33] = 16, 13 // 64 KiB clusters, 8192-entry L2 tables
	binary.BigEndian.PutUint64(d[40:], 48)
	for i := 0; i < l1n; i++ {
		binary.BigEndian.PutUint64(d[48+8*i:], uint64(48+l1n*8))
	}
	img, err := openMem(t, d)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	e, err := img.Extent(0)
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != format.Unallocated || e.Length != img.Size() {
		t.Fatalf("Extent(0) = %+v, want the whole %d-byte disk unallocated", e, img.Size())
	}
	formattest.Exercise(t, d, "qcow")
}

// TestMutatedSeeds exercises the reader on seeds with random bytes changed,
// mostly in the header.
func TestMutatedSeeds(t *testing.T) {
	formattest.ExerciseMutatedHeaders(t, "qcow", "../../testdata/qcow")
}
