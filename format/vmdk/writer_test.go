package vmdk

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/qcow2"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/vhd"
	_ "github.com/diskimg/diskimg/format/vhdx"
)

// wVariant is one way of writing a VMDK: our options and the qemu-img
// arguments that ask for the same.
type wVariant struct {
	name     string
	opts     map[string]string
	compress bool
	qemu     []string
}

var wVariants = []wVariant{
	{"default", nil, false, nil},
	{"stream", map[string]string{"subformat": "streamOptimized"}, false, []string{"-o", "subformat=streamOptimized"}},
	{"lsilogic-hw6", map[string]string{"adapter_type": "lsilogic", "hwversion": "6", "toolsversion": "10304"}, false,
		[]string{"-o", "adapter_type=lsilogic,hwversion=6,toolsversion=10304"}},
	{"compat6-zeroed", map[string]string{"compat6": "on", "zeroed_grain": "on", "adapter_type": "legacyESX"}, false,
		[]string{"-o", "compat6=on,zeroed_grain=on,adapter_type=legacyESX"}},
	{"compressed", nil, true, []string{"-c"}},
	{"stream-buslogic", map[string]string{"subformat": "streamOptimized", "adapter_type": "buslogic"}, true,
		[]string{"-c", "-o", "subformat=streamOptimized,adapter_type=buslogic"}},
}

// fixedCID makes the writer's descriptor CID fixed for the test, so
// outputs of the same conversion are equal.
func fixedCID(t *testing.T) {
	saved := newCID
	newCID = func() uint32 { return 0x1234abcd }
	t.Cleanup(func() { newCID = saved })
}

// wConvert converts src to a VMDK at dst, checking that the streamed
// checksum is the file's.
func wConvert(t testing.TB, src format.Image, dst string, v wVariant, co convert.Options) *convert.Result {
	t.Helper()
	co.Checksum = true
	res := convertFile(t, src, dst, v, co)
	formattest.WantFileSum(t, dst, res.SHA256)
	return res
}

// convertFile converts src to a VMDK at dst in variant v.
func convertFile(t testing.TB, src format.Image, dst string, v wVariant, co convert.Options) *convert.Result {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	co.WriterOptions, co.Compress = v.opts, v.compress
	res, err := convert.Convert(context.Background(), src, formattest.Writer(t, Name), f, co)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("convert to %s: %v", filepath.Base(dst), err)
	}
	return res
}

