package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/qcow2"
)

var variants = []formattest.Variant{
	{Name: "compat-0.10", Args: []string{"-o", "compat=0.10"}},
	{Name: "compat-0.10-512", Args: []string{"-o", "compat=0.10,cluster_size=512"}},
	{Name: "compat-1.1", Args: []string{"-o", "compat=1.1"}},
	{Name: "cluster-512", Args: []string{"-o", "cluster_size=512"}},
	{Name: "cluster-4k", Args: []string{"-o", "cluster_size=4k"}},
	{Name: "cluster-64k", Args: []string{"-o", "cluster_size=64k"}},
	{Name: "cluster-2M", Args: []string{"-o", "cluster_size=2M"}},
	{Name: "compressed-zlib", Args: []string{"-c", "-o", "compression_type=zlib"}},
	{Name: "compressed-zlib-4k", Args: []string{"-c", "-o", "cluster_size=4k"}},
	{Name: "compressed-zlib-2M", Args: []string{"-c", "-o", "cluster_size=2M"}},
	{Name: "compressed-zstd", Args: []string{"-c", "-o", "compression_type=zstd"}},
	{Name: "compressed-v2", Args: []string{"-c", "-o", "compat=0.10"}},
	{Name: "extended-l2-64k", Args: []string{"-o", "extended_l2=on,cluster_size=64k"}},
	{Name: "extended-l2-2M", Args: []string{"-o", "extended_l2=on,cluster_size=2M"}},
	{Name: "lazy-refcounts", Args: []string{"-o", "lazy_refcounts=on"}},
	{Name: "refcount-bits-1", Args: []string{"-o", "refcount_bits=1"}},
	{Name: "refcount-bits-64", Args: []string{"-o", "refcount_bits=64"}},
	{Name: "prealloc-metadata", Args: []string{"-o", "preallocation=metadata"}},
	{Name: "prealloc-full", Args: []string{"-o", "preallocation=full"}},
}

func TestConformance(t *testing.T) {
	formattest.Run(t, "qcow2", variants, formattest.Options{})
}

func TestEmptyHuge(t *testing.T) {
	formattest.RunEmptyHuge(t, "qcow2", "2T", []formattest.Variant{
		{Name: "default"},
		{Name: "compat-0.10", Args: []string{"-o", "compat=0.10"}},
		{Name: "cluster-2M", Args: []string{"-o", "cluster_size=2M"}},
		{Name: "extended-l2", Args: []string{"-o", "extended_l2=on"}},
		{Name: "prealloc-metadata-4k", Args: []string{"-o", "preallocation=metadata,cluster_size=2M"}},
	}, formattest.Options{})
}

// Writes that straddle 512 B, 4 KiB and 64 KiB boundaries, a written-zero
// range and a discard, into an overlay.
var overlayWrites = []string{
	"write -P 0xa1 0 1000",
	"write -P 0xa2 65000 70000",
	"write -z 1M 64k",
	"write -P 0xa3 2M 512",
	"write -P 0xa4 3000000 4096",
	"discard 4M 64k",
}

