package qcow2_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
)

// writerVariant is one set of qcow2 output options: -o options and -c.
type writerVariant struct {
	name     string
	opts     string
	compress bool
}

var writerVariants = []writerVariant{
	{"default", "", false},
	{"v2", "compat=0.10", false},
	{"c512", "cluster_size=512", false},
	{"c2m", "cluster_size=2M", false},
	{"rc64-lazy", "refcount_bits=64,lazy_refcounts=on", false},
	{"rc8", "refcount_bits=8", false},
	{"zlib", "", true},
	{"zstd", "compression_type=zstd", true},
	{"zlib-c4k-v2", "cluster_size=4k,compat=0.10", true},
	{"zstd-c512", "cluster_size=512,compression_type=zstd", true},
}

// convertTo converts the image at src (format srcFmt) to qcow2 on dst.
func convertTo(t testing.TB, src, srcFmt string, dst format.Target, v writerVariant) *convert.Result {
	t.Helper()
	opts, err := format.ParseOptions(v.opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := convert.Convert(context.Background(), formattest.Open(t, src, srcFmt), formattest.Writer(t, "qcow2"), dst,
		convert.Options{WriterOptions: opts, Compress: v.compress, Workers: 2})
	if err != nil {
		t.Fatalf("convert %s -> qcow2 %s: %v", filepath.Base(src), v.name, err)
	}
	return res
}

func convertFile(t testing.TB, src, srcFmt, dst string, v writerVariant) {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	convertTo(t, src, srcFmt, f, v)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// qemuArgs returns qemu-img convert's arguments for v.
func (v writerVariant) qemuArgs() []string {
	var a []string
	if v.opts != "" {
		a = append(a, "-o", v.opts)
	}
	if v.compress {
		a = append(a, "-c")
	}
	return a
}

// qemuCheck asserts that qemu-img check finds no errors and no leaks.
func qemuCheck(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "--output=json", "-f", "qcow2", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", filepath.Base(path), err, out)
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("qemu-img check output: %v\n%s", err, out)
	}
	for _, k := range []string{"leaks", "corruptions", "check-errors", "leaks-fixed", "corruptions-fixed"} {
		if n, ok := r[k].(float64); ok && n != 0 {
			t.Errorf("%s: qemu-img check: %s = %v\n%s", filepath.Base(path), k, n, out)
		}
	}
}

func qemuCompare(t *testing.T, a, b string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", filepath.Base(a), filepath.Base(b), err, out)
	}
}

// roundTrip reads the output with our own reader and compares it with the
// raw reference.
func roundTrip(t *testing.T, path string, want []byte) {
	t.Helper()
	img := formattest.Open(t, path, "qcow2")
	if img.Size() != int64(len(want)) {
		t.Fatalf("our reader: size %d, want %d", img.Size(), len(want))
	}
	got := make([]byte, len(want))
	if n, err := img.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
		t.Fatalf("our reader: ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("our reader: content differs from the source")
	}
}

// TestWriterMatrix converts sources of every readable format and several
// contents into every writer variant and checks the output with qemu-img
// (check, compare, info against qemu-img's own conversion) and with our
// reader.
func TestWriterMatrix(t *testing.T) {
	dir := formattest.QemuDir(t)
	type source struct{ name, path, fmt, raw string }
	var sources []source
	for _, c := range []struct {
		size    int64
		content formattest.Content
	}{
		{9<<20 + 1536, formattest.Empty},
		{9<<20 + 1536, formattest.Sparse},
		{9<<20 + 1536, formattest.Dense},
		{9<<20 + 1536, formattest.Zeros},
		{33<<20 + 4096, formattest.Sparse},
	} {
		if testing.Short() && (c.content != formattest.Sparse || c.size > 10<<20) {
			continue // -short: one size and content, raw
		}
		name := fmt.Sprintf("%s-%d", c.content, c.size)
		raw := filepath.Join(dir, name+".raw")
		formattest.MakeRaw(t, raw, c.size, c.content)
		sources = append(sources, source{name + ".raw", raw, "raw", raw})
		if c.content == formattest.Sparse && !testing.Short() {
			for _, f := range []string{"qcow2", "vmdk", "vpc", "vhdx"} {
				p := filepath.Join(dir, name+"."+f)
				formattest.Convert(t, raw, p, f)
				sources = append(sources, source{name + "." + f, p, f, raw})
			}
		}
	}
	for _, s := range sources {
		want := formattest.ReadFile(t, s.raw)
		for _, v := range writerVariants {
			t.Run(s.name+"/"+v.name, func(t *testing.T) {
				t.Parallel()
				out := filepath.Join(t.TempDir(), "out.qcow2")
				convertFile(t, s.path, s.fmt, out, v)
				qemuCheck(t, out)
				qemuCompare(t, s.raw, out)
				roundTripSized(t, out, want, s.fmt)
				ref := filepath.Join(t.TempDir(), "ref.qcow2")
				formattest.Qemu(t, append(append([]string{"convert", "-f", s.fmt, "-O", "qcow2"}, v.qemuArgs()...), s.path, ref)...)
				ours, theirs := formattest.QemuInfo(t, out, "-f", "qcow2"), formattest.QemuInfo(t, ref, "-f", "qcow2")
				for _, k := range []string{"virtual-size", "cluster-size", "format-specific", "dirty-flag"} {
					if !reflect.DeepEqual(ours[k], theirs[k]) {
						t.Errorf("info %q: ours %v, qemu-img %v", k, ours[k], theirs[k])
					}
				}
				t.Logf("size: ours %d, qemu-img %d", fileSize(t, out), fileSize(t, ref))
			})
		}
	}
}