// wVerify asserts qemu-img check is clean, qemu-img compare finds the
// output identical to the source, and our reader reads the source's bytes.
func wVerify(t testing.TB, src format.Image, srcPath, srcFmt, out string) {
	t.Helper()
	if rc, msg := formattest.QemuRC(t, "check", "-f", Name, out); rc != 0 || !strings.Contains(msg, "No errors") {
		t.Errorf("qemu-img check %s: exit %d: %s", filepath.Base(out), rc, msg)
	}
	if rc, msg := formattest.QemuRC(t, "compare", "-f", srcFmt, "-F", Name, srcPath, out); rc != 0 {
		t.Errorf("qemu-img compare %s %s: exit %d: %s", filepath.Base(srcPath), filepath.Base(out), rc, msg)
	}
	img := formattest.Open(t, out, Name)
	if img.Size() != (src.Size()+sectorSize-1)/sectorSize*sectorSize {
		t.Fatalf("our reader: size %d, source %d", img.Size(), src.Size())
	}
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < src.Size(); off += int64(len(a)) {
		n := min(int64(len(a)), src.Size()-off)
		if _, err := io.ReadFull(io.NewSectionReader(src, off, n), a[:n]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(io.NewSectionReader(img, off, n), b[:n]); err != nil {
			t.Fatalf("our reader at %d: %v", off, err)
		}
		if !bytes.Equal(a[:n], b[:n]) {
			t.Fatalf("our reader: bytes differ in [%d,+%d)", off, n)
		}
	}
}

// wSources makes raw sources and qemu-img conversions of them to every
// readable format.
type wSource struct {
	name, path, fmt string
}

func wSources(t *testing.T, dir string, size int64, c formattest.Content, formats []string) []wSource {
	raw := filepath.Join(dir, fmt.Sprintf("%d-%s.raw", size, c))
	formattest.MakeRaw(t, raw, size, c)
	list := []wSource{{"raw", raw, "raw"}}
	for _, f := range formats {
		dst := strings.TrimSuffix(raw, ".raw") + "." + f
		formattest.Convert(t, raw, dst, f)
		list = append(list, wSource{f, dst, f})
	}
	return list
}

// TestWriterMatrix converts sources of every readable format, contents
// and odd sizes to every variant, and checks each output with qemu-img and
// our reader.
func TestWriterMatrix(t *testing.T) {
	formattest.RequireQemu(t)
	type size struct {
		n        int64
		contents []formattest.Content
	}
	for _, sz := range []size{
		{9<<20 + 1536, []formattest.Content{formattest.Empty, formattest.Sparse, formattest.Dense, formattest.Zeros}},
		{33<<20 + 4096, []formattest.Content{formattest.Sparse, formattest.Dense}},
	} {
		for _, c := range sz.contents {
			if testing.Short() && (sz.n > 10<<20 || c != formattest.Sparse) {
				continue // -short: one size and content
			}
			dir := t.TempDir()
			for _, s := range wSources(t, dir, sz.n, c, []string{"qcow2", "vmdk", "vpc", "vhdx"}) {
				variants := wVariants
				if s.fmt != "raw" {
					variants = wVariants[:2] // every option on raw, the subformats on the rest
				}
				for _, v := range variants {
					t.Run(fmt.Sprintf("%d/%s/%s/%s", sz.n, c, s.name, v.name), func(t *testing.T) {
						t.Parallel()
						src := formattest.Open(t, s.path, s.fmt)
						out := filepath.Join(t.TempDir(), "out.vmdk")
						wConvert(t, src, out, v, convert.Options{})
						wVerify(t, src, s.path, s.fmt, out)
					})
				}
			}
		}
	}
}

// maskDescriptor blanks what legitimately differs between two outputs'
// descriptors: the CID and the extent's file name.
var cidLine = regexp.MustCompile(`(?m)^CID=[0-9a-f]+$`)
var extentLineRE = regexp.MustCompile(`(?m)^(RW \d+ SPARSE) "[^"]*"$`)

func descriptorText(t testing.TB, path string) string {
	t.Helper()
	data := formattest.ReadFile(t, path)
	d := data[descSector*sectorSize : (descSector+descSectors)*sectorSize]
	if i := bytes.IndexByte(d, 0); i >= 0 {
		d = d[:i]
	}
	s := cidLine.ReplaceAllString(string(d), "CID=*")
	return extentLineRE.ReplaceAllString(s, `$1 "*"`)
}

// TestWriterLikeQemu compares each variant's output with qemu-img's own
// conversion of the same source: info (virtual size, cluster size,
// format-specific data but the CID), the descriptor, the sizes, and for
// monolithicSparse every byte outside the descriptor.
func TestWriterLikeQemu(t *testing.T) {
	dir := formattest.QemuDir(t)
	for _, c := range []formattest.Content{formattest.Sparse, formattest.Dense} {
		if testing.Short() && c != formattest.Sparse {
			continue // -short: one content
		}
		raw := filepath.Join(dir, string(c)+".raw")
		formattest.MakeRaw(t, raw, 33<<20+4096, c)
		// qemu-img drops all-zero grains; a qcow2 source made by it has
		// none, so the Layout allocates what qemu-img allocates.
		q2 := filepath.Join(dir, string(c)+".qcow2")
		formattest.Convert(t, raw, q2, "qcow2")
		for _, v := range wVariants {
			t.Run(string(c)+"/"+v.name, func(t *testing.T) {
				ours := filepath.Join(t.TempDir(), "ours.vmdk")
				theirs := filepath.Join(t.TempDir(), "theirs.vmdk")
				wConvert(t, formattest.Open(t, q2, "qcow2"), ours, v, convert.Options{})
				formattest.Qemu(t, append(append([]string{"convert", "-f", "qcow2", "-O", Name}, v.qemu...), q2, theirs)...)
				oi, qi := formattest.QemuInfo(t, ours), formattest.QemuInfo(t, theirs)
				for _, k := range []string{"virtual-size", "cluster-size", "format", "dirty-flag"} {
					if fmt.Sprint(oi[k]) != fmt.Sprint(qi[k]) {
						t.Errorf("%s: ours %v, qemu-img's %v", k, oi[k], qi[k])
					}
				}
				spec := func(m map[string]any) string {
					d := m["format-specific"].(map[string]any)["data"].(map[string]any)
					delete(d, "cid")
					for _, e := range d["extents"].([]any) {
						delete(e.(map[string]any), "filename")
					}
					return fmt.Sprint(d)
				}
				if o, q := spec(oi), spec(qi); o != q {
					t.Errorf("format-specific:\nours  %s\nqemu's %s", o, q)
				}
				if o, q := descriptorText(t, ours), descriptorText(t, theirs); o != q {
					t.Errorf("descriptor:\nours:\n%s\nqemu-img's:\n%s", o, q)
				}
				a, _ := os.ReadFile(ours)
				b, _ := os.ReadFile(theirs)
				t.Logf("%s %s: ours %d bytes, qemu-img's %d bytes", c, v.name, len(a), len(b))
				if v.opts["subformat"] == SubformatStreamOptimized {
					// Our stream is VMware's layout (tables after the grains),
					// qemu's keeps them in front: sizes only need to be close.
					if len(a) > len(b)+64<<10 {
						t.Errorf("stream of %d bytes, qemu-img's %d", len(a), len(b))
					}
					return
				}
				if len(a) != len(b) {
					t.Fatalf("monolithicSparse of %d bytes, qemu-img's %d", len(a), len(b))
				}
				clear(a[descSector*sectorSize : (descSector+descSectors)*sectorSize])
				clear(b[descSector*sectorSize : (descSector+descSectors)*sectorSize])
				if !bytes.Equal(a, b) {
					for i := range a {
						if a[i] != b[i] {
							t.Fatalf("first difference from qemu-img's file at offset %d", i)
						}
					}
				}
			})
		}
	}
}

// pipeConvert converts src to a pipe and returns the bytes.
func pipeConvert(t testing.TB, src format.Image, v wVariant, co convert.Options) []byte {
	t.Helper()
	co.WriterOptions, co.Compress = v.opts, v.compress
	return formattest.Piped(t, func(w *os.File) error {
		if _, err := convert.Convert(context.Background(), src, formattest.Writer(t, Name), w, co); err != nil {
			return fmt.Errorf("convert to a pipe: %w", err)
		}
		return nil
	})
}

// TestWriterPipe streams every variant to a pipe: the bytes must be the
// seekable output's. With a raw source holding written zeros the engine's
// data scan leaves those grains out of a pipe's tables, as a file leaves
// them unallocated.
func TestWriterPipe(t *testing.T) {
	formattest.RequireQemu(t)
	fixedCID(t)
	dir := t.TempDir()
	for _, c := range []formattest.Content{formattest.Sparse, formattest.Zeros, formattest.Empty} {
		raw := filepath.Join(dir, string(c)+".raw")
		formattest.MakeRaw(t, raw, 33<<20+4096, c)
		for _, v := range wVariants {
			t.Run(string(c)+"/"+v.name, func(t *testing.T) {
				src := formattest.Open(t, raw, "raw")
				file := filepath.Join(t.TempDir(), "image.vmdk")
				wConvert(t, src, file, v, convert.Options{})
				want, _ := os.ReadFile(file)
				got := pipeConvert(t, src, v, convert.Options{})
				if !bytes.Equal(got, want) {
					t.Fatalf("pipe output (%d bytes) differs from the file (%d bytes)", len(got), len(want))
				}
				piped := filepath.Join(t.TempDir(), "piped.vmdk")
				os.WriteFile(piped, got, 0o644)
				wVerify(t, src, raw, "raw", piped)
			})
		}
	}
}

// writtenRaw writes a raw file of size bytes that holds written zeros
// everywhere (no hole: the source's layout calls it all data) but random
// bytes in the ranges given.
func writtenRaw(t testing.TB, path string, size int64, data [][2]int64) {
	t.Helper()
	buf := make([]byte, size)
	rng := rand.New(rand.NewSource(size))
	for _, r := range data {
		rng.Read(buf[r[0]:min(r[0]+r[1], size)])
	}
	formattest.WriteFile(t, path, buf)
}

// writtenZeroCase is a raw source whose data holds written zeros; data
// nil means formattest.Zeros.
type writtenZeroCase struct {
	name string
	size int64
	data [][2]int64
}

// writtenZeroCases are the sources of TestWriterWrittenZeros.
func writtenZeroCases() []writtenZeroCase {
	const g = WriterGrainSize
	var alternating [][2]int64
	for i := int64(0); i < 64; i += 2 { // every other grain of the first table
		alternating = append(alternating, [2]int64{i * g, g})
	}
	for i := int64(512); i < 640; i += 3 { // every third of the second, one byte each
		alternating = append(alternating, [2]int64{i*g + g/2, 1})
	}
	alt := writtenZeroCase{"alternating", 40<<20 + 1536, append(alternating, [2]int64{40<<20 + 1535, 1})}
	if testing.Short() {
		return []writtenZeroCase{alt} // -short: the source with grain- and byte-sized runs
	}
	return []writtenZeroCase{
		{"zeros", 33<<20 + 4096, nil}, // formattest.Zeros
		{"dd", 64 << 20, [][2]int64{{10 << 20, 1 << 20}}},
		alt,
	}
}

// makeWrittenZeros writes c's raw source at path.
func makeWrittenZeros(t testing.TB, path string, c writtenZeroCase) {
	t.Helper()
	if c.data == nil {
		formattest.MakeRaw(t, path, c.size, formattest.Zeros)
	} else {
		writtenRaw(t, path, c.size, c.data)
	}
}

// TestWriterWrittenZeros converts raw sources whose data holds written
// zeros: the grains that hold only zeros must stay unallocated, as qemu-img
// leaves them, in a file and on a pipe alike. Outputs are no larger than
// qemu-img's (monolithicSparse: the same bytes but the descriptor), clean
// for qemu-img check and identical to the source for qemu-img compare, and
// a pipe gets the file's bytes.
func TestWriterWrittenZeros(t *testing.T) {
	formattest.RequireQemu(t)
	fixedCID(t)
	dir := t.TempDir()
	for _, c := range writtenZeroCases() {
		raw := filepath.Join(dir, c.name+".raw")
		makeWrittenZeros(t, raw, c)
		for _, v := range wVariants {
			t.Run(c.name+"/"+v.name, func(t *testing.T) {
				src := formattest.Open(t, raw, "raw")
				// The name a pipe's descriptor gives the extent.
				ours := filepath.Join(t.TempDir(), "image.vmdk")
				theirs := filepath.Join(t.TempDir(), "theirs.vmdk")
				wConvert(t, src, ours, v, convert.Options{})
				formattest.Qemu(t, append(append([]string{"convert", "-f", "raw", "-O", Name}, v.qemu...), raw, theirs)...)
				a, _ := os.ReadFile(ours)
				b, _ := os.ReadFile(theirs)
				t.Logf("%s %s: ours %d bytes, qemu-img's %d bytes", c.name, v.name, len(a), len(b))
				if v.opts["subformat"] == SubformatStreamOptimized {
					// Compressed grains and tables placed otherwise: close.
					if len(a) > len(b)+64<<10 {
						t.Errorf("stream of %d bytes, qemu-img's %d", len(a), len(b))
					}
				} else {
					if len(a) > len(b) {
						t.Fatalf("monolithicSparse of %d bytes, qemu-img's %d", len(a), len(b))
					}
					x, y := bytes.Clone(a), bytes.Clone(b)
					clear(x[descSector*sectorSize : (descSector+descSectors)*sectorSize])
					clear(y[descSector*sectorSize : (descSector+descSectors)*sectorSize])
					if i := formattest.FirstDiff(x, y); i >= 0 {
						t.Errorf("first difference from qemu-img's file at offset %d", i)
					}
				}
				wVerify(t, src, raw, "raw", ours)
				got := pipeConvert(t, src, v, convert.Options{})
				if i := formattest.FirstDiff(got, a); i >= 0 {
					t.Fatalf("pipe output (%d bytes) differs from the file (%d bytes) at offset %d", len(got), len(a), i)
				}
			})
		}
	}
}

// writeOnlyFile is a destination that can seek but cannot be read back
// (no ReadAt, no Fd): the engine's --checksum must then be streamed. It
// fails a write below an offset already written, the front-to-back rule.
type writeOnlyFile struct {
	formattest.WatchedTarget
	hi   int64
	back bool // a write went back
}

func newWriteOnlyFile(f *os.File) *writeOnlyFile {
	w := &writeOnlyFile{}
	w.RandomTarget = f
	w.OnWrite = func(p []byte, off int64) (int, error) {
		n, err := f.WriteAt(p, off)
		if n > 0 && off < w.hi {
			w.back = true
		}
		w.hi = max(w.hi, off+int64(n))
		return n, err
	}
	return w
}

// writeOnlyConvert converts src into a writeOnlyFile at path.
func writeOnlyConvert(t testing.TB, src format.Image, path string, v wVariant, co convert.Options) (*convert.Result, *writeOnlyFile) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := newWriteOnlyFile(f)
	co.WriterOptions, co.Compress = v.opts, v.compress
	res, err := convert.Convert(context.Background(), src, formattest.Writer(t, Name), w, co)
	if err != nil {
		t.Fatalf("convert to %s (checksum %v): %v", filepath.Base(path), co.Checksum, err)
	}
	return res, w
}

