package parallels

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/raw"
)

// wVariant is a cluster size for our writer and qemu-img's.
type wVariant struct {
	name    string
	cluster string // "" for the default
}

var writerVariants = []wVariant{{"default", ""}, {"4k", "4k"}, {"3584", "3584"}, {"1000", "1000"}, {"16M", "16M"}}

func writer(t testing.TB) *format.WriterFormat {
	t.Helper()
	w, err := format.LookupWriter(Name)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// convertTo writes src as a parallels image to dst (a file) and returns
// the streamed checksum.
func convertTo(t *testing.T, src format.Image, dst *os.File, opts map[string]string, co convert.Options) []byte {
	t.Helper()
	co.WriterOptions, co.Checksum = opts, true
	res, err := convert.Convert(context.Background(), src, writer(t), dst, co)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	return res.SHA256
}

// TestWriterMatchesQemu converts raw images of every size and content to
// parallels with each cluster size: the output is byte for byte what
// qemu-img convert writes, qemu-img check finds it clean, a pipe gets the
// same bytes as a file, and the streamed checksum is the file's.
func TestWriterMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	sizes, contents := formattest.Sizes, formattest.Contents
	if testing.Short() {
		sizes, contents = sizes[1:2], []formattest.Content{formattest.Sparse}
	}
	for _, v := range writerVariants {
		for _, size := range sizes {
			for _, c := range contents {
				t.Run(fmt.Sprintf("%s/%d/%s", v.name, size, c), func(t *testing.T) {
					t.Parallel()
					dir := t.TempDir()
					raw := filepath.Join(dir, "src.raw")
					formattest.MakeRaw(t, raw, size, c)
					var opts map[string]string
					var qargs []string
					if v.cluster != "" {
						opts = map[string]string{optClusterSize: v.cluster}
						qargs = []string{"-o", "cluster_size=" + v.cluster}
					}
					src := formattest.Open(t, raw, "raw")
					ours := filepath.Join(dir, "ours.hds")
					f, err := os.Create(ours)
					if err != nil {
						t.Fatal(err)
					}
					sum := convertTo(t, src, f, opts, convert.Options{})
					f.Close()
					data := formattest.ReadFile(t, ours)
					if s := sha256.Sum256(data); !bytes.Equal(s[:], sum) {
						t.Errorf("streamed checksum %x, file %x", sum, s)
					}
					piped := formattest.Piped(t, func(w *os.File) error {
						_, err := convert.Convert(context.Background(), src, writer(t), w, convert.Options{WriterOptions: opts})
						return err
					})
					if i := formattest.FirstDiff(piped, data); i >= 0 {
						t.Errorf("the pipe's output differs from the file's at %d", i)
					}
					// qemu-img convert stores whole 4 KiB runs it finds data in,
					// so with other clusters it may store a cluster of zeros
					// next to data; on a 4 KiB grid the outputs are the same.
					p, _ := planOf(format.WriteOptions{Size: size, Options: opts})
					if p.cluster%4096 == 0 {
						theirs := filepath.Join(dir, "qemu.hds")
						formattest.Convert(t, raw, theirs, Name, qargs...)
						want := formattest.ReadFile(t, theirs)
						if i := formattest.FirstDiff(data, want); i >= 0 {
							t.Errorf("byte %d differs from qemu-img convert's output (%d and %d bytes)", i, len(data), len(want))
						}
					}
					if out := formattest.QemuCompareOutput(t, raw, ours); !bytes.Contains(out, []byte("Images are identical")) {
						t.Errorf("qemu-img compare: %s", out)
					}
					// qemu-img check counts the clusters of a catalog longer than
					// one cluster as leaked when no cluster holds data.
					rc, m, stderr := formattest.QemuCheck(t, Name, ours)
					if quirk := p.dataStart/p.cluster - 1; rc != 0 && (rc != 3 || m["allocated-clusters"] != nil || m["leaks"] != float64(quirk)) {
						t.Errorf("qemu-img check: exit %d, %v %s", rc, m, stderr)
					}
					formattest.Check(t, ours, formattest.Options{})
					ms, err := Measure(format.WriteOptions{Size: size, Layout: format.LayoutOf(src), Options: opts})
					if err != nil || ms.Required < int64(len(data)) {
						t.Errorf("Measure = %+v, %v; the image is %d bytes", ms, err, len(data))
					}
				})
			}
		}
	}
}

// TestWriterOptions: options are checked before a byte is written.
func TestWriterOptions(t *testing.T) {
	w := writer(t)
	for _, c := range []struct {
		opts map[string]string
		size int64
		want string
	}{
		{map[string]string{optClusterSize: "32M"}, 1 << 20, "at most 16777216 bytes"},
		{map[string]string{optClusterSize: "x"}, 1 << 20, "not a size"},
		{map[string]string{optClusterSize: "0"}, 1 << 20, "not a size"},
		{map[string]string{optClusterSize: "512"}, 1 << 50, "more than a reader takes"},
		{map[string]string{"subformat": "x"}, 1 << 20, `unknown option "subformat"`},
	} {
		o := format.WriteOptions{Size: c.size, Options: c.opts}
		err := w.Validate(o)
		if err == nil {
			err = w.Check(o)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, size %d: %v, want %q", c.opts, c.size, err, c.want)
		}
	}
	if err := w.Check(format.WriteOptions{Size: 1 << 40}); err != nil {
		t.Errorf("1 TiB with 1 MiB clusters: %v", err)
	}
}
