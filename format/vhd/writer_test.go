package vhd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	_ "github.com/diskimg/diskimg/format/qcow2"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/vhdx"
	_ "github.com/diskimg/diskimg/format/vmdk"
)

// wVariant is one way of writing a VHD: our -o options and qemu-img's
// equivalent (nil when qemu-img has none).
type wVariant struct {
	name string
	opts map[string]string
	qemu []string
}

var writerVariants = []wVariant{
	{"dynamic", nil, []string{"-o", "subformat=dynamic"}},
	{"fixed", map[string]string{"subformat": "fixed"}, []string{"-o", "subformat=fixed"}},
	{"dynamic-force", map[string]string{"subformat": "dynamic", "force_size": "on"}, []string{"-o", "subformat=dynamic,force_size=on"}},
	{"fixed-force", map[string]string{"subformat": "fixed", "force_size": "on"}, []string{"-o", "subformat=fixed,force_size=on"}},
	{"azure", map[string]string{"azure": "on"}, nil},
}

// convertVHD converts src to a VHD file at dst, checking the streamed
// checksum against the file.
func convertVHD(t testing.TB, src format.Image, dst string, opts map[string]string, co convert.Options) *convert.Result {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	co.WriterOptions = opts
	co.Checksum = true
	res, err := convert.Convert(context.Background(), src, formattest.Writer(t, "vhd"), f, co)
	if err != nil {
		t.Fatalf("convert to %s: %v", filepath.Base(dst), err)
	}
	formattest.WantFileSum(t, dst, res.SHA256)
	return res
}

// qemuCompare asserts qemu-img compare finds src and the VHD identical
// (a larger VHD's tail must read as zeros).
func qemuCompare(t testing.TB, src, srcFmt, vhd string) {
	t.Helper()
	if rc, out := formattest.QemuRC(t, "compare", "-f", srcFmt, "-F", Name, src, vhd); rc != 0 {
		t.Errorf("qemu-img compare %s %s: exit %d: %s", filepath.Base(src), filepath.Base(vhd), rc, out)
	}
}

// checkStructure verifies a VHD the writer made, as qemu-img check would
// if it supported the format: both footers, the header, every BAT entry
// (inside the file, in order, not overlapping, full bitmaps) and the file
// length. It returns the footer.
func checkStructure(t testing.TB, path string) []byte {
	t.Helper()
	data := formattest.ReadFile(t, path)
	n := int64(len(data))
	if n%sectorSize != 0 || n < vhdspec.FooterSize {
		t.Fatalf("%s: file of %d bytes is not whole sectors", path, n)
	}
	foot := data[n-vhdspec.FooterSize:]
	if err := checkSum(foot, vhdspec.OffChecksum, n-vhdspec.FooterSize, "footer checksum"); err != nil {
		t.Fatal(err)
	}
	if string(foot[:8]) != cookie || be32(foot[vhdspec.OffFormatVersion:]) != formatVersion || be32(foot[vhdspec.OffFeatures:]) != featureReserved {
		t.Fatalf("footer: % x", foot[:16])
	}
	size := int64(binary.BigEndian.Uint64(foot[vhdspec.OffCurrentSize:]))
	if orig := int64(binary.BigEndian.Uint64(foot[vhdspec.OffOriginalSize:])); orig != size {
		t.Errorf("original size %d, current size %d", orig, size)
	}
	switch be32(foot[vhdspec.OffDiskType:]) {
	case typeFixed:
		if n != size+vhdspec.FooterSize {
			t.Errorf("fixed disk of %d bytes in a file of %d", size, n)
		}
		return foot
	case typeDynamic:
	default:
		t.Fatalf("disk type %d", be32(foot[vhdspec.OffDiskType:]))
	}
	if !bytes.Equal(data[:vhdspec.FooterSize], foot) {
		t.Fatal("footer copy at offset 0 differs from the footer")
	}
	h := data[headerOffset : headerOffset+dynHeaderSize]
	if err := checkSum(h, dynChecksum, headerOffset, "header checksum"); err != nil {
		t.Fatal(err)
	}
	entries := int64(be32(h[dynMaxEntries:]))
	if be32(h[dynBlockSize:]) != WriterBlockSize || entries != (size+WriterBlockSize-1)/WriterBlockSize ||
		binary.BigEndian.Uint64(h[dynTableOffset:]) != batOffset {
		t.Fatalf("header: block size %d, %d entries for %d bytes", be32(h[dynBlockSize:]), entries, size)
	}
	dataStart := batOffset + roundUp(4*entries, sectorSize)
	for i := batOffset + 4*entries; i < dataStart; i++ {
		if data[i] != 0xFF {
			t.Fatalf("BAT padding byte at %d is %#x", i, data[i])
		}
	}
	next := dataStart
	for i := int64(0); i < entries; i++ {
		e := be32(data[batOffset+4*i:])
		if e == batUnused {
			continue
		}
		off := int64(e) * sectorSize
		if off != next {
			t.Fatalf("block %d at %d, expected %d", i, off, next)
		}
		if !bytes.Equal(data[off:off+bitmapBytes], fullBitmap) {
			t.Fatalf("block %d: bitmap not all set", i)
		}
		next = off + blockStride
	}
	if next+vhdspec.FooterSize != n {
		t.Errorf("blocks end at %d, footer at %d", next, n-vhdspec.FooterSize)
	}
	return foot
}