// TestWriterFrontToBack converts sources holding written zeros (and a
// sparse one) with --checksum into a file that cannot be read back: the
// writer must write it front to back (the checksum streamed, no read-back
// pass), the checksum must be the file's, and the bytes those of the same
// conversion without --checksum, where monolithicSparse writes its header
// and tables last.
func TestWriterFrontToBack(t *testing.T) {
	formattest.RequireQemu(t)
	fixedCID(t)
	dir := t.TempDir()
	var raws []string
	for _, c := range writtenZeroCases() {
		raw := filepath.Join(dir, c.name+".raw")
		makeWrittenZeros(t, raw, c)
		raws = append(raws, raw)
	}
	sparse := filepath.Join(dir, "sparse.raw")
	formattest.MakeRaw(t, sparse, 70<<20+512, formattest.Sparse)
	raws = append(raws, sparse)
	for _, raw := range raws {
		for _, v := range wVariants {
			name := strings.TrimSuffix(filepath.Base(raw), ".raw")
			t.Run(name+"/"+v.name, func(t *testing.T) {
				src := formattest.Open(t, raw, "raw")
				tmp := t.TempDir()
				ftb := filepath.Join(tmp, "ftb.vmdk")
				res, w := writeOnlyConvert(t, src, ftb, v, convert.Options{Checksum: true})
				if w.back {
					t.Errorf("with --checksum the writer went back over written bytes")
				}
				got := formattest.ReadFile(t, ftb)
				formattest.WantFileSum(t, ftb, res.SHA256)
				plain := filepath.Join(tmp, "plain.vmdk")
				_, pw := writeOnlyConvert(t, src, plain, v, convert.Options{})
				if v.opts["subformat"] != SubformatStreamOptimized && !pw.back {
					// Without data grains there is nothing to write before
					// the header, so the plain output is front to back too.
					t.Logf("the plain output was written front to back as well")
				}
				want := formattest.ReadFile(t, plain)
				if i := formattest.FirstDiff(got, want); i >= 0 {
					t.Fatalf("front-to-back output (%d bytes) differs from the plain one (%d bytes) at offset %d", len(got), len(want), i)
				}
				wVerify(t, src, raw, "raw", ftb)
			})
		}
	}
}