// roundTripSized compares with the raw reference, allowing for formats
// whose virtual size qemu rounds (vpc's geometry).
func roundTripSized(t *testing.T, path string, want []byte, srcFmt string) {
	t.Helper()
	img := formattest.Open(t, path, "qcow2")
	if srcFmt != "raw" && img.Size() != int64(len(want)) {
		w := make([]byte, img.Size())
		copy(w, want)
		want = w
	}
	roundTrip(t, path, want)
}

// fileSize returns the length of the file at path.
func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	n, _ := formattest.FileSizes(t, path)
	return n
}

// TestWriterPipe writes through a pipe and compares the stream with the
// file output: the same bytes, compressed or not, also when the source's
// data holds zero clusters (found by the engine's zero scan).
func TestWriterPipe(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Sparse)
	// Written zeros inside data: a file leaves them out, and so must a pipe.
	zsrc := filepath.Join(dir, "zeros.raw")
	formattest.MakeRaw(t, zsrc, 3<<20, formattest.Zeros)
	// A qcow2 source has no zero clusters inside its data: both outputs
	// are the same bytes.
	qsrc := filepath.Join(dir, "src.qcow2")
	formattest.Convert(t, src, qsrc, "qcow2")
	for _, s := range []string{src, zsrc, qsrc} {
		srcFmt := strings.TrimPrefix(filepath.Ext(s), ".")
		for _, v := range writerVariants {
			t.Run(filepath.Base(s)+"/"+v.name, func(t *testing.T) {
				file := filepath.Join(t.TempDir(), "file.qcow2")
				convertFile(t, s, srcFmt, file, v)
				got := formattest.Piped(t, func(w *os.File) error {
					convertTo(t, s, srcFmt, w, v)
					return nil
				})
				want, _ := os.ReadFile(file)
				if !bytes.Equal(got, want) {
					t.Errorf("pipe output (%d bytes) differs from file output (%d bytes)", len(got), len(want))
				}
				piped := filepath.Join(t.TempDir(), "piped.qcow2")
				os.WriteFile(piped, got, 0o644)
				qemuCheck(t, piped)
				qemuCompare(t, s, piped)
				if s == zsrc && !v.compress {
					// Written zeros allocate no cluster and no L2 table.
					theirs := filepath.Join(t.TempDir(), "qemu.qcow2")
					formattest.Qemu(t, append(append([]string{"convert", "-O", "qcow2"}, v.qemuArgs()...), s, theirs)...)
					if a, b := int64(len(want)), fileSize(t, theirs); a != b {
						t.Errorf("written zeros: %d bytes, qemu-img's %d", a, b)
					}
				}
			})
		}
	}
}