func TestBackingChains(t *testing.T) {
	formattest.RequireQemu(t)
	pol := formattest.Options{Policy: format.Policy{}}
	t.Run("raw-base", func(t *testing.T) {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.raw")
		formattest.MakeRaw(t, base, 9<<20, formattest.Sparse)
		ov := filepath.Join(dir, "ov.qcow2")
		formattest.Create(t, ov, "qcow2", "9M", "-b", "base.raw", "-F", "raw")
		formattest.QemuIO(t, "qcow2", ov, overlayWrites...)
		formattest.Check(t, ov, pol)
	})
	for _, v := range []struct{ name, opts string }{
		{"default", "cluster_size=64k"},
		{"cluster-512", "cluster_size=512"},
		{"extended-l2", "extended_l2=on,cluster_size=64k"},
		{"compat-0.10", "compat=0.10"},
	} {
		t.Run("depth2-"+v.name, func(t *testing.T) {
			dir := t.TempDir()
			formattest.Generate(t, dir, "base", "qcow2", 9<<20, formattest.Dense, "-o", v.opts)
			mid := filepath.Join(dir, "mid.qcow2")
			top := filepath.Join(dir, "top.qcow2")
			formattest.Create(t, mid, "qcow2", "9M", "-o", v.opts, "-b", "base.qcow2", "-F", "qcow2")
			formattest.QemuIO(t, "qcow2", mid, overlayWrites...)
			formattest.Create(t, top, "qcow2", "9M", "-o", v.opts, "-b", "mid.qcow2", "-F", "qcow2")
			formattest.QemuIO(t, "qcow2", top, "write -P 0xb1 512 1024", "write -z 2M 4096", "write -P 0xb2 8M 100000")
			formattest.Check(t, mid, pol)
			formattest.Check(t, top, pol)
		})
	}
	t.Run("smaller-backing", func(t *testing.T) {
		dir := t.TempDir()
		formattest.Generate(t, dir, "base", "qcow2", 1<<20+4096, formattest.Dense)
		ov := filepath.Join(dir, "ov.qcow2")
		formattest.Create(t, ov, "qcow2", "5M", "-b", "base.qcow2", "-F", "qcow2")
		formattest.QemuIO(t, "qcow2", ov, "write -P 0xc1 1000000 100000", "write -P 0xc2 4M 512")
		formattest.Check(t, ov, pol)
	})
	t.Run("compressed-backing", func(t *testing.T) {
		dir := t.TempDir()
		formattest.Generate(t, dir, "base", "qcow2", 9<<20, formattest.Sparse, "-c", "-o", "compression_type=zstd")
		ov := filepath.Join(dir, "ov.qcow2")
		formattest.Create(t, ov, "qcow2", "9M", "-b", "base.qcow2", "-F", "qcow2")
		formattest.QemuIO(t, "qcow2", ov, overlayWrites...)
		formattest.Check(t, ov, pol)
	})
	t.Run("no-backing-policy", func(t *testing.T) {
		dir := t.TempDir()
		base := filepath.Join(dir, "base.raw")
		formattest.MakeRaw(t, base, 1<<20, formattest.Dense)
		ov := filepath.Join(dir, "ov.qcow2")
		formattest.Create(t, ov, "qcow2", "1M", "-b", "base.raw", "-F", "raw")
		formattest.QemuIO(t, "qcow2", ov, "write -P 0xd1 64k 64k")
		img := formattest.OpenPolicy(t, ov, "", format.Policy{NoBacking: true})
		info := img.Info()
		if info.Backing != nil || info.BackingFile != "base.raw" || info.BackingFormat != "raw" {
			t.Fatalf("info = %+v", info)
		}
		buf := make([]byte, 3<<16)
		if _, err := img.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		want := append(append(make([]byte, 1<<16), bytes.Repeat([]byte{0xd1}, 1<<16)...), make([]byte, 1<<16)...)
		if !bytes.Equal(buf, want) {
			t.Fatal("unallocated ranges must read as zeros without a backing file")
		}
		if n, _ := format.AllocatedBytes(img); n != 1<<16 {
			t.Fatalf("allocated %d bytes, want 65536", n)
		}
	})
}