// TestWriterMeasure checks Measure against what the writer writes:
// exact for monolithicSparse, an upper bound for streamOptimized. (qemu-img
// 7.2 cannot measure VMDK: "does not support size measurement".)
func TestWriterMeasure(t *testing.T) {
	formattest.RequireQemu(t)
	if rc, msg := formattest.QemuRC(t, "measure", "-O", Name, "--size", "1G"); rc == 0 {
		t.Logf("qemu-img now measures vmdk: %s", msg)
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "s.raw")
	formattest.MakeRaw(t, raw, 33<<20+4096, formattest.Sparse)
	q2 := filepath.Join(dir, "s.qcow2")
	formattest.Convert(t, raw, q2, "qcow2")
	src := formattest.Open(t, q2, "qcow2")
	wf := formattest.Writer(t, Name)
	for _, v := range wVariants[:2] {
		m, err := wf.Measure(format.WriteOptions{Size: src.Size(), Layout: format.LayoutOf(src), Options: v.opts})
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, v.name+".vmdk")
		wConvert(t, src, out, v, convert.Options{})
		full := filepath.Join(dir, v.name+"-full.vmdk")
		wConvert(t, src, full, v, convert.Options{SparseSize: convert.NoSparse})
		fi, _ := os.Stat(out)
		ff, _ := os.Stat(full)
		t.Logf("%s: measure %+v, output %d, fully allocated output %d", v.name, m, fi.Size(), ff.Size())
		if v.opts == nil {
			if m.Required != fi.Size() || m.FullyAllocated != ff.Size() {
				t.Errorf("%s: measure %+v, outputs %d and %d", v.name, m, fi.Size(), ff.Size())
			}
		} else if m.Required < fi.Size() || m.FullyAllocated < ff.Size() {
			t.Errorf("%s: measure %+v below the outputs %d and %d", v.name, m, fi.Size(), ff.Size())
		}
	}
	// qemu-img measure --size: no layout, metadata only.
	// qemu-img create's file is exactly that metadata.
	created := filepath.Join(dir, "created.vmdk")
	formattest.Create(t, created, Name, "1G")
	fi, _ := os.Stat(created)
	m, err := wf.Measure(format.WriteOptions{Size: 1 << 30})
	if err != nil || m.Required != fi.Size() || m.FullyAllocated != fi.Size()+1<<30 {
		t.Errorf("measure --size 1G: %+v, %v; qemu-img create makes %d bytes", m, err, fi.Size())
	}
}

