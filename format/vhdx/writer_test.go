package vhdx

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/qcow2"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/vhd"
	_ "github.com/diskimg/diskimg/format/vmdk"
)

// Odd disk sizes: not a multiple of any block size, and one not even of
// 4 KiB.
const (
	oddSmall = 9<<20 + 1536
	oddLarge = 33<<20 + 4096
)

// writerVariants are the -o option sets the writer is checked in, the
// same strings passed to qemu-img convert for its reference output.
var writerVariants = []string{
	"",
	"subformat=fixed",
	"block_size=1M",
	"block_size=32M,block_state_zero=off", // a block larger than format.MaxBlockSize
	"subformat=fixed,block_size=2M,log_size=3M",
}

func optionMap(t testing.TB, s string) map[string]string {
	t.Helper()
	m, err := format.ParseOptions(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// convertTo converts the image at src (format fmtName) to a VHDX file at
// dst with our writer.
func convertTo(t testing.TB, src, fmtName, dst string, opts convert.Options) *convert.Result {
	t.Helper()
	return convertImage(t, formattest.Open(t, src, fmtName), dst, opts)
}

// convertImage converts img to a VHDX file at dst with our writer.
func convertImage(t testing.TB, img format.Image, dst string, opts convert.Options) *convert.Result {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := convert.Convert(context.Background(), img, formattest.Writer(t, Name), f, opts)
	if err != nil {
		t.Fatalf("convert to %s: %v", filepath.Base(dst), err)
	}
	return res
}

// fileSize returns the length of the file at path.
func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	n, _ := formattest.FileSizes(t, path)
	return n
}

// source is a test input image.
type source struct {
	name, path, format string
}

var (
	sourcesOnce sync.Once
	sourcesDir  string
	sourcesList []source
)

// sources makes the matrix's inputs once per test binary: raw images of
// every content kind, and sparse and dense ones converted by qemu-img to
// every other readable format.
func sources(t *testing.T) []source {
	t.Helper()
	formattest.RequireQemu(t)
	sourcesOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vhdx-writer-")
		if err != nil {
			t.Fatal(err)
		}
		sourcesDir = dir
		raws := []struct {
			c    formattest.Content
			size int64
		}{
			{formattest.Empty, oddSmall}, {formattest.Sparse, oddSmall}, {formattest.Dense, oddSmall},
			{formattest.Zeros, oddSmall}, {formattest.Sparse, oddLarge}, {formattest.Dense, oddLarge},
		}
		for _, r := range raws {
			if testing.Short() && r.size == oddLarge {
				continue // -short: the small raw sources only
			}
			name := string(r.c) + "-" + sizeName(r.size)
			p := filepath.Join(dir, name+".raw")
			formattest.MakeRaw(t, p, r.size, r.c)
			sourcesList = append(sourcesList, source{name, p, "raw"})
			if testing.Short() || r.c != formattest.Sparse && !(r.c == formattest.Dense && r.size == oddLarge) {
				continue
			}
			for _, f := range []string{"qcow2", "vmdk", "vpc", "vhdx"} {
				q := filepath.Join(dir, name+"."+f)
				formattest.Convert(t, p, q, f)
				sourcesList = append(sourcesList, source{name, q, f})
			}
		}
	})
	if sourcesList == nil {
		t.Fatal("sources were not made")
	}
	return sourcesList
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sourcesDir != "" {
		os.RemoveAll(sourcesDir)
	}
	os.Exit(code)
}

func sizeName(n int64) string {
	if n == oddSmall {
		return "9M+1536"
	}
	return "33M+4096"
}