// TestBackingOutside checks that backing files outside the image's
// directory are refused by default and followed with AllowOutside.
func TestBackingOutside(t *testing.T) {
	dir := formattest.QemuDir(t)
	bait := filepath.Join(dir, "bait.raw")
	formattest.MakeRaw(t, bait, 1<<20, formattest.Dense)
	want, _ := os.ReadFile(bait)
	sub := filepath.Join(dir, "images")
	os.Mkdir(sub, 0o755)
	for name, ref := range map[string]string{"dotdot": "../bait.raw", "absolute": bait} {
		t.Run(name, func(t *testing.T) {
			ov := filepath.Join(sub, name+".qcow2")
			formattest.Create(t, ov, "qcow2", "1M", "-u", "-b", ref, "-F", "raw")
			_, err := format.Open(ov, "", format.Policy{})
			if !errors.Is(err, format.ErrOutsideDirectory) {
				t.Fatalf("default policy: err = %v, want ErrOutsideDirectory", err)
			}
			img, err := format.Open(ov, "", format.Policy{AllowOutside: true})
			if err != nil {
				t.Fatalf("AllowOutside: %v", err)
			}
			defer img.Close()
			got := make([]byte, len(want))
			if _, err := img.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("AllowOutside: data does not come from the backing file")
			}
			if img.Info().Backing == nil {
				t.Fatal("Info().Backing is nil")
			}
			if _, err := format.Open(ov, "", format.Policy{Untrusted: true}); !errors.Is(err, format.ErrOutsideDirectory) {
				t.Fatalf("untrusted: err = %v", err)
			}
		})
	}
}

func TestExternalDataFile(t *testing.T) {
	formattest.RequireQemu(t)
	for _, raw := range []string{"on", "off"} {
		t.Run("data_file_raw="+raw, func(t *testing.T) {
			// qemu 7.2 opens the data file relative to its working
			// directory, not the image's.
			dir := t.TempDir()
			t.Chdir(dir)
			img := filepath.Join(dir, "img.qcow2")
			formattest.Create(t, img, "qcow2", "4M", "-o", "data_file=img.data,data_file_raw="+raw)
			formattest.QemuIO(t, "qcow2", img, "write -P 0x11 0 70000", "write -z 1M 64k", "write -P 0x12 3M 4096")
			formattest.Check(t, img, formattest.Options{})
			if _, err := format.Open(img, "", format.Policy{Untrusted: true}); err == nil || !strings.Contains(err.Error(), "data file") {
				t.Fatalf("untrusted policy: err = %v, want a data file refusal", err)
			}
		})
	}
}

func TestBitmaps(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := formattest.Generate(t, dir, "img", "qcow2", 9<<20, formattest.Sparse)
	formattest.Qemu(t, "bitmap", "--add", path, "first")
	formattest.Qemu(t, "bitmap", "--add", "-g", "1M", "--disable", path, "second-bitmap")
	formattest.Check(t, path, formattest.Options{})
	img := formattest.Open(t, path, "")
	bm := img.Info().Specific.(*qcow2.Specific).Bitmaps
	if len(bm) != 2 || bm[1].Name != "second-bitmap" || bm[1].Granularity != 1<<20 || len(bm[1].Flags) != 0 {
		t.Fatalf("bitmaps = %+v", bm)
	}
}

// TestSnapshots checks that reads follow the active L1 table, not an
// internal snapshot's.
func TestSnapshots(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := formattest.Generate(t, dir, "img", "qcow2", 9<<20, formattest.Sparse)
	formattest.Qemu(t, "snapshot", "-c", "snap1", path)
	formattest.QemuIO(t, "qcow2", path, overlayWrites...)
	formattest.Check(t, path, formattest.Options{})
}

func TestDirtyCorrupt(t *testing.T) {
	dir := formattest.QemuDir(t)
	path := formattest.Generate(t, dir, "img", "qcow2", 1<<20, formattest.Sparse)
	data, _ := os.ReadFile(path)
	binary.BigEndian.PutUint64(data[72:], 3) // dirty and corrupt bits
	os.WriteFile(path, data, 0o644)
	formattest.Check(t, path, formattest.Options{})
	img := formattest.Open(t, path, "")
	if !img.Info().Dirty || !*img.Info().Specific.(*qcow2.Specific).Corrupt {
		t.Fatalf("dirty/corrupt not reported: %+v", img.Info())
	}
}