// TestWriterOptions checks option validation happens before any byte.
func TestWriterOptions(t *testing.T) {
	wf := formattest.Writer(t, Name)
	for _, c := range []struct {
		opts     map[string]string
		compress bool
		want     string
	}{
		{map[string]string{"cluster_size": "65536"}, false, "valid options: subformat, adapter_type"},
		{map[string]string{"subformat": "monolithicFlat"}, false, "writes several files"},
		{map[string]string{"subformat": "fixed"}, false, "must be one of monolithicSparse, streamOptimized"},
		{map[string]string{"adapter_type": "scsi"}, false, "must be one of ide, lsilogic"},
		{map[string]string{"compat6": "on", "hwversion": "7"}, false, "compat6 cannot be enabled with hwversion set"},
		{map[string]string{"zeroed_grain": "maybe"}, false, "must be on or off"},
		{map[string]string{"hwversion": `4"`}, false, "without quotes"},
		{map[string]string{"backing_file": "base.vmdk"}, false, "not supported"},
		{map[string]string{"subformat": "streamOptimized"}, true, ""},
		{nil, true, ""},
		{map[string]string{"compat6": "on", "hwversion": "undefined"}, false, ""},
	} {
		err := wf.Validate(format.WriteOptions{Size: 1 << 20, Options: c.opts, Compress: c.compress})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.opts, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: error %v, want %q", c.opts, err, c.want)
		}
	}
	if err := wf.Validate(format.WriteOptions{Size: WriterMaxSize + 512}); err == nil {
		t.Error("a disk over 64 TiB accepted")
	}
}