// TestWriterMatrix converts every source with every option set and checks
// the output with qemu-img: check clean, compare identical. Raw sources go
// through every variant, the others through the default and fixed ones.
// Measure must predict the output's size exactly.
func TestWriterMatrix(t *testing.T) {
	srcs := sources(t)
	for _, s := range srcs {
		if testing.Short() && (s.format != "raw" || !strings.HasPrefix(s.name, "sparse")) {
			continue // -short: every variant from one raw source
		}
		for _, v := range writerVariants {
			if s.format != "raw" && v != "" && v != "subformat=fixed" {
				continue
			}
			t.Run(s.format+"-"+s.name+"/"+strings.ReplaceAll(v, ",", "+"), func(t *testing.T) {
				t.Parallel()
				out := filepath.Join(t.TempDir(), "out.vhdx")
				opts := convert.Options{WriterOptions: optionMap(t, v)}
				convertTo(t, s.path, s.format, out, opts)
				formattest.Qemu(t, "check", "-q", out)
				formattest.Qemu(t, "compare", "-q", "-f", s.format, "-F", Name, s.path, out)

				img := formattest.Open(t, s.path, s.format)
				m, err := convert.Measure(img, img.Size(), formattest.Writer(t, Name), opts)
				if err != nil {
					t.Fatal(err)
				}
				// Measure goes by the layout: for a raw source with
				// written zeros, blocks holding only zeros are left out
				// of the file and Required is an upper bound.
				got := fileSize(t, out)
				writtenZeros := s.format == "raw" && (strings.HasPrefix(s.name, "zeros") || strings.HasPrefix(s.name, "sparse"))
				if got > m.Required || got != m.Required && !writtenZeros {
					t.Errorf("file is %d bytes, Measure said %d required", got, m.Required)
				}

				// Our reader agrees with qemu-img about the output.
				if s.format == "raw" {
					formattest.Check(t, out, formattest.Options{QemuMapsAllData: true})
				}
			})
		}
	}
}

// TestWriterVsQemu compares our output with qemu-img's own conversion of
// the same input with the same options: the same virtual size, cluster
// size and format-specific data; file sizes are logged side by side.
func TestWriterVsQemu(t *testing.T) {
	for _, s := range sources(t) {
		if s.format != "raw" || !strings.HasSuffix(s.name, sizeName(oddLarge)) && !strings.HasPrefix(s.name, "zeros") {
			continue
		}
		for _, v := range writerVariants {
			t.Run(s.name+"/"+strings.ReplaceAll(v, ",", "+"), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				ours, theirs := filepath.Join(dir, "ours.vhdx"), filepath.Join(dir, "qemu.vhdx")
				convertTo(t, s.path, s.format, ours, convert.Options{WriterOptions: optionMap(t, v)})
				args := []string{}
				if v != "" {
					args = append(args, "-o", v)
				}
				formattest.Convert(t, s.path, theirs, Name, args...)
				a, b := formattest.QemuInfo(t, ours), formattest.QemuInfo(t, theirs)
				for _, k := range []string{"virtual-size", "cluster-size", "format-specific", "format"} {
					if !reflect.DeepEqual(a[k], b[k]) {
						t.Errorf("info %s: ours %v, qemu-img's %v", k, a[k], b[k])
					}
				}
				t.Logf("%s -o %q: file size ours %d, qemu-img %d; disk usage ours %d, qemu-img %d",
					s.name, v, fileSize(t, ours), fileSize(t, theirs), formattest.Allocated(t, ours), formattest.Allocated(t, theirs))
			})
		}
	}
}

// deterministic makes the writer's GUIDs reproducible until the test ends.
func deterministic(t *testing.T) {
	old := randReader
	randReader = rand.New(rand.NewSource(1))
	t.Cleanup(func() { randReader = old })
}

// TestWriterPipe streams conversions through a pipe and checks the bytes
// equal those of the same conversion to a file.
func TestWriterPipe(t *testing.T) {
	srcs := sources(t)
	for _, s := range srcs {
		switch s.format + "-" + s.name {
		case "raw-empty-9M+1536", "raw-sparse-9M+1536", "raw-dense-33M+4096", "qcow2-sparse-33M+4096":
		default:
			continue
		}
		for _, v := range []string{"", "subformat=fixed", "block_size=32M,block_state_zero=off"} {
			t.Run(s.format+"-"+s.name+"/"+strings.ReplaceAll(v, ",", "+"), func(t *testing.T) {
				opts := convert.Options{WriterOptions: optionMap(t, v)}
				file := filepath.Join(t.TempDir(), "out.vhdx")
				deterministic(t)
				convertTo(t, s.path, s.format, file, opts)
				want := formattest.ReadFile(t, file)

				deterministic(t)
				got := convertPipe(t, s.path, s.format, opts)
				if !bytes.Equal(got, want) {
					t.Fatalf("piped output (%d bytes) differs from the file output (%d bytes) at %d",
						len(got), len(want), formattest.FirstDiff(got, want))
				}
			})
		}
	}
}

