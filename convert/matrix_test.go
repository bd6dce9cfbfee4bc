package convert_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
)

// matrixInput is one source image: made by qemu-img, or by our writer for
// the formats qemu cannot write.
type matrixInput struct {
	name, fmt string
	qemuArgs  []string // qemu-img convert -O fmt args; nil: our writer
	opts      string
}

var matrixInputs = []matrixInput{
	{name: "raw", fmt: "raw"},
	{name: "qcow2", fmt: "qcow2", qemuArgs: []string{}},
	{name: "qcow2-c", fmt: "qcow2", qemuArgs: []string{"-c"}},
	{name: "qcow", fmt: "qcow", qemuArgs: []string{}},
	{name: "vmdk", fmt: "vmdk", qemuArgs: []string{}},
	{name: "vmdk-stream", fmt: "vmdk", qemuArgs: []string{"-o", "subformat=streamOptimized"}},
	{name: "vpc", fmt: "vpc", qemuArgs: []string{}},
	{name: "vpc-fixed", fmt: "vpc", qemuArgs: []string{"-o", "subformat=fixed"}},
	{name: "vhdx", fmt: "vhdx", qemuArgs: []string{}},
	{name: "qed", fmt: "qed", qemuArgs: []string{}},
	{name: "vdi", fmt: "vdi", qemuArgs: []string{}},
	{name: "zvhd2", fmt: "zvhd2"},
	{name: "zvhd", fmt: "zvhd"},
}

// matrixOutput is one output format and subformat.
type matrixOutput struct {
	name, fmt string
	opts      string
	compress  bool
	qemuCheck bool // qemu-img check supports the format
}

var matrixOutputs = []matrixOutput{
	{name: "raw", fmt: "raw"},
	{name: "qcow2", fmt: "qcow2", qemuCheck: true},
	{name: "qcow2-v2-c512", fmt: "qcow2", opts: "compat=0.10,cluster_size=512", qemuCheck: true},
	{name: "qcow2-zlib", fmt: "qcow2", compress: true, qemuCheck: true},
	{name: "qcow2-zstd", fmt: "qcow2", opts: "compression_type=zstd", compress: true, qemuCheck: true},
	{name: "vmdk", fmt: "vmdk", qemuCheck: true},
	{name: "vmdk-stream", fmt: "vmdk", opts: "subformat=streamOptimized", qemuCheck: true},
	{name: "vpc", fmt: "vpc"},
	{name: "vpc-fixed", fmt: "vpc", opts: "subformat=fixed"},
	{name: "vpc-force", fmt: "vpc", opts: "force_size=on"},
	{name: "vhdx", fmt: "vhdx", qemuCheck: true},
	{name: "vhdx-fixed-1m", fmt: "vhdx", opts: "subformat=fixed,block_size=1M", qemuCheck: true},
	{name: "zvhd2", fmt: "zvhd2"},
	{name: "zvhd", fmt: "zvhd"},
}

// qemuReads lists the formats qemu-img reads, for compare.
func qemuReads(f string) bool { return f != "zvhd2" && f != "zvhd" }

// TestMatrix converts every input format (qemu-made where qemu can write
// it) to every output format and subformat, for sparse and dense contents
// at an odd size, and checks each output: qemu-img check clean where qemu
// can check the format, and the same bytes as the input by qemu-img
// compare where qemu reads both, else by our reader.
func TestMatrix(t *testing.T) {
	formattest.RequireQemu(t)
	for _, c := range []formattest.Content{formattest.Sparse, formattest.Dense} {
		if testing.Short() && c != formattest.Sparse {
			continue // -short: one content
		}
		dir := t.TempDir()
		raw := filepath.Join(dir, "src.raw")
		formattest.MakeRaw(t, raw, 5<<20+1536, c)
		paths := map[string]string{}
		for _, in := range matrixInputs {
			p := filepath.Join(dir, "src-"+in.name+"."+in.fmt)
			switch {
			case in.fmt == "raw":
				p = raw
			case in.qemuArgs != nil:
				formattest.Qemu(t, append(append([]string{"convert", "-f", "raw", "-O", in.fmt}, in.qemuArgs...), raw, p)...)
			default:
				matrixConvert(t, raw, "raw", p, matrixOutput{fmt: in.fmt})
			}
			paths[in.name] = p
		}
		for _, in := range matrixInputs {
			for _, out := range matrixOutputs {
				t.Run(fmt.Sprintf("%s/%s/%s", c, in.name, out.name), func(t *testing.T) {
					t.Parallel()
					dst := filepath.Join(t.TempDir(), "out."+out.fmt)
					matrixConvert(t, paths[in.name], in.fmt, dst, out)
					if out.fmt == "raw" || out.fmt == "qcow2" {
						// No timestamps or random IDs: a pipe gets the file's bytes.
						matrixPipe(t, paths[in.name], in.fmt, dst, out)
					}
					if out.qemuCheck {
						if b, err := exec.Command("qemu-img", "check", "-f", out.fmt, dst).CombinedOutput(); err != nil {
							t.Errorf("qemu-img check: %v: %s", err, b)
						}
					}
					if qemuReads(in.fmt) && qemuReads(out.fmt) {
						cmp := exec.Command("qemu-img", "compare", "-f", in.fmt, "-F", out.fmt, paths[in.name], dst)
						if b, err := cmp.CombinedOutput(); err != nil || !strings.Contains(string(b), "Images are identical") {
							t.Errorf("qemu-img compare: %v: %s", err, b)
						}
						return
					}
					src, got := formattest.Open(t, paths[in.name], in.fmt), formattest.Open(t, dst, out.fmt)
					if same, off, err := convert.Compare(context.Background(), src, got); err != nil || !same {
						t.Errorf("compare with the input: identical %v at %d, %v", same, off, err)
					}
					if qemuReads(out.fmt) {
						// And qemu-img agrees with the raw reference.
						cmp := exec.Command("qemu-img", "compare", "-f", "raw", "-F", out.fmt, raw, dst)
						if b, err := cmp.CombinedOutput(); err != nil || !strings.Contains(string(b), "Images are identical") {
							t.Errorf("qemu-img compare with the raw reference: %v: %s", err, b)
						}
					}
				})
			}
		}
	}
}