// TestWriterErrors feeds the writer blocks out of contract.
func TestWriterErrors(t *testing.T) {
	for _, v := range wVariants[:2] {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, format.WriteOptions{Size: 1 << 20, Layout: format.AllData(1 << 20), Options: v.opts})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(&format.Block{Start: 65536, Length: 65536, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "arrived when 0 bytes") {
			t.Errorf("%s: out of order: %v", v.name, err)
		}
		if err := w.Write(&format.Block{Start: 0, Length: 65536, Status: format.Data, Data: make([]byte, 10)}); err == nil || !strings.Contains(err.Error(), "carries 10 bytes") {
			t.Errorf("%s: short data: %v", v.name, err)
		}
		if err := w.Write(&format.Block{Start: 0, Length: 2 << 20, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "outside the disk") {
			t.Errorf("%s: past the end: %v", v.name, err)
		}
		if err := w.Close(); err == nil || !strings.Contains(err.Error(), "closed after 0") {
			t.Errorf("%s: early close: %v", v.name, err)
		}
	}
	// Data where the layout said there is none.
	var buf bytes.Buffer
	lay := format.LayoutOfExtents([]format.Extent{{Start: 0, Length: 1 << 20, Status: format.Unallocated}})
	w, err := NewWriter(&buf, format.WriteOptions{Size: 1 << 20, Layout: lay})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(&format.Block{Start: 0, Length: 65536, Status: format.Data, Data: make([]byte, 65536)}); err == nil || !strings.Contains(err.Error(), "outside the layout") {
		t.Errorf("data outside the layout: %v", err)
	}
}

// semiCompressible fills p with data that deflates to about half: runs of
// random bytes and of repeated text.
func semiCompressible(p []byte, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	text := []byte("the quick brown fox jumps over the lazy dog; 0123456789 ")
	for off := 0; off < len(p); {
		n := min(len(p)-off, 512+rng.Intn(2048))
		if rng.Intn(2) == 0 {
			rng.Read(p[off : off+n])
		} else {
			for i := 0; i < n; i++ {
				p[off+i] = text[(off+i)%len(text)]
			}
		}
		off += n
	}
}

// BenchmarkConvert256MiB converts 256 MiB raw to each subformat and, in
// the same run, times qemu-img convert on the same input: the metric
// qemu-x is qemu-img's time over ours.
func BenchmarkConvert256MiB(b *testing.B) {
	formattest.RequireQemu(b)
	dir := b.TempDir()
	for _, c := range []struct {
		name string
		fill func([]byte, int64) // nil: random
		v    wVariant
	}{
		{"monolithicSparse/random", nil, wVariants[0]},
		{"streamOptimized/semi", semiCompressible, wVariants[1]},
	} {
		b.Run(c.name, func(b *testing.B) {
			raw := filepath.Join(dir, filepath.Base(c.name)+".raw")
			if _, err := os.Stat(raw); err != nil {
				formattest.WriteSource(b, raw, 256<<20, c.fill)
			}
			src := formattest.Open(b, raw, "raw")
			out := filepath.Join(dir, "ours.vmdk")
			theirs := filepath.Join(dir, "theirs.vmdk")
			var qemu time.Duration
			b.SetBytes(256 << 20)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				os.Remove(out)
				os.Remove(theirs)
				start := time.Now()
				formattest.Qemu(b, append(append([]string{"convert", "-f", "raw", "-O", Name}, c.v.qemu...), raw, theirs)...)
				qemu += time.Since(start)
				b.StartTimer()
				convertFile(b, src, out, c.v, convert.Options{})
			}
			b.StopTimer()
			ours := b.Elapsed()
			b.ReportMetric(qemu.Seconds()/ours.Seconds(), "qemu-x")
			a, _ := os.Stat(out)
			q, _ := os.Stat(theirs)
			b.ReportMetric(float64(a.Size())/float64(q.Size()), "size-vs-qemu")
		})
	}
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw image: metadata
// only.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	raw := filepath.Join(dir, "empty.raw")
	formattest.MakeRaw(b, raw, 1<<40, formattest.Empty)
	src := formattest.Open(b, raw, "raw")
	for _, v := range wVariants[:2] {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			out := filepath.Join(dir, "out.vmdk")
			for range b.N {
				os.Remove(out)
				convertFile(b, src, out, v, convert.Options{})
			}
		})
	}
}