// convertPipe converts the image at src (format fmtName) to VHDX through
// a pipe and returns the bytes that came out of it.
func convertPipe(t *testing.T, src, fmtName string, opts convert.Options) []byte {
	t.Helper()
	img := formattest.Open(t, src, fmtName)
	return formattest.Piped(t, func(w *os.File) error {
		_, err := convert.Convert(context.Background(), img, formattest.Writer(t, Name), w, opts)
		return err
	})
}

// TestWriterWrittenZeros converts raw sources whose data ranges hold
// written zeros (a dd image): a payload block is allocated only when some
// of it holds non-zero data, on a file and on a pipe alike, so the output
// is no larger than qemu-img's; fixed images stay fully allocated.
func TestWriterWrittenZeros(t *testing.T) {
	formattest.RequireQemu(t)
	srcs := writtenZeroSources(t)
	for _, s := range srcs {
		for _, v := range []string{"", "block_size=1M", "block_size=32M,block_state_zero=off", "subformat=fixed"} {
			t.Run(s.name+"/"+strings.ReplaceAll(v, ",", "+"), func(t *testing.T) {
				opts := convert.Options{WriterOptions: optionMap(t, v)}
				d := t.TempDir()
				ours, theirs := filepath.Join(d, "ours.vhdx"), filepath.Join(d, "qemu.vhdx")
				deterministic(t)
				convertTo(t, s.path, "raw", ours, opts)
				args := []string{}
				if v != "" {
					args = append(args, "-o", v)
				}
				formattest.Convert(t, s.path, theirs, Name, args...)
				a, b := fileSize(t, ours), fileSize(t, theirs)
				t.Logf("%s -o %q: apparent size ours %d, qemu-img %d", s.name, v, a, b)
				if a > b && !strings.Contains(v, "fixed") { // fixed: whole blocks, qemu-img stops at the disk's end
					t.Errorf("apparent size %d, qemu-img's %d", a, b)
				}
				formattest.Qemu(t, "check", "-q", ours)
				formattest.Qemu(t, "compare", "-q", "-f", "raw", "-F", Name, s.path, ours)
				img := formattest.Open(t, s.path, "raw")
				m, err := convert.Measure(img, img.Size(), formattest.Writer(t, Name), opts)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(v, "fixed") && a != m.FullyAllocated {
					t.Errorf("fixed image is %d bytes, fully allocated is %d", a, m.FullyAllocated)
				}

				want := formattest.ReadFile(t, ours)
				deterministic(t)
				got := convertPipe(t, s.path, "raw", opts)
				if !bytes.Equal(got, want) {
					t.Fatalf("piped output (%d bytes) differs from the file output (%d bytes) at %d",
						len(got), len(want), formattest.FirstDiff(got, want))
				}
			})
		}
	}
}