// TestWriterMatrix converts sources of every readable format, content and
// odd size into every writer variant, and checks each output's structure,
// qemu-img compare, Measure, and, for raw sources, qemu-img info and size
// against qemu-img's own conversion.
func TestWriterMatrix(t *testing.T) {
	formattest.RequireQemu(t)
	type source struct {
		fmt     string
		size    int64
		content formattest.Content
	}
	var sources []source
	for _, size := range []int64{9<<20 + 1536, 33<<20 + 4096} {
		for _, c := range formattest.Contents {
			if size > 32<<20 && c == formattest.Dense {
				continue // the smaller dense disk has all there is to see, faster
			}
			sources = append(sources, source{"raw", size, c})
		}
	}
	for _, f := range []string{"qcow2", "vmdk", Name, "vhdx"} {
		for _, c := range []formattest.Content{formattest.Sparse, formattest.Dense} {
			sources = append(sources, source{f, 9<<20 + 1536, c})
		}
	}
	for _, s := range sources {
		if testing.Short() && (s.fmt != "raw" || s.size > 10<<20 || s.content != formattest.Sparse) {
			continue // -short: one size and content, raw
		}
		t.Run(fmt.Sprintf("%s/%d/%s", s.fmt, s.size, s.content), func(t *testing.T) {
			t.Parallel() // mostly waiting for qemu-img
			dir := t.TempDir()
			rawPath := filepath.Join(dir, "src.raw")
			formattest.MakeRaw(t, rawPath, s.size, s.content)
			srcPath := rawPath
			if s.fmt != "raw" {
				srcPath = filepath.Join(dir, "src."+s.fmt)
				formattest.Convert(t, rawPath, srcPath, s.fmt)
			}
			src := formattest.Open(t, srcPath, s.fmt)
			for _, v := range writerVariants {
				out := filepath.Join(dir, v.name+".vhd")
				convertVHD(t, src, out, v.opts, convert.Options{})
				foot := checkStructure(t, out)
				qemuCompare(t, srcPath, s.fmt, out)
				m, err := convert.Measure(src, 0, formattest.Writer(t, "vhd"), convert.Options{WriterOptions: v.opts})
				if err != nil {
					t.Fatal(err)
				}
				size, alloc := formattest.FileSizes(t, out)
				// Blocks found all zero are left out: Required is an
				// upper bound, exact when every layout block has data.
				if m.Required < size {
					t.Errorf("%s: measure says %d bytes required, the output has %d", v.name, m.Required, size)
				}
				info := formattest.QemuInfo(t, out, "-f", Name)
				vs := int64(info["virtual-size"].(float64))
				if got := int64(binary.BigEndian.Uint64(foot[vhdspec.OffCurrentSize:])); got != vs {
					t.Errorf("%s: qemu-img reads %d bytes, the footer says %d", v.name, vs, got)
				}
				if v.qemu == nil || s.fmt != "raw" {
					continue
				}
				ref := filepath.Join(dir, v.name+".qemu.vhd")
				formattest.Convert(t, srcPath, ref, Name, v.qemu...)
				theirs := formattest.QemuInfo(t, ref, "-f", Name)
				for _, k := range []string{"virtual-size", "cluster-size", "format-specific"} {
					if fmt.Sprint(info[k]) != fmt.Sprint(theirs[k]) {
						t.Errorf("%s: info %q: ours %v, qemu-img %v", v.name, k, info[k], theirs[k])
					}
				}
				qsize, qalloc := formattest.FileSizes(t, ref)
				t.Logf("%s: ours %d bytes (%d allocated), qemu-img %d (%d allocated)", v.name, size, alloc, qsize, qalloc)
				// A block allocated exactly when it holds a nonzero byte,
				// as qemu-img does: the same file size.
				if size != qsize {
					t.Errorf("%s: output of %d bytes, qemu-img's %d", v.name, size, qsize)
				}
				if alloc > qalloc+64<<10 {
					t.Errorf("%s: output allocates %d bytes, qemu-img's %d", v.name, alloc, qalloc)
				}
			}
		})
	}
}