// TestWriterMeasure compares Measure with qemu-img measure.
func TestWriterMeasure(t *testing.T) {
	dir := formattest.QemuDir(t)
	var srcs []string
	for _, c := range []formattest.Content{formattest.Empty, formattest.Sparse, formattest.Dense} {
		p := filepath.Join(dir, string(c)+".raw")
		formattest.MakeRaw(t, p, 33<<20+4096, c)
		srcs = append(srcs, p)
	}
	q := filepath.Join(dir, "sparse.qcow2")
	formattest.Convert(t, srcs[1], q, "qcow2", "-o", "cluster_size=4096")
	srcs = append(srcs, q)
	wf := formattest.Writer(t, "qcow2")
	for _, s := range srcs {
		srcFmt := strings.TrimPrefix(filepath.Ext(s), ".")
		for _, opts := range []string{"", "cluster_size=512", "cluster_size=2M", "refcount_bits=64", "compat=0.10", "cluster_size=4k,refcount_bits=8"} {
			o, _ := format.ParseOptions(opts)
			m, err := convert.Measure(formattest.Open(t, s, srcFmt), 0, wf, convert.Options{WriterOptions: o})
			if err != nil {
				t.Fatal(err)
			}
			args := []string{"measure", "--output=json", "-f", srcFmt, "-O", "qcow2"}
			if opts != "" {
				args = append(args, "-o", opts)
			}
			var want format.Measurement
			json.Unmarshal(formattest.Qemu(t, append(args, s)...), &want)
			if m != want {
				t.Errorf("%s -o %q: measure %+v, qemu-img %+v", filepath.Base(s), opts, m, want)
			}
		}
	}
	for _, size := range []string{"0", "1", "1G", "1T"} {
		var want format.Measurement
		json.Unmarshal(formattest.Qemu(t, "measure", "--output=json", "-O", "qcow2", "--size", size), &want)
		n := map[string]int64{"0": 0, "1": 1, "1G": 1 << 30, "1T": 1 << 40}[size]
		m, err := convert.Measure(nil, n, wf, convert.Options{})
		if err != nil || m != want {
			t.Errorf("--size %s: measure %+v, %v; qemu-img %+v", size, m, err, want)
		}
	}
}

// TestWriterOptions checks that bad options fail before any byte is
// written, naming the problem.
func TestWriterOptions(t *testing.T) {
	wf := formattest.Writer(t, "qcow2")
	for _, c := range []struct {
		opts string
		size int64
		want string
	}{
		{"bogus=1", 1 << 20, "valid options: compat, cluster_size"},
		{"cluster_size=3000", 1 << 20, "power of two"},
		{"cluster_size=4M", 1 << 20, "power of two"},
		{"cluster_size=256", 1 << 20, "power of two"},
		{"compat=0.9", 1 << 20, "must be one of"},
		{"compat=0.10,compression_type=zstd", 1 << 20, "needs compat=1.1"},
		{"compat=0.10,refcount_bits=64", 1 << 20, "needs compat=1.1"},
		{"compat=0.10,lazy_refcounts=on", 1 << 20, "needs compat=1.1"},
		{"refcount_bits=1", 1 << 20, "not implemented"},
		{"refcount_bits=12", 1 << 20, "must be 8, 16, 32 or 64"},
		{"extended_l2=on", 1 << 20, "must be one of off"},
		{"cluster_size=512", 1 << 40, "use a larger cluster_size"},
	} {
		o, err := format.ParseOptions(c.opts)
		if err != nil {
			t.Fatal(err)
		}
		err = wf.Validate(format.WriteOptions{Size: c.size, Options: o})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("-o %s: error %v, want %q", c.opts, err, c.want)
		}
	}
	for _, ok := range []string{"", "compat=v3,cluster_size=64k", "cluster_size=2M,refcount_bits=32", "compression_type=zlib,lazy_refcounts=off,extended_l2=off"} {
		o, _ := format.ParseOptions(ok)
		if err := wf.Validate(format.WriteOptions{Size: 1 << 30, Options: o, Compress: true}); err != nil {
			t.Errorf("-o %s: %v", ok, err)
		}
	}
}

// TestWriterEmptyHuge converts an empty 1 TiB image: metadata only, fast.
func TestWriterEmptyHuge(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := filepath.Join(dir, "empty.qcow2")
	formattest.Create(t, src, "qcow2", "1T")
	for _, v := range []writerVariant{writerVariants[0], writerVariants[6]} {
		out := filepath.Join(dir, v.name+".qcow2")
		start := time.Now()
		convertFile(t, src, "qcow2", out, v)
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: empty 1 TiB took %v", v.name, d)
		}
		qemuCheck(t, out)
		if n := fileSize(t, out); n > 1<<20 {
			t.Errorf("%s: empty 1 TiB output is %d bytes", v.name, n)
		}
		if m := formattest.QemuMap(t, out, "-f", "qcow2"); len(m) != 1 || m[0].Data {
			t.Errorf("%s: map %+v", v.name, m)
		}
	}
}