// writtenZeroSources makes raw images whose data ranges hold written
// zeros: every byte written, so all of each is data to SEEK_DATA.
func writtenZeroSources(t *testing.T) []source {
	t.Helper()
	dir := t.TempDir()
	writeRaw := func(name string, size int64, fill func(b []byte)) string {
		b := make([]byte, size)
		fill(b)
		p := filepath.Join(dir, name+".raw")
		formattest.WriteFile(t, p, b) // every byte written: all data to SEEK_DATA
		return p
	}
	rng := rand.New(rand.NewSource(7))
	// 4 KiB units of data and of zeros alternating through the first
	// 2 MiB (inside one payload block), then zeros, a data unit just
	// before a block boundary and a last odd sector.
	alternating := source{"alternating", writeRaw("alternating", 9<<20+512, func(b []byte) {
		for off := 0; off < 2<<20; off += 8192 {
			rng.Read(b[off : off+4096])
		}
		rng.Read(b[4<<20-4096 : 4<<20])
		rng.Read(b[len(b)-512:])
	}), "raw"}
	if testing.Short() {
		return []source{alternating} // -short: one source
	}
	zeros := filepath.Join(dir, "zeros.raw")
	formattest.MakeRaw(t, zeros, oddSmall, formattest.Zeros)
	return []source{
		{"zeros", zeros, "raw"},
		// 64 MiB of zeros with 1 MiB of random data at 10 MiB.
		{"zeros64M+1M", writeRaw("zeros64M", 64<<20, func(b []byte) { rng.Read(b[10<<20 : 11<<20]) }), "raw"},
		alternating,
	}
}

// TestWriterChecksum checks the engine's SHA-256 of a file output: with
// --checksum both subformats are written front to back and hashed as they
// are written.
func TestWriterChecksum(t *testing.T) {
	srcs := sources(t)
	for _, v := range []string{"", "subformat=fixed"} {
		out := filepath.Join(t.TempDir(), "out.vhdx")
		res := convertTo(t, srcs[1].path, srcs[1].format, out, convert.Options{Checksum: true, WriterOptions: optionMap(t, v)})
		formattest.WantFileSum(t, out, res.SHA256)
	}
}

// TestWriterEmptyHuge converts empty 1 TiB images (raw, and VHDX made by
// qemu-img) to VHDX: metadata work only.
func TestWriterEmptyHuge(t *testing.T) {
	dir := formattest.QemuDir(t)
	raw := filepath.Join(dir, "empty.raw")
	formattest.WriteFile(t, raw, nil)
	if err := os.Truncate(raw, 1<<40); err != nil {
		t.Fatal(err)
	}
	vx := filepath.Join(dir, "empty.vhdx")
	formattest.Create(t, vx, Name, "1T")
	for _, s := range []source{{"raw", raw, "raw"}, {"vhdx", vx, Name}} {
		for _, v := range []string{"", "block_size=1M,block_state_zero=off"} {
			out := filepath.Join(dir, "out-"+s.name+".vhdx")
			d := time.Hour
			for range 3 { // the best of three, against load on a shared machine
				os.Remove(out)
				start := time.Now()
				convertTo(t, s.path, s.format, out, convert.Options{WriterOptions: optionMap(t, v)})
				d = min(d, time.Since(start))
			}
			t.Logf("empty 1 TiB %s -o %q: %v, %d bytes", s.name, v, d, fileSize(t, out))
			if d > 100*time.Millisecond {
				t.Errorf("empty 1 TiB %s -o %q took %v, want well under 0.1 s", s.name, v, d)
			}
			formattest.Qemu(t, "check", "-q", out)
			info := formattest.QemuInfo(t, out)
			wantCluster := float64(32 << 20)
			if v != "" {
				wantCluster = 1 << 20
			}
			if info["virtual-size"] != float64(1<<40) || info["cluster-size"] != wantCluster {
				t.Errorf("info: %v", info)
			}
			img := formattest.Open(t, out, Name)
			var n int
			format.Walk(img, 0, func(e format.Extent) error {
				n++
				if e.Status == format.Data {
					t.Errorf("data extent %+v in an empty image", e)
				}
				return nil
			})
			if n != 1 {
				t.Errorf("%d extents, want 1", n)
			}
		}
	}
}