// TestWriterHuge writes 4 TiB and 16 TiB VMDKs of both subformats: past
// the 2 TiB a sparse extent's grain offsets can address in the file,
// which bounds the data, not the disk. The source is a qcow2 with 64 KiB
// at the start, 8 KiB across the middle and 64 KiB at the end. Each
// output passes qemu-img check and qemu-img reads the three regions; our
// reader reads them and maps as the source both our output and qemu-img's
// conversion. A 4 TiB monolithicSparse is
// byte for byte qemu-img's own conversion (but the descriptor's CID), and
// qemu-img compare calls a 4 TiB stream identical to the source. (qemu-img
// compare takes minutes on 16 TiB; run by hand, it calls both identical.)
// -short skips it.
func TestWriterHuge(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 4 and 16 TiB outputs (the writer matrix covers the layout at small sizes)")
	}
	formattest.RequireQemu(t)
	for _, size := range []int64{4 << 40, 16 << 40} {
		dir := t.TempDir()
		src := filepath.Join(dir, "src.qcow2")
		formattest.Create(t, src, "qcow2", fmt.Sprint(size))
		regions := [][3]int64{{0, 64 << 10, 0x11}, {size/2 - 4096, 8 << 10, 0x22}, {size - 64<<10, 64 << 10, 0x33}}
		var writes []string
		for _, r := range regions {
			writes = append(writes, fmt.Sprintf("write -P %d %d %d", r[2], r[0], r[1]))
		}
		formattest.QemuIO(t, "qcow2", src, writes...)
		for _, v := range wVariants[:2] {
			t.Run(fmt.Sprintf("%dTiB/%s", size>>40, v.name), func(t *testing.T) {
				t.Parallel()
				out := filepath.Join(dir, v.name+".vmdk")
				img := formattest.Open(t, src, "qcow2")
				convertFile(t, img, out, v, convert.Options{})
				if rc, msg := formattest.QemuRC(t, "check", "-f", Name, out); rc != 0 || !strings.Contains(msg, "No errors") {
					t.Errorf("qemu-img check: exit %d: %s", rc, msg)
				}
				reads := []string{"-f", Name}
				for _, r := range regions {
					reads = append(reads, "-c", fmt.Sprintf("read -P %d %d %d", r[2], r[0], r[1]))
				}
				if msg, err := exec.Command("qemu-io", append(reads, out)...).CombinedOutput(); err != nil || strings.Contains(string(msg), "Pattern verification failed") {
					t.Errorf("qemu-io reads: %v: %s", err, msg)
				}
				// Our reader, on our output and on qemu-img's conversion.
				theirs := filepath.Join(dir, v.name+"-qemu.vmdk")
				formattest.Qemu(t, append(append([]string{"convert", "-f", "qcow2", "-O", Name}, v.qemu...), src, theirs)...)
				for _, p := range []string{out, theirs} {
					ours := formattest.Open(t, p, Name)
					if ours.Size() != size {
						t.Fatalf("%s: size %d, want %d", filepath.Base(p), ours.Size(), size)
					}
					if a, b := formattest.MapRuns(t, ours), formattest.MapRuns(t, img); fmt.Sprint(a) != fmt.Sprint(b) {
						t.Errorf("%s: map\n vmdk  %v\nsource %v", filepath.Base(p), a, b)
					}
					for _, r := range regions {
						a, b := make([]byte, r[1]+1024), make([]byte, r[1]+1024)
						off := max(0, min(r[0]-512, size-int64(len(a))))
						if _, err := ours.ReadAt(a, off); err != nil {
							t.Fatal(err)
						}
						img.ReadAt(b, off)
						if !bytes.Equal(a, b) {
							t.Errorf("%s: bytes at %d differ from the source", filepath.Base(p), off)
						}
					}
				}
				switch {
				case size > 4<<40:
				case v.opts["subformat"] == SubformatStreamOptimized:
					if testing.Short() {
						return // -short: qemu-img compare takes half a minute
					}
					if rc, msg := formattest.QemuRC(t, "compare", "-f", "qcow2", "-F", Name, src, out); rc != 0 {
						t.Errorf("qemu-img compare: exit %d: %s", rc, msg)
					}
				default:
					if off := sameFiles(t, out, theirs, descSector*sectorSize, (descSector+descSectors)*sectorSize); off >= 0 {
						t.Errorf("first difference from qemu-img's conversion at offset %d", off)
					}
				}
			})
		}
	}
}

// sameFiles compares two files, the bytes in [skip, skipEnd) excepted,
// and returns the offset of the first difference, -1 when none.
func sameFiles(t *testing.T, a, b string, skip, skipEnd int64) int64 {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, _ := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na == nb && bytes.Equal(ba[:na], bb[:nb]) {
			if na < len(ba) {
				return -1
			}
			continue
		}
		for i := range min(na, nb) {
			if p := off + int64(i); ba[i] != bb[i] && (p < skip || p >= skipEnd) {
				return p
			}
		}
		if na != nb {
			return off + int64(min(na, nb))
		}
		if na < len(ba) {
			return -1
		}
	}
}