// TestWriterFullyAllocated checks Measure's fully-allocated figure against
// a conversion with no zero detection (-S 0) of an empty disk.
func TestWriterFullyAllocated(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Empty)
	img := formattest.Open(t, src, "raw")
	for _, v := range writerVariants {
		m, err := convert.Measure(img, 0, formattest.Writer(t, "vhd"), convert.Options{WriterOptions: v.opts})
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, v.name+".vhd")
		convertVHD(t, img, out, v.opts, convert.Options{SparseSize: convert.NoSparse})
		checkStructure(t, out)
		qemuCompare(t, src, "raw", out)
		if size, _ := formattest.FileSizes(t, out); size != m.FullyAllocated {
			t.Errorf("%s: fully allocated %d, measure says %d", v.name, size, m.FullyAllocated)
		}
	}
	// measure --size: an empty image, as qemu-img create makes it.
	m, err := convert.Measure(nil, 1<<20, formattest.Writer(t, "vhd"), convert.Options{})
	if err != nil || m.Required != 2560 || m.FullyAllocated != 2560+blockStride {
		t.Errorf("measure --size 1M: %+v, %v", m, err)
	}
	// qemu-img 7.2 cannot measure vpc, so there is nothing to compare
	// with; notice when it learns to.
	if rc, out := formattest.QemuRC(t, "measure", "-O", Name, "--output=json", src); rc == 0 || !strings.Contains(out, "does not support size measurement") {
		t.Errorf("qemu-img measure -O vpc now answers (exit %d): %s; compare Measure with it", rc, out)
	}
	if rc, out := formattest.QemuRC(t, "check", "-f", Name, filepath.Join(dir, "dynamic.vhd")); rc != 0 && !strings.Contains(out, "does not support checks") {
		t.Errorf("qemu-img check: exit %d: %s", rc, out)
	}
}