// TestWriterDefaultBlockSize checks the block size picked by disk size
// against qemu-img create.
func TestWriterDefaultBlockSize(t *testing.T) {
	dir := formattest.QemuDir(t)
	for _, size := range []int64{1 << 20, 1 << 30, 1<<30 + 512, 100 << 30, 100<<30 + 512, 32 << 40, 32<<40 + 512} {
		p, err := plan(format.WriteOptions{Size: size})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "x.vhdx")
		os.Remove(path)
		formattest.Create(t, path, Name, strconv.FormatInt(size, 10))
		if got := formattest.QemuInfo(t, path)["cluster-size"]; got != float64(p.blockSize) {
			t.Errorf("size %d: block size %d, qemu-img picks %v", size, p.blockSize, got)
		}
	}
}

// TestWriterOptions checks option parsing and validation, before any
// byte is written.
func TestWriterOptions(t *testing.T) {
	wf := formattest.Writer(t, Name)
	for _, c := range []struct {
		opts string
		size int64
		err  string // "" when valid
		bs   int64  // expected block size when valid
		log  int64
	}{
		{"", 1 << 30, "", 8 << 20, 1 << 20},
		{"block_size=0", 2 << 30, "", 16 << 20, 1 << 20},
		{"block_size=1M", 1 << 30, "", 1 << 20, 1 << 20},
		{"block_size=1.5M", 1 << 30, "", 2 << 20, 1 << 20},
		{"block_size=1048577", 1 << 30, "", 2 << 20, 1 << 20},
		{"block_size=512k", 1 << 30, "", 1 << 20, 1 << 20},
		{"block_size=300M", 1 << 30, "", 256 << 20, 1 << 20},
		{"block_size=3M", 1 << 30, "not a power of two", 0, 0},
		{"block_size=big", 1 << 30, "invalid size", 0, 0},
		{"block_size=-1M", 1 << 30, "invalid size", 0, 0},
		{"log_size=3M", 1 << 30, "", 8 << 20, 3 << 20},
		{"log_size=100k", 1 << 30, "", 8 << 20, 1 << 20},
		{"log_size=0", 1 << 30, "multiple of 1 MiB", 0, 0},
		{"log_size=4G", 1 << 30, "smaller than 4 GiB", 0, 0},
		{"block_state_zero=off", 1 << 30, "", 8 << 20, 1 << 20},
		{"block_state_zero=maybe", 1 << 30, "on or off", 0, 0},
		{"subformat=differencing", 1 << 30, "must be one of", 0, 0},
		{"subformat=streamOptimized", 1 << 30, "must be one of", 0, 0},
		{"cluster_size=64k", 1 << 30, "unknown option \"cluster_size\" (valid options: subformat, block_size, log_size, block_state_zero)", 0, 0},
		{"block_size=1M", 64 << 40, "over the 268435456-byte limit", 0, 0},
		{"", 64<<40 + 1, "out of range", 0, 0},
	} {
		o := format.WriteOptions{Size: c.size, Options: optionMap(t, c.opts)}
		err := wf.Validate(o)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("-o %q size %d: error %v, want %q", c.opts, c.size, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("-o %q: %v", c.opts, err)
			continue
		}
		p, err := plan(o)
		if err != nil || p.blockSize != c.bs || p.logSize != c.log {
			t.Errorf("-o %q: block size %d, log size %d (%v), want %d, %d", c.opts, p.blockSize, p.logSize, err, c.bs, c.log)
		}
	}
	if err := wf.Validate(format.WriteOptions{Size: 1 << 20, Compress: true}); err == nil {
		t.Error("-c accepted for vhdx")
	}
	// qemu-img agrees about the values accepted above.
	if _, err := exec.LookPath("qemu-img"); err == nil {
		dir := t.TempDir()
		for _, o := range []string{"block_size=1.5M", "block_size=300M", "log_size=100k"} {
			formattest.Create(t, filepath.Join(dir, o+".vhdx"), Name, "1G", "-o", o)
		}
		for _, o := range []string{"block_size=3M", "log_size=0"} {
			if err := exec.Command("qemu-img", "create", "-q", "-f", Name, "-o", o, filepath.Join(dir, "bad.vhdx"), "1G").Run(); err == nil {
				t.Errorf("qemu-img accepts -o %s, we refuse it", o)
			}
		}
	}
}