func TestEncrypted(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: qemu-img's LUKS key derivation takes seconds")
	}
	dir := formattest.QemuDir(t)
	path := filepath.Join(dir, "enc.qcow2")
	formattest.Qemu(t, "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=123456",
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, "1M")
	img := formattest.Open(t, path, "")
	// qemu-img shows the LUKS header details in format-specific, which
	// diskimg does not decode.
	formattest.CheckInfo(t, path, img, formattest.Options{IgnoreKeys: []string{"format-specific"}})
	if !img.Info().Encrypted {
		t.Fatal("Encrypted not set")
	}
	if _, err := img.ReadAt(make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("ReadAt of an encrypted image: err = %v", err)
	}
}

// TestCompressedSmallReads reads compressed images in odd small pieces.
func TestCompressedSmallReads(t *testing.T) {
	formattest.RequireQemu(t)
	for _, v := range [][]string{{"-c"}, {"-c", "-o", "compression_type=zstd,cluster_size=2M"}} {
		dir := t.TempDir()
		path := formattest.Generate(t, dir, "img", "qcow2", 5<<20+512, formattest.Dense, v...)
		ref := filepath.Join(dir, "ref.raw")
		formattest.Qemu(t, "convert", "-O", "raw", path, ref)
		want, _ := os.ReadFile(ref)
		img, err := format.Open(path, "", format.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		for off := 0; off < len(got); off += 777 {
			end := min(off+777, len(got))
			if n, err := img.ReadAt(got[off:end], int64(off)); n != end-off || (err != nil && err != io.EOF) {
				t.Fatalf("%v: ReadAt(%d) = %d, %v", v, off, n, err)
			}
		}
		img.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: small reads differ from qemu-img convert", v)
		}
	}
}

// cdiImages holds real-world images from KubeVirt CDI's tests (see
// testdata/README.md).
const cdiImages = "../../testdata/external/cdi-images.tar.zst"

// qemuNoBacking returns qemu-img arguments naming a real-world image with
// its backing file cut off, so qemu-img never opens one.
func qemuNoBacking(t *testing.T, path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(map[string]any{"driver": "qcow2", "backing": nil,
		"file": map[string]any{"driver": "file", "filename": abs}})
	return "json:" + string(js)
}

func TestRealWorld(t *testing.T) {
	formattest.RequireQemu(t)
	t.Run("fs-overhead", func(t *testing.T) {
		dir := formattest.Extract(t, cdiImages, "fs-overhead.qcow2")
		formattest.Check(t, filepath.Join(dir, "fs-overhead.qcow2"), formattest.Options{})
	})
	for _, tc := range []struct{ name, backing, format string }{
		{"cirros-snapshot1.qcow2", "cirros.raw", "raw"},
		{"cirros-snapshot2.qcow2", "cirros-snapshot1.qcow2", "qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The overlays are extracted together: the second's backing
			// file is the first.
			dir := formattest.Extract(t, cdiImages, "cirros-snapshot1.qcow2", "cirros-snapshot2.qcow2")
			path := filepath.Join(dir, tc.name)
			_, err := format.Open(path, "", format.Policy{})
			if err == nil || !strings.Contains(err.Error(), "cirros.raw") || !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("open with a missing backing file: err = %v, want it to name cirros.raw as missing", err)
			}
			img := formattest.OpenPolicy(t, path, "", format.Policy{NoBacking: true})
			info := img.Info()
			if info.BackingFile != tc.backing || info.BackingFormat != tc.format || info.Backing != nil {
				t.Fatalf("info: backing %q format %q", info.BackingFile, info.BackingFormat)
			}
			// Compare with qemu-img, its backing file cut off too.
			ref := filepath.Join(t.TempDir(), "ref.raw")
			formattest.Qemu(t, "convert", "-O", "raw", qemuNoBacking(t, path), ref)
			want, _ := os.ReadFile(ref)
			got := make([]byte, img.Size())
			if n, err := img.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("bytes differ from qemu-img convert with backing=null")
			}
			var ours, theirs []int64
			format.Walk(img, 0, func(e format.Extent) error {
				if e.Status == format.Data {
					ours = append(ours, e.Start, e.Length)
				}
				return nil
			})
			for _, e := range formattest.QemuMap(t, qemuNoBacking(t, path)) {
				if e.Data {
					theirs = append(theirs, e.Start, e.Length)
				}
			}
			if !equalRuns(ours, theirs) {
				t.Fatalf("data map differs:\nours   %v\nqemu   %v", ours, theirs)
			}
		})
	}
	t.Run("invalid-qcow-large-memory", func(t *testing.T) {
		// Despite its name the file is a VMDK sparse extent with a huge
		// grain directory; as qcow2 it must be refused at once.
		dir := formattest.Extract(t, cdiImages, "invalid-qcow-large-memory.img")
		start := time.Now()
		_, err := format.Open(filepath.Join(dir, "invalid-qcow-large-memory.img"), "qcow2", format.Policy{})
		if !errors.Is(err, format.ErrWrongType) {
			t.Fatalf("err = %v, want ErrWrongType", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %v", d)
		}
	})
}