// matrixPipe converts src into a pipe and compares the stream with the
// file at want.
func matrixPipe(t *testing.T, src, srcFmt, want string, o matrixOutput) {
	t.Helper()
	w, _ := format.LookupWriter(o.fmt)
	opts := convert.Options{Compress: o.compress}
	opts.WriterOptions, _ = format.ParseOptions(o.opts)
	img := formattest.Open(t, src, srcFmt)
	got := formattest.Piped(t, func(pw *os.File) error {
		if _, err := convert.Convert(context.Background(), img, w, pw, opts); err != nil {
			return fmt.Errorf("convert to a pipe: %w", err)
		}
		return nil
	})
	file, _ := os.ReadFile(want)
	if !bytes.Equal(got, file) {
		t.Errorf("pipe output (%d bytes) differs from the file (%d bytes)", len(got), len(file))
	}
}

// matrixConvert converts src to dst through CreateOutput, as the CLI does.
func matrixConvert(t *testing.T, src, srcFmt, dst string, o matrixOutput) {
	t.Helper()
	w, err := format.LookupWriter(o.fmt)
	if err != nil {
		t.Fatal(err)
	}
	opts := convert.Options{Compress: o.compress}
	if opts.WriterOptions, err = format.ParseOptions(o.opts); err != nil {
		t.Fatal(err)
	}
	img, err := format.Open(src, srcFmt, format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := tryConvert(t, context.Background(), img, w, dst, opts); err != nil {
		t.Fatalf("convert %s -> %s %s: %v", srcFmt, o.fmt, o.opts, err)
	}
}

// noReadBack is a seekable file target that cannot be read back, so a
// checksum can only come from hashing the bytes as they are written.
type noReadBack struct{ f *os.File }

func (n noReadBack) Write(p []byte) (int, error)               { return n.f.Write(p) }
func (n noReadBack) WriteAt(p []byte, off int64) (int, error)  { return n.f.WriteAt(p, off) }
func (n noReadBack) Seek(off int64, whence int) (int64, error) { return n.f.Seek(off, whence) }
func (n noReadBack) Truncate(size int64) error                 { return n.f.Truncate(size) }

// TestChecksumStreamed converts into every output format and subformat
// with --checksum on a file that cannot be read back: every writer writes
// front to back then, the digest is the file's, and the file is a correct
// image. Raw and qcow2, which hold no random IDs, give the same bytes as
// without --checksum. Compressed qcow2 is the exception: its header
// points at tables that follow the compressed data, so it is written last
// and the digest comes from reading the file back once.
func TestChecksumStreamed(t *testing.T) {
	dir := formattest.QemuDir(t)
	raw := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, raw, 9<<20+1536, formattest.Sparse)
	// Written zeros inside the data, so lazily allocating writers differ
	// from their layout.
	f, err := os.OpenFile(raw, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 3<<20), 5<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, out := range matrixOutputs {
		t.Run(out.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out."+out.fmt)
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w, _ := format.LookupWriter(out.fmt)
			opts := convert.Options{Compress: out.compress, Checksum: true}
			opts.WriterOptions, _ = format.ParseOptions(out.opts)
			var target format.Target = noReadBack{f}
			if out.fmt == "qcow2" && out.compress {
				target = f
			}
			res, err := convert.Convert(context.Background(), formattest.Open(t, raw, "raw"), w, target, opts)
			if err != nil {
				t.Fatalf("convert with --checksum: %v", err)
			}
			data, _ := os.ReadFile(path)
			if sum := sha256.Sum256(data); !bytes.Equal(res.SHA256, sum[:]) {
				t.Errorf("streamed digest %x, file's %x", res.SHA256, sum)
			}
			if qemuReads(out.fmt) {
				cmp := exec.Command("qemu-img", "compare", "-f", "raw", "-F", out.fmt, raw, path)
				if b, err := cmp.CombinedOutput(); err != nil || !strings.Contains(string(b), "Images are identical") {
					t.Errorf("qemu-img compare: %v: %s", err, b)
				}
			}
			if out.fmt == "raw" || out.fmt == "qcow2" {
				plain := filepath.Join(t.TempDir(), "plain."+out.fmt)
				matrixConvert(t, raw, "raw", plain, out)
				if want, _ := os.ReadFile(plain); !bytes.Equal(data, want) {
					t.Errorf("output with --checksum (%d bytes) differs from the one without (%d bytes)", len(data), len(want))
				}
			}
		})
	}
}