// TestWriterMeasure checks Measure against the files the writer makes,
// fully allocated (-S 0) included. (qemu-img 7.2 cannot measure VHDX:
// "Block driver 'vhdx' does not support size measurement".)
func TestWriterMeasure(t *testing.T) {
	srcs := sources(t)
	wf := formattest.Writer(t, Name)
	for _, s := range srcs[:3] {
		for _, v := range []string{"", "subformat=fixed", "block_size=1M"} {
			img := formattest.Open(t, s.path, s.format)
			opts := convert.Options{WriterOptions: optionMap(t, v), SparseSize: convert.NoSparse}
			m, err := convert.Measure(img, img.Size(), wf, opts)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "full.vhdx")
			convertTo(t, s.path, s.format, out, opts)
			if got := fileSize(t, out); got != m.FullyAllocated {
				t.Errorf("%s -o %q: fully allocated file is %d bytes, Measure says %d", s.name, v, got, m.FullyAllocated)
			}
		}
	}
	// qemu-img measure --size: no data.
	m, err := Measure(format.WriteOptions{Size: 1 << 30})
	if err != nil || m.Required != 4<<20 || m.FullyAllocated != 4<<20+1<<30 {
		t.Errorf("measure --size 1G: %+v, %v", m, err)
	}
	m, err = Measure(format.WriteOptions{Size: 1 << 30, Options: map[string]string{OptSubformat: SubformatFixed}})
	if err != nil || m.Required != 4<<20+1<<30 || m.FullyAllocated != m.Required {
		t.Errorf("measure --size 1G fixed: %+v, %v", m, err)
	}
}