// TestWriterMatchesCreate writes empty disks of many sizes and compares
// them with qemu-img create's, byte for byte except the timestamp, the
// unique id and the checksum: the geometry, the creator, the sizes and
// the BAT. This is what makes qemu read our sizes as its own.
func TestWriterMatchesCreate(t *testing.T) {
	formattest.RequireQemu(t)
	sizes := []int64{0, 512, 1000, 1 << 20, 4 << 20, 9<<20 + 1536, 33<<20 + 4096, 1 << 30,
		65535*16*17*512 + 512, 65535*16*63*512 - 512, 65535*16*63*512 + 4096,
		vhdspec.MaxGeometry*512 - 512, vhdspec.MaxGeometry * 512, vhdspec.MaxGeometry*512 + 512, 200 << 30, MaxWriteSize}
	dir := t.TempDir()
	for _, size := range sizes {
		for _, v := range writerVariants[:4] {
			ref := filepath.Join(dir, "ref.vhd")
			os.Remove(ref)
			formattest.Create(t, ref, Name, fmt.Sprint(size), v.qemu...)
			want, _ := formattest.FileSizes(t, ref)
			var ours bytes.Buffer
			w, err := NewWriter(&ours, format.WriteOptions{Size: size, Options: v.opts,
				Layout: format.LayoutOfExtents([]format.Extent{{Length: size, Status: format.Unallocated}})})
			if err != nil {
				t.Fatalf("%d %s: %v", size, v.name, err)
			}
			fixed := w.p.fixed
			if fixed {
				// Fixed disks are mostly zeros: compare the footer only.
				ours.Write(w.footer)
			} else {
				if size > 0 {
					if err := w.Write(&format.Block{Length: size, Status: format.Unallocated}); err != nil {
						t.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			}
			got := ours.Bytes()
			f, err := os.Open(ref)
			if err != nil {
				t.Fatal(err)
			}
			theirs := make([]byte, len(got))
			at := int64(0)
			if fixed {
				at = want - vhdspec.FooterSize
				if want != w.p.size+vhdspec.FooterSize {
					t.Errorf("%d %s: qemu-img's file is %d bytes, ours %d", size, v.name, want, w.p.size+vhdspec.FooterSize)
				}
			} else if int64(len(got)) != want {
				t.Fatalf("%d %s: qemu-img's file is %d bytes, ours %d", size, v.name, want, len(got))
			}
			_, err = f.ReadAt(theirs, at)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range [][]byte{got, theirs} {
				mask(b, 0)
				if !fixed {
					mask(b, len(b)-vhdspec.FooterSize)
				}
			}
			if i := diffAt(got, theirs); i >= 0 {
				t.Errorf("%d %s: byte %d differs from qemu-img create's: ours %#x, qemu-img %#x", size, v.name, i, got[i], theirs[i])
			}
		}
	}
}

// diffAt returns the first offset where a and b differ, -1 if equal.
func diffAt(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	return formattest.FirstDiff(a, b)
}

// mask zeroes the footer fields that differ between any two images.
func mask(b []byte, off int) {
	f := b[off : off+vhdspec.FooterSize]
	clear(f[vhdspec.OffTimestamp : vhdspec.OffTimestamp+4])
	clear(f[vhdspec.OffChecksum : vhdspec.OffChecksum+4])
	clear(f[vhdspec.OffUniqueID : vhdspec.OffUniqueID+16])
}

// fixedIdentity makes the next images' timestamps and unique ids equal.
func fixedIdentity(t *testing.T) {
	oldNow, oldUUID := now, newUUID
	now = func() time.Time { return time.Unix(vhdspec.Epoch.Unix()+12345, 0) }
	newUUID = func() ([16]byte, error) { return [16]byte{1, 2, 3, 4, 5, 6, 0x47, 8, 0x89}, nil }
	t.Cleanup(func() { now, newUUID = oldNow, oldUUID })
}

// TestWriterPipe streams through a pipe and checks the bytes equal those
// of the file, for sources whose data blocks arrive as data and as zeros.
func TestWriterPipe(t *testing.T) {
	formattest.RequireQemu(t)
	fixedIdentity(t)
	dir := t.TempDir()
	for _, c := range []formattest.Content{formattest.Sparse, formattest.Zeros, formattest.Empty} {
		src := filepath.Join(dir, string(c)+".raw")
		formattest.MakeRaw(t, src, 9<<20+1536, c)
		img := formattest.Open(t, src, "raw")
		for _, v := range writerVariants {
			path := filepath.Join(dir, string(c)+"-"+v.name+".vhd")
			convertVHD(t, img, path, v.opts, convert.Options{})
			want, _ := os.ReadFile(path)

			var res *convert.Result
			got := formattest.Piped(t, func(pw *os.File) (err error) {
				res, err = convert.Convert(context.Background(), img, formattest.Writer(t, "vhd"), pw,
					convert.Options{WriterOptions: v.opts, Checksum: true})
				if err != nil {
					return fmt.Errorf("%s %s: convert to a pipe: %w", c, v.name, err)
				}
				return nil
			})
			if i := diffAt(got, want); i >= 0 {
				t.Fatalf("%s %s: piped output differs from the file at byte %d (%d vs %d bytes)", c, v.name, i, len(got), len(want))
			}
			if sum := sha256.Sum256(want); !bytes.Equal(res.SHA256, sum[:]) {
				t.Errorf("%s %s: piped checksum differs", c, v.name)
			}
		}
	}
	// And qemu-img reads the piped bytes.
	qemuCompare(t, filepath.Join(dir, "sparse.raw"), "raw", filepath.Join(dir, "sparse-dynamic.vhd"))
}

// TestWriterAzure checks azure=on: a fixed disk of a whole number of MiB
// whose first source-size bytes are the source.
func TestWriterAzure(t *testing.T) {
	dir := formattest.QemuDir(t)
	for _, size := range []int64{9<<20 + 1536, 4 << 20, 1000} {
		src := filepath.Join(dir, "src.raw")
		formattest.MakeRaw(t, src, size, formattest.Dense)
		img := formattest.Open(t, src, "raw")
		out := filepath.Join(dir, fmt.Sprintf("azure-%d.vhd", size))
		convertVHD(t, img, out, map[string]string{"azure": "on"}, convert.Options{})
		foot := checkStructure(t, out)
		want := roundUp(size, 1<<20)
		info := formattest.QemuInfo(t, out, "-f", Name)
		if vs := int64(info["virtual-size"].(float64)); vs != want || vs%(1<<20) != 0 {
			t.Errorf("size %d: virtual size %d, want %d (a whole MiB)", size, vs, want)
		}
		if be32(foot[vhdspec.OffDiskType:]) != typeFixed || string(foot[vhdspec.OffCreatorApp:vhdspec.OffCreatorApp+4]) != creatorQemuForced {
			t.Errorf("size %d: disk type %d, creator %q", size, be32(foot[vhdspec.OffDiskType:]), foot[vhdspec.OffCreatorApp:vhdspec.OffCreatorApp+4])
		}
		if n, _ := formattest.FileSizes(t, out); n != want+vhdspec.FooterSize {
			t.Errorf("size %d: file of %d bytes, want %d", size, n, want+vhdspec.FooterSize)
		}
		qemuCompare(t, src, "raw", out)
		// Our reader agrees, and the tail is zeros.
		v := formattest.Open(t, out, Name)
		got := make([]byte, v.Size())
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		orig, _ := os.ReadFile(src)
		if !bytes.Equal(got[:len(orig)], orig) || !bytes.Equal(got[len(orig):], make([]byte, len(got)-len(orig))) {
			t.Errorf("size %d: content differs", size)
		}
	}
}

// TestWriterOptions checks option validation before any byte is written.
func TestWriterOptions(t *testing.T) {
	w := formattest.Writer(t, "vhd")
	for _, c := range []struct {
		opts map[string]string
		size int64
		want string // "" for valid
	}{
		{nil, 1 << 20, ""},
		{map[string]string{"subformat": "fixed", "force_size": "off"}, 1 << 20, ""},
		{map[string]string{"azure": "on", "subformat": "fixed", "force_size": "on"}, 1 << 20, ""},
		{map[string]string{"block_size": "2M"}, 1 << 20, "valid options: subformat, force_size, azure"},
		{map[string]string{"subformat": "streamOptimized"}, 1 << 20, "must be one of dynamic, fixed"},
		{map[string]string{"force_size": "maybe"}, 1 << 20, "must be on or off"},
		{map[string]string{"azure": "on", "subformat": "dynamic"}, 1 << 20, "azure=on writes a fixed disk"},
		{map[string]string{"azure": "on", "force_size": "off"}, 1 << 20, "cannot be combined with force_size=off"},
		{nil, MaxWriteSize + 512, "out of range"},
		{map[string]string{"azure": "on"}, MaxWriteSize, ""},
		{map[string]string{"force_size": "on"}, MaxWriteSize - 1, ""},
	} {
		err := w.Validate(format.WriteOptions{Size: c.size, Options: c.opts})
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%v size %d: %v, want %q", c.opts, c.size, err, c.want)
		}
	}
	// The 2040 GiB limit is on the rounded size.
	if _, err := planOf(format.WriteOptions{Size: MaxWriteSize - 100, Options: map[string]string{"azure": "on"}}); err != nil {
		t.Errorf("azure just under the limit: %v", err)
	}
}

// TestWriterErrors feeds the writer blocks that break the contract.
func TestWriterErrors(t *testing.T) {
	layout := format.LayoutOfExtents([]format.Extent{
		{Start: 0, Length: 2 << 20, Status: format.Data},
		{Start: 2 << 20, Length: 4 << 20, Status: format.Unallocated},
	})
	newW := func() *Writer {
		w, err := NewWriter(&bytes.Buffer{}, format.WriteOptions{Size: 6 << 20, Layout: layout})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	data := make([]byte, 2<<20)
	w := newW()
	if err := w.Write(&format.Block{Start: 2 << 20, Length: 2 << 20, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "expected one at 0") {
		t.Errorf("out of order: %v", err)
	}
	if err := w.Write(&format.Block{Length: 2 << 20, Status: format.Data, Data: data[:100]}); err == nil || !strings.Contains(err.Error(), "carries 100 bytes") {
		t.Errorf("short data: %v", err)
	}
	w.Write(&format.Block{Length: 2 << 20, Status: format.Data, Data: data})
	if err := w.Write(&format.Block{Start: 2 << 20, Length: 2 << 20, Status: format.Data, Data: data}); err == nil || !strings.Contains(err.Error(), "left unallocated") {
		t.Errorf("data outside the layout: %v", err)
	}
	if err := newW().Close(); err == nil || !strings.Contains(err.Error(), "closed after 0") {
		t.Errorf("early close: %v", err)
	}
	w = newW()
	if err := w.Write(&format.Block{Length: 8 << 20, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "outside the disk") {
		t.Errorf("block past the end: %v", err)
	}
	f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
	defer f.Close()
	f.Write([]byte("abc"))
	if _, err := NewWriter(f, format.WriteOptions{Size: 1 << 20}); err == nil {
		t.Error("writer accepted a file positioned at 3")
	}
}

// TestWriterReadBack reads our output with our reader: a multi-block
// dynamic disk with data, zero and unallocated blocks, and zero pages.
func TestWriterReadBack(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 33<<20+4096, formattest.Sparse)
	img := formattest.Open(t, src, "raw")
	out := filepath.Join(dir, "out.vhd")
	convertVHD(t, img, out, nil, convert.Options{})
	v := formattest.Open(t, out, Name)
	want, _ := os.ReadFile(src)
	got := make([]byte, len(want))
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := diffAt(got, want); i >= 0 {
		t.Fatalf("byte %d differs", i)
	}
	// Zero pages in data blocks are holes: the sparse source's data is a
	// few KiB per block.
	if _, alloc := formattest.FileSizes(t, out); alloc > 512<<10 {
		t.Errorf("sparse output allocates %d bytes", alloc)
	}
}

// TestWriterLongBlocks writes blocks longer than a VHD block, as the
// contract allows: data over three blocks, then zeros over allocated and
// unallocated blocks, and reads the image back.
func TestWriterLongBlocks(t *testing.T) {
	const size = 11<<20 + 512
	layout := format.LayoutOfExtents([]format.Extent{
		{Start: 0, Length: 7 << 20, Status: format.Data},
		{Start: 7 << 20, Length: 3 << 20, Status: format.Unallocated},
		{Start: 10 << 20, Length: size - 10<<20, Status: format.Data},
	})
	for _, seekable := range []bool{false, true} {
		var dst format.Target = &bytes.Buffer{}
		path := filepath.Join(t.TempDir(), "out.vhd")
		if seekable {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			dst = f
		}
		w, err := NewWriter(dst, format.WriteOptions{Size: size, Layout: layout})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, size)
		rand.New(rand.NewSource(2)).Read(want[:6<<20])
		copy(want[6<<20+8192:], "a lone page after a zero page")
		blocks := []format.Block{
			{Start: 0, Length: 8 << 20, Status: format.Data, Data: want[:8<<20]},
			{Start: 8 << 20, Length: size - 8<<20, Status: format.Zero},
		}
		formattest.WriteBlocks(t, w, blocks)
		var data []byte
		if seekable {
			data, _ = os.ReadFile(path)
		} else {
			data = dst.(*bytes.Buffer).Bytes()
		}
		img, err := Open(&formattest.MemFile{Data: data})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if i := diffAt(got, want); i >= 0 {
			t.Fatalf("seekable=%v: byte %d differs", seekable, i)
		}
		// On a pipe without a data scan the layout's data makes blocks
		// 0-3 (7 MiB ends in block 3) and 5 allocated; block 4 is not. On
		// a file only blocks that data arrived for: 0-3.
		n := len(img.used)
		if want := map[bool]int{false: 5, true: 4}[seekable]; n != want {
			t.Errorf("seekable=%v: %d blocks allocated, want %d", seekable, n, want)
		}
	}
}

// BenchmarkConvert256MiB converts 256 MiB of random data from raw, with
// diskimg and with qemu-img in the same run: compare the ns/op of the
// diskimg-* and qemu-img-* lines.
func BenchmarkConvert256MiB(b *testing.B) {
	formattest.RequireQemu(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	const size = 256 << 20
	formattest.WriteSource(b, src, size, nil)
	img := formattest.Open(b, src, "raw")
	for _, v := range writerVariants[:2] {
		out := filepath.Join(dir, "out.vhd")
		b.Run("diskimg-"+v.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				os.Remove(out)
				f, err := os.Create(out)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := convert.Convert(context.Background(), img, formattest.Writer(b, "vhd"), f, convert.Options{WriterOptions: v.opts}); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
		b.Run("qemu-img-"+v.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				os.Remove(out)
				formattest.Convert(b, src, out, Name, v.qemu...)
			}
		})
	}
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw disk to a dynamic
// VHD: metadata only (a 2 MiB BAT), well under 0.1 s.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(b, src, 1<<40, formattest.Empty)
	img := formattest.Open(b, src, "raw")
	out := filepath.Join(dir, "out.vhd")
	b.Run("diskimg", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			os.Remove(out)
			f, err := os.Create(out)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := convert.Convert(context.Background(), img, formattest.Writer(b, "vhd"), f, convert.Options{}); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		formattest.RequireQemu(b)
		for b.Loop() {
			os.Remove(out)
			formattest.Convert(b, src, out, Name)
		}
	})
}