// equalRuns compares (start, length) lists after merging adjacent runs.
func equalRuns(a, b []int64) bool {
	merge := func(r []int64) []int64 {
		var out []int64
		for i := 0; i+1 < len(r); i += 2 {
			if n := len(out); n > 0 && out[n-2]+out[n-1] == r[i] {
				out[n-1] += r[i+1]
				continue
			}
			out = append(out, r[i], r[i+1])
		}
		return out
	}
	a, b = merge(a), merge(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func FuzzQcow2(f *testing.F) { formattest.FuzzOpen(f, "qcow2", "../../testdata/qcow2") }

func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, "qcow2", "1T"), "", 4)
}

// makeCompressible writes a raw image of size bytes that compresses about
// 4:1, so qemu-img -c really stores compressed clusters.
func makeCompressible(b *testing.B, path string, size int64) {
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, size)
	for i := range data {
		if i%4 == 0 {
			data[i] = byte(rng.Intn(256))
		} else {
			data[i] = 'a' + byte(i%7)
		}
	}
	formattest.WriteFile(b, path, data)
}

var compressedBenchVariants = []struct {
	name string
	args []string
}{
	{"zlib-64k", []string{"-c"}},
	{"zlib-2M", []string{"-c", "-o", "cluster_size=2M"}},
	{"zstd-2M", []string{"-c", "-o", "cluster_size=2M,compression_type=zstd"}},
}

const compressedBenchSize = 32 << 20

func compressedBenchImage(b *testing.B, args []string) string {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	makeCompressible(b, src, compressedBenchSize)
	dst := filepath.Join(dir, "img.qcow2")
	formattest.Convert(b, src, dst, "qcow2", args...)
	if fi, _ := os.Stat(dst); fi.Size() > compressedBenchSize*7/8 {
		b.Fatalf("image of %d bytes is not compressed", fi.Size())
	}
	return dst
}

// BenchmarkReadCompressed reads a compressed image sequentially in 64 KiB
// pieces; each cluster must be decompressed once, not once per piece.
func BenchmarkReadCompressed(b *testing.B) {
	for _, v := range compressedBenchVariants {
		b.Run(v.name, func(b *testing.B) {
			img := formattest.Open(b, compressedBenchImage(b, v.args), "")
			benchRead(b, img)
		})
	}
}

func benchRead(b *testing.B, img io.ReaderAt) {
	buf := make([]byte, 64<<10)
	b.SetBytes(compressedBenchSize)
	b.ResetTimer()
	for b.Loop() {
		for off := int64(0); off < compressedBenchSize; off += int64(len(buf)) {
			if n, err := img.ReadAt(buf, off); n != len(buf) || (err != nil && err != io.EOF) {
				b.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
			}
		}
	}
}