// TestWriterErrors feeds the writer blocks that break the contract.
func TestWriterErrors(t *testing.T) {
	const size = 4 << 20
	layout := format.LayoutOfExtents([]format.Extent{
		{Start: 0, Length: 1 << 20, Status: format.Data},
		{Start: 1 << 20, Length: 3 << 20, Status: format.Unallocated},
	})
	newW := func() *Writer {
		w, err := NewWriter(&bytes.Buffer{}, format.WriteOptions{Size: size, Layout: layout, Options: map[string]string{OptBlockSize: "1M"}})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	data := make([]byte, 1<<20)
	w := newW()
	if err := w.Write(&format.Block{Start: 0, Length: 4096, Status: format.Data, Data: data[:100]}); err == nil || !strings.Contains(err.Error(), "carries 100 bytes") {
		t.Errorf("short data: %v", err)
	}
	w = newW()
	if err := w.Write(&format.Block{Start: 4096, Length: 4096, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Errorf("out of order: %v", err)
	}
	w = newW()
	w.Write(&format.Block{Start: 0, Length: 1 << 20, Status: format.Zero})
	if err := w.Write(&format.Block{Start: 1 << 20, Length: 1 << 20, Status: format.Data, Data: data}); err == nil || !strings.Contains(err.Error(), "without data") {
		t.Errorf("data in an unallocated block: %v", err)
	}
	// On a file, where blocks are allocated as data arrives, too.
	ff, err := os.Create(filepath.Join(t.TempDir(), "lazy.vhdx"))
	if err != nil {
		t.Fatal(err)
	}
	defer ff.Close()
	lw, err := NewWriter(ff, format.WriteOptions{Size: size, Layout: layout, Options: map[string]string{OptBlockSize: "1M"}})
	if err != nil {
		t.Fatal(err)
	}
	lw.Write(&format.Block{Start: 0, Length: 1 << 20, Status: format.Zero})
	if err := lw.Write(&format.Block{Start: 1 << 20, Length: 1 << 20, Status: format.Data, Data: data}); err == nil || !strings.Contains(err.Error(), "the layout left without data") {
		t.Errorf("data in a block the layout has no data in, on a file: %v", err)
	}
	w = newW()
	if err := w.Write(&format.Block{Start: 0, Length: size + 4096, Status: format.Zero}); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("block past the end: %v", err)
	}
	w = newW()
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "closed after 0") {
		t.Errorf("early close: %v", err)
	}
	if _, err := NewWriter(&bytes.Buffer{}, format.WriteOptions{Size: size}); err == nil {
		t.Error("writer without a layout")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write([]byte("abc"))
	if _, err := NewWriter(f, format.WriteOptions{Size: size, Layout: layout}); err == nil || !strings.Contains(err.Error(), "not at its start") {
		t.Errorf("destination at 3: %v", err)
	}
}

// TestWriterRoundTrip writes a synthetic disk with data straddling payload
// blocks and reads it back with our reader, on a pipe-like buffer.
func TestWriterRoundTrip(t *testing.T) {
	const size = 5<<20 + 512
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(3))
	rng.Read(want[1<<20-8192 : 1<<20+8192]) // across blocks 0 and 1
	rng.Read(want[size-512:])               // the last sector
	layout := format.LayoutOfExtents([]format.Extent{
		{Start: 0, Length: 2 << 20, Status: format.Data},
		{Start: 2 << 20, Length: 3 << 20, Status: format.Unallocated},
		{Start: 5 << 20, Length: 512, Status: format.Data},
	})
	for _, v := range []string{"block_size=1M", "block_size=1M,subformat=fixed", "block_size=1M,block_state_zero=off"} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, format.WriteOptions{Size: size, Layout: layout, Options: optionMap(t, v)})
		if err != nil {
			t.Fatal(err)
		}
		blocks := []format.Block{
			{Start: 0, Length: 1<<20 - 8192, Status: format.Zero},
			{Start: 1<<20 - 8192, Length: 16384, Status: format.Data, Data: want[1<<20-8192 : 1<<20+8192]},
			{Start: 1<<20 + 8192, Length: 4<<20 - 8192, Status: format.Unallocated},
			{Start: 5 << 20, Length: 512, Status: format.Data, Data: want[5<<20:]},
		}
		for i := range blocks {
			if err := w.Write(&blocks[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		img, err := Open(&formattest.MemFile{Data: buf.Bytes()}, nil)
		if err != nil {
			t.Fatalf("-o %s: reading back: %v", v, err)
		}
		got := make([]byte, size)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("-o %s: read back differs at %d", v, formattest.FirstDiff(got, want))
		}
		wantFile := int64(4<<20) + 3<<20 // metadata, then blocks 0, 1 and 5
		if strings.Contains(v, "fixed") {
			wantFile = 4<<20 + 6<<20
		}
		if int64(buf.Len()) != wantFile {
			t.Errorf("-o %s: %d bytes, want %d", v, buf.Len(), wantFile)
		}
	}
}

// BenchmarkConvertRandom256M converts 256 MiB of random raw data to a
// dynamic VHDX file.
func BenchmarkConvertRandom256M(b *testing.B) {
	dir, src := randomRaw(b)
	b.SetBytes(benchSize)
	benchConvert(b, src, filepath.Join(dir, "dst.vhdx"))
}

// BenchmarkVsQemu256M alternates our conversion and qemu-img convert of
// the same 256 MiB of random data to VHDX, so load hits both alike, and
// reports qemu-img's time over ours (above 1: we are faster).
func BenchmarkVsQemu256M(b *testing.B) {
	formattest.RequireQemu(b)
	dir, src := randomRaw(b)
	img := formattest.Open(b, src, "raw")
	dst, qdst := filepath.Join(dir, "dst.vhdx"), filepath.Join(dir, "qemu.vhdx")
	chunk, _ := strconv.ParseInt(os.Getenv("DISKIMG_BENCH_CHUNK"), 10, 64) // to tune the engine's read unit
	var ours, qemu time.Duration
	for b.Loop() {
		os.Remove(dst)
		start := time.Now()
		convertImage(b, img, dst, convert.Options{ChunkSize: chunk})
		ours += time.Since(start)

		os.Remove(qdst)
		start = time.Now()
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", Name, src, qdst).CombinedOutput(); err != nil {
			b.Fatalf("qemu-img convert: %v: %s", err, out)
		}
		qemu += time.Since(start)
	}
	b.ReportMetric(float64(qemu)/float64(ours), "qemu/ours")
	b.ReportMetric(float64(benchSize*b.N)/ours.Seconds()/1e6, "oursMB/s")
	b.ReportMetric(float64(benchSize*b.N)/qemu.Seconds()/1e6, "qemuMB/s")
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw image to VHDX:
// the extent map, the metadata and a truncate.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(b, src, 1<<40, formattest.Empty)
	benchConvert(b, src, filepath.Join(dir, "dst.vhdx"))
}

// benchConvert converts the raw image at src to a new VHDX file at dst
// once per iteration.
func benchConvert(b *testing.B, src, dst string) {
	img := formattest.Open(b, src, "raw")
	b.ReportAllocs()
	for b.Loop() {
		os.Remove(dst)
		convertImage(b, img, dst, convert.Options{})
	}
}

const benchSize = 256 << 20

// randomRaw writes 256 MiB of random data to a raw file, read once so it
// is in the page cache.
func randomRaw(b *testing.B) (dir, src string) {
	dir = b.TempDir()
	src = filepath.Join(dir, "src.raw")
	formattest.WriteSource(b, src, benchSize, nil)
	os.ReadFile(src)
	return dir, src
}

// seekOnlyFile is a destination that can seek, write at offsets and set
// its length, but cannot be read back (no ReadAt) and has no descriptor
// (no Fd): the engine's --checksum must then be streamed.
type seekOnlyFile struct{ f *os.File }

func (s seekOnlyFile) Write(p []byte) (int, error)              { return s.f.Write(p) }
func (s seekOnlyFile) WriteAt(p []byte, off int64) (int, error) { return s.f.WriteAt(p, off) }
func (s seekOnlyFile) Seek(off int64, whence int) (int64, error) {
	return s.f.Seek(off, whence)
}
func (s seekOnlyFile) Truncate(size int64) error { return s.f.Truncate(size) }

// TestWriterFrontToBack converts sources holding written zeros (and a
// sparse one) with --checksum into a file that cannot be read back, in
// every variant: the checksum must be streamed (the writer writes front to
// back, as on a pipe, seeking over holes), match the file, and the file
// must equal the output of the same conversion without --checksum.
func TestWriterFrontToBack(t *testing.T) {
	formattest.RequireQemu(t)
	srcs := writtenZeroSources(t)
	for _, s := range sources(t) {
		if s.name == "sparse-"+sizeName(oddLarge) && (s.format == "raw" || s.format == "qcow2") {
			srcs = append(srcs, s)
		}
	}
	for _, s := range srcs {
		for _, v := range writerVariants {
			t.Run(s.format+"-"+s.name+"/"+strings.ReplaceAll(v, ",", "+"), func(t *testing.T) {
				d := t.TempDir()
				plain, ftb := filepath.Join(d, "plain.vhdx"), filepath.Join(d, "ftb.vhdx")
				opts := convert.Options{WriterOptions: optionMap(t, v)}
				deterministic(t)
				convertTo(t, s.path, s.format, plain, opts)

				f, err := os.Create(ftb)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				opts.Checksum = true
				deterministic(t)
				res, err := convert.Convert(context.Background(), formattest.Open(t, s.path, s.format), formattest.Writer(t, Name), seekOnlyFile{f}, opts)
				if err != nil {
					t.Fatalf("convert with --checksum to a file that cannot be read back: %v", err)
				}

				got := formattest.ReadFile(t, ftb)
				formattest.WantFileSum(t, ftb, res.SHA256)
				want := formattest.ReadFile(t, plain)
				if !bytes.Equal(got, want) {
					t.Fatalf("front-to-back output (%d bytes) differs from the file output (%d bytes) at %d",
						len(got), len(want), formattest.FirstDiff(got, want))
				}
				formattest.Qemu(t, "check", "-q", ftb)
				formattest.Qemu(t, "compare", "-q", "-f", s.format, "-F", Name, s.path, ftb)
			})
		}
	}
}
