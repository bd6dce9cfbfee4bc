package convert_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	_ "github.com/diskimg/diskimg/format/raw"
)

func rawWriter(t testing.TB) *format.WriterFormat {
	t.Helper()
	w, err := format.LookupWriter("raw")
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func open(t testing.TB, path string) format.Image {
	t.Helper()
	img, err := format.Open(path, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// tryConvert converts src to a new file at dst in format w through
// CreateOutput, as the CLI does: the file is there only if the conversion
// succeeded.
func tryConvert(t testing.TB, ctx context.Context, src format.Image, w *format.WriterFormat, dst string, opts convert.Options) (*convert.Result, error) {
	t.Helper()
	out, err := convert.CreateOutput(dst, convert.OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Abort()
	res, err := convert.Convert(ctx, src, w, out.Target, opts)
	if err != nil {
		return nil, err
	}
	return res, out.Commit()
}

// convertFile converts src to a new raw file at dst.
func convertFile(t testing.TB, src format.Image, dst string, opts convert.Options) *convert.Result {
	t.Helper()
	res, err := tryConvert(t, context.Background(), src, rawWriter(t), dst, opts)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	return res
}

// dataBytes counts the non-zero 4 KiB blocks of a file, in bytes: what a
// sparse copy must allocate at least and about at most.
func dataBytes(t testing.TB, data []byte) int64 {
	var n int64
	for off := 0; off < len(data); off += 4096 {
		if !format.IsZero(data[off:min(off+4096, len(data))]) {
			n += 4096
		}
	}
	return n
}

// rawSource makes src.raw, a raw image of size bytes of content c, in a
// new temporary directory dir.
func rawSource(t testing.TB, size int64, c formattest.Content) (dir, src string) {
	t.Helper()
	dir = t.TempDir()
	src = filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, size, c)
	return dir, src
}

var sizes = append([]int64{17, 4096 + 1, 1<<20 + 1}, formattest.Sizes...)

// TestRawToRaw converts generated raw images and checks the result with
// qemu-img compare, against qemu-img convert's bytes, and for sparseness.
func TestRawToRaw(t *testing.T) {
	formattest.RequireQemu(t)
	for _, size := range sizes {
		for _, c := range formattest.Contents {
			t.Run(fmt.Sprintf("%d/%s", size, c), func(t *testing.T) {
				dir, src := rawSource(t, size, c)
				img := open(t, src)
				dst := filepath.Join(dir, "dst.raw")
				res := convertFile(t, img, dst, convert.Options{Checksum: true})
				formattest.Qemu(t, "compare", "-f", "raw", "-F", "raw", src, dst)
				ref := filepath.Join(dir, "ref.raw")
				formattest.Qemu(t, "convert", "-f", "raw", "-O", "raw", src, ref)
				want, _ := os.ReadFile(ref)
				got, _ := os.ReadFile(dst)
				if !bytes.Equal(got, want) {
					t.Fatalf("output differs from qemu-img convert (%d vs %d bytes)", len(got), len(want))
				}
				if sum := sha256.Sum256(got); !bytes.Equal(res.SHA256, sum[:]) {
					t.Errorf("checksum %x, file hashes to %x", res.SHA256, sum)
				}
				if alloc, data := formattest.Allocated(t, dst), dataBytes(t, got); alloc > data+64<<10 {
					t.Errorf("output allocates %d bytes for %d bytes of data: not sparse", alloc, data)
				}
				// qemu (and diskimg) see a raw file as a disk of whole sectors.
				disk := (size + 511) / 512 * 512
				if res.Size != disk || res.DataBytes+res.ZeroBytes+res.SkippedBytes != disk {
					t.Errorf("result %+v does not account for %d bytes", res, disk)
				}
				if c == formattest.Empty && res.BytesRead != 0 {
					t.Errorf("read %d bytes of an empty image", res.BytesRead)
				}
				if c == formattest.Zeros && res.DataBytes != 0 {
					t.Errorf("wrote %d data bytes for an image of zeros", res.DataBytes)
				}
				if same, off, err := convert.Compare(context.Background(), img, open(t, dst)); err != nil || !same {
					t.Errorf("Compare = %v, %d, %v", same, off, err)
				}
			})
		}
	}
}

// TestFullyAllocated checks -S 0 (NoSparse): every byte allocated, as
// qemu-img convert -S 0 does.
func TestFullyAllocated(t *testing.T) {
	dir, src := rawSource(t, 9<<20+1536, formattest.Sparse)
	dst := filepath.Join(dir, "dst.raw")
	res := convertFile(t, open(t, src), dst, convert.Options{SparseSize: convert.NoSparse})
	if alloc := formattest.Allocated(t, dst); alloc < 9<<20 {
		t.Errorf("-S 0 output allocates only %d bytes", alloc)
	}
	if res.DataBytes != 9<<20+1536 {
		t.Errorf("DataBytes %d", res.DataBytes)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("output differs")
	}
}

// TestSparseSizes checks -S values: valid ones give identical bytes,
// invalid ones are refused before anything is written.
func TestSparseSizes(t *testing.T) {
	dir, src := rawSource(t, 9<<20+1536, formattest.Sparse)
	want, _ := os.ReadFile(src)
	for _, s := range []int64{512, 4096, 65536, 16 << 20} {
		dst := filepath.Join(dir, fmt.Sprint(s))
		convertFile(t, open(t, src), dst, convert.Options{SparseSize: s, Workers: 3, ChunkSize: 3 * 4096})
		got, _ := os.ReadFile(dst)
		if !bytes.Equal(got, want) {
			t.Fatalf("-S %d: output differs", s)
		}
	}
	for _, s := range []int64{100, 32 << 20, -5} {
		_, err := convert.Convert(context.Background(), open(t, src), rawWriter(t), io.Discard, convert.Options{SparseSize: s})
		if err == nil || !strings.Contains(err.Error(), "sparse size") {
			t.Errorf("-S %d: err %v", s, err)
		}
	}
}

// TestStreamToPipe checks that streaming to a pipe gives the bytes of the
// file output, and the same checksum.
func TestStreamToPipe(t *testing.T) {
	dir := t.TempDir()
	for _, c := range formattest.Contents {
		src := filepath.Join(dir, string(c)+".raw")
		formattest.MakeRaw(t, src, 9<<20+1536, c)
		img := open(t, src)
		file := filepath.Join(dir, string(c)+".out")
		fres := convertFile(t, img, file, convert.Options{Checksum: true})

		var pres *convert.Result
		got := formattest.Piped(t, func(w *os.File) (err error) {
			pres, err = convert.Convert(context.Background(), img, rawWriter(t), w, convert.Options{Checksum: true})
			return err
		})
		want, _ := os.ReadFile(file)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: pipe output (%d bytes) differs from file output (%d bytes)", c, len(got), len(want))
		}
		if !bytes.Equal(pres.SHA256, fres.SHA256) {
			t.Errorf("%s: pipe checksum %x, file checksum %x", c, pres.SHA256, fres.SHA256)
		}
		if pres.BytesWritten != int64(len(want)) {
			t.Errorf("%s: pipe BytesWritten %d, want %d", c, pres.BytesWritten, len(want))
		}
	}
}

// failingImage fails every read that reaches past failAt.
type failingImage struct {
	format.Image
	failAt int64
}

var errDisk = errors.New("injected read error")

func (f *failingImage) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, errDisk
	}
	return f.Image.ReadAt(p, off)
}

// TestSourceErrorMidway checks that a source failing halfway gives an
// error and leaves no file behind.
func TestSourceErrorMidway(t *testing.T) {
	dir, src := rawSource(t, 9<<20, formattest.Dense)
	img := &failingImage{Image: open(t, src), failAt: 5 << 20}
	_, err := tryConvert(t, context.Background(), img, rawWriter(t), filepath.Join(dir, "dst.raw"), convert.Options{Workers: 2})
	if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("err = %v, want the injected error with its offset", err)
	}
	if names := formattest.ListDir(t, dir); len(names) != 1 {
		t.Fatalf("files left behind: %v", names)
	}
}

// TestDiskFull writes to /dev/full, which fails every write with ENOSPC.
func TestDiskFull(t *testing.T) {
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	_, src := rawSource(t, 3<<20, formattest.Dense)
	_, err = convert.Convert(context.Background(), open(t, src), rawWriter(t), f, convert.Options{})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
}

// TestCancel cancels a conversion from its progress callback: the error is
// context.Canceled and no file is left.
func TestCancel(t *testing.T) {
	dir, src := rawSource(t, 9<<20, formattest.Dense)
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := tryConvert(t, ctx, open(t, src), rawWriter(t), filepath.Join(dir, "dst.raw"), convert.Options{
		Progress: func(done, total int64) {
			calls++
			if done > total || total != 9<<20 {
				t.Errorf("progress %d of %d", done, total)
			}
			cancel()
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if calls > 1+2*4 {
		t.Errorf("%d progress calls after cancel", calls)
	}
	if names := formattest.ListDir(t, dir); len(names) != 1 {
		t.Fatalf("files left behind: %v", names)
	}
}

func TestOutputSafety(t *testing.T) {
	dir, src := rawSource(t, 1<<20, formattest.Sparse)
	existing := filepath.Join(dir, "existing.raw")
	os.WriteFile(existing, []byte("keep me"), 0o640)

	// An existing output is refused before anything is written.
	if _, err := convert.CreateOutput(existing, convert.OutputOptions{}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("existing output: err = %v", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatal("existing output modified")
	}
	// The source itself, through a symlink and a hard link, is refused
	// even with force.
	os.Symlink("src.raw", filepath.Join(dir, "link.raw"))
	os.Link(src, filepath.Join(dir, "hard.raw"))
	for _, name := range []string{"src.raw", "link.raw", "hard.raw"} {
		_, err := convert.CreateOutput(filepath.Join(dir, name), convert.OutputOptions{Force: true, Sources: []string{src}})
		if err == nil || !strings.Contains(err.Error(), "same file") {
			t.Errorf("%s: err = %v, want same-file refusal", name, err)
		}
	}
	// With force an existing file is replaced, keeping its mode, only on
	// Commit.
	out, err := convert.CreateOutput(existing, convert.OutputOptions{Force: true, Sources: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := convert.Convert(context.Background(), open(t, src), rawWriter(t), out.Target, convert.Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatal("existing output replaced before Commit")
	}
	if err := out.Commit(); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(existing)
	if !bytes.Equal(a, b) {
		t.Fatal("forced output has the wrong content")
	}
	if fi, _ := os.Stat(existing); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 kept", fi.Mode().Perm())
	}
	// A file created under the name during the conversion is not
	// clobbered without force.
	racy := filepath.Join(dir, "racy.raw")
	out, err = convert.CreateOutput(racy, convert.OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(racy, []byte("theirs"), 0o644)
	if err := out.Commit(); err == nil {
		t.Fatal("commit over a file created meanwhile succeeded")
	}
	if b, _ := os.ReadFile(racy); string(b) != "theirs" {
		t.Fatal("racing file clobbered")
	}
	for _, n := range formattest.ListDir(t, dir) {
		if strings.Contains(n, ".diskimg-") {
			t.Errorf("temporary file %s left", n)
		}
	}
}

// TestOptionsRefusedBeforeWriting checks that bad writer options fail in
// Check, before an output exists, and in Convert before writing.
func TestOptionsRefusedBeforeWriting(t *testing.T) {
	_, src := rawSource(t, 1<<20, formattest.Sparse)
	img := open(t, src)
	for _, o := range []convert.Options{
		{WriterOptions: map[string]string{"cluster_size": "4096"}},
		{Compress: true},
		{Workers: -1},
	} {
		if err := convert.Check(img, rawWriter(t), o); err == nil {
			t.Errorf("Check(%+v) accepted", o)
		}
		var buf bytes.Buffer
		if _, err := convert.Convert(context.Background(), img, rawWriter(t), &buf, o); err == nil || buf.Len() != 0 {
			t.Errorf("Convert(%+v) = %v after writing %d bytes", o, err, buf.Len())
		}
	}
}

// fakeFormat is a writer that checks the engine's side of the contract.
type fakeWriter struct {
	t         testing.TB
	src       []byte
	bs, chunk int64
	next      int64
	encoding  atomic.Int32
	maxEnc    atomic.Int32
	mu        sync.Mutex
	buffers   map[uintptr]bool // chunk buffers seen
	inFlight  map[uintptr]int  // blocks encoded, not yet written, by buffer
	maxBufs   int
	encoded   int
	jitter    bool // sleep in Encode so blocks finish out of order
}

func (w *fakeWriter) BlockSize() int64 { return w.bs }

func (w *fakeWriter) base(b *format.Block) uintptr {
	return uintptr(unsafe.Pointer(&b.Data[0])) - uintptr(b.Start%w.chunk)
}

func (w *fakeWriter) Encode(b *format.Block) error {
	n := w.encoding.Add(1)
	defer w.encoding.Add(-1)
	for {
		m := w.maxEnc.Load()
		if n <= m || w.maxEnc.CompareAndSwap(m, n) {
			break
		}
	}
	if b.Status != format.Data || b.Start%w.bs != 0 || int64(len(b.Data)) != b.Length {
		w.t.Errorf("Encode got block [%d,+%d) status %v with %d bytes", b.Start, b.Length, b.Status, len(b.Data))
	}
	if w.jitter {
		time.Sleep(time.Duration(rand.Intn(300)) * time.Microsecond)
	}
	sum := sha256.Sum256(b.Data)
	b.Encoded = sum
	w.mu.Lock()
	w.inFlight[w.base(b)]++
	if len(w.inFlight) > w.maxBufs {
		w.maxBufs = len(w.inFlight)
	}
	w.encoded++
	w.mu.Unlock()
	return nil
}

func (w *fakeWriter) Write(b *format.Block) error {
	if b.Start != w.next {
		w.t.Fatalf("Write got block at %d, want %d", b.Start, w.next)
	}
	if b.Start%w.bs != 0 || (b.Length%w.bs != 0 && b.End() != int64(len(w.src))) {
		w.t.Fatalf("block [%d,+%d) not on the %d-byte grid", b.Start, b.Length, w.bs)
	}
	w.next = b.End()
	want := w.src[b.Start:b.End()]
	if b.Status == format.Data {
		if sum := sha256.Sum256(b.Data); b.Encoded != sum || !bytes.Equal(b.Data, want) {
			w.t.Fatalf("block at %d: data or encoding wrong", b.Start)
		}
		w.mu.Lock()
		k := w.base(b)
		if w.inFlight[k]--; w.inFlight[k] == 0 {
			delete(w.inFlight, k)
		}
		w.mu.Unlock()
	} else if !format.IsZero(want) {
		w.t.Fatalf("block [%d,+%d) reported %v but holds data", b.Start, b.Length, b.Status)
	}
	return nil
}

func (w *fakeWriter) Close() error {
	if w.next != int64(len(w.src)) {
		w.t.Errorf("Close after %d bytes of %d", w.next, len(w.src))
	}
	return nil
}

// TestEngineOrderAndBounds proves the engine hands blocks in order with
// several workers encoding at once, on the writer's grid, and never has
// more than InFlight buffers out.
func TestEngineOrderAndBounds(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	const size = 33<<20 + 4096
	formattest.MakeRaw(t, src, size, formattest.Sparse)
	// Make most of it dense so there are many data blocks.
	f, _ := os.OpenFile(src, os.O_RDWR, 0)
	junk := make([]byte, 8<<20)
	rand.New(rand.NewSource(2)).Read(junk)
	f.WriteAt(junk, 10<<20)
	f.Close()
	data, _ := os.ReadFile(src)
	img := open(t, src)
	for _, bs := range []int64{512, 65536} {
		fw := &fakeWriter{t: t, src: data, bs: bs, chunk: 256 << 10, buffers: map[uintptr]bool{}, inFlight: map[uintptr]int{}, jitter: true}
		wf := &format.WriterFormat{Name: "fake", New: func(format.Target, format.WriteOptions) (format.Writer, error) { return fw, nil }}
		res, err := convert.Convert(context.Background(), img, wf, io.Discard, convert.Options{Workers: 4, InFlight: 6, ChunkSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		if fw.next != size {
			t.Fatalf("blocks ended at %d", fw.next)
		}
		if fw.maxEnc.Load() < 2 {
			t.Errorf("bs %d: at most %d Encode calls at once with 4 workers", bs, fw.maxEnc.Load())
		}
		if fw.maxBufs > 6 {
			t.Errorf("bs %d: %d buffers in flight, limit 6", bs, fw.maxBufs)
		}
		if res.DataBytes < 8<<20 || fw.encoded == 0 {
			t.Errorf("bs %d: result %+v", bs, res)
		}
		t.Logf("bs %d: max %d concurrent Encode, max %d buffers, %d blocks encoded", bs, fw.maxEnc.Load(), fw.maxBufs, fw.encoded)
	}
}

// TestCompare checks Compare against qemu-img compare.
func TestCompare(t *testing.T) {
	dir := formattest.QemuDir(t)
	base := filepath.Join(dir, "a.raw")
	formattest.MakeRaw(t, base, 9<<20+1536, formattest.Sparse)
	orig, _ := os.ReadFile(base)
	variant := func(name string, size int64, patch map[int64]byte) string {
		p := filepath.Join(dir, name)
		b := append([]byte(nil), orig...)
		if size < int64(len(b)) {
			b = b[:size]
		}
		formattest.WriteFile(t, p, b)
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		f, _ := os.OpenFile(p, os.O_RDWR, 0)
		for off, v := range patch {
			f.WriteAt([]byte{v}, off)
		}
		f.Close()
		return p
	}
	size := int64(len(orig))
	cases := []string{
		variant("same", size, nil),
		variant("byte1000", size, map[int64]byte{1000: orig[1000] ^ 1}),
		variant("inhole", size, map[int64]byte{7 << 20: 9}),
		variant("last", size, map[int64]byte{size - 1: orig[size-1] ^ 0xff}),
		variant("longer-zero", size+(5<<20), nil),
		variant("longer-data", size+(5<<20), map[int64]byte{size + 3<<20 + 7: 1}),
		variant("shorter", size-(1<<20), nil),
	}
	for _, other := range cases {
		for _, pair := range [][2]string{{base, other}, {other, base}} {
			same, off, err := convert.Compare(context.Background(), open(t, pair[0]), open(t, pair[1]))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", pair[0], pair[1])
			out, _ := cmd.Output()
			code := cmd.ProcessState.ExitCode()
			if same != (code == 0) {
				t.Errorf("%s vs %s: Compare says identical=%v, qemu-img exit %d: %s", filepath.Base(pair[0]), filepath.Base(pair[1]), same, code, out)
				continue
			}
			if !same {
				want := fmt.Sprintf("Content mismatch at offset %d!", off)
				if !strings.Contains(string(out), want) {
					t.Errorf("%s vs %s: we say %q, qemu-img says %q", filepath.Base(pair[0]), filepath.Base(pair[1]), want, out)
				}
			}
		}
	}
}

// TestCompareHugeEmpty checks that two empty 1 TiB images compare from
// their maps alone.
func TestCompareHugeEmpty(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, nil, 0o644)
	os.Truncate(a, 1<<40)
	os.WriteFile(b, nil, 0o644)
	os.Truncate(b, 1<<40+1<<30)
	start := time.Now()
	same, _, err := convert.Compare(context.Background(), open(t, a), open(t, b))
	if err != nil || !same {
		t.Fatalf("Compare = %v, %v", same, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("comparing empty 1 TiB images took %v", d)
	}
}

// TestMeasure checks raw measure against qemu-img measure.
func TestMeasure(t *testing.T) {
	formattest.RequireQemu(t)
	_, src := rawSource(t, 9<<20+1536, formattest.Sparse)
	m, err := convert.Measure(open(t, src), 0, rawWriter(t), convert.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := string(formattest.Qemu(t, "measure", "--output=json", "-f", "raw", "-O", "raw", src))
	want := fmt.Sprintf(`"required": %d`, m.Required)
	want2 := fmt.Sprintf(`"fully-allocated": %d`, m.FullyAllocated)
	if !strings.Contains(out, want) || !strings.Contains(out, want2) {
		t.Errorf("measure %+v, qemu-img %s", m, out)
	}
	m, err = convert.Measure(nil, 1000, rawWriter(t), convert.Options{})
	if err != nil || m.Required != 1000 {
		t.Errorf("measure --size 1000: %+v, %v", m, err)
	}
}

// TestEmptyHuge converts an empty 1 TiB image: metadata time only.
func TestEmptyHuge(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	os.WriteFile(src, nil, 0o644)
	os.Truncate(src, 1<<40)
	start := time.Now()
	res := convertFile(t, open(t, src), filepath.Join(dir, "dst.raw"), convert.Options{})
	if d := time.Since(start); d > time.Second {
		t.Errorf("empty 1 TiB took %v", d)
	}
	if res.BytesRead != 0 || res.SkippedBytes != 1<<40 {
		t.Errorf("result %+v", res)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "dst.raw")); fi.Size() != 1<<40 {
		t.Errorf("output size %d", fi.Size())
	}
}

// TestEmptyDisk converts a zero-byte disk.
func TestEmptyDisk(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	os.WriteFile(src, nil, 0o644)
	dst := filepath.Join(dir, "dst.raw")
	res := convertFile(t, open(t, src), dst, convert.Options{Checksum: true})
	if fi, err := os.Stat(dst); err != nil || fi.Size() != 0 {
		t.Fatalf("output %v, %v", fi, err)
	}
	if sum := sha256.Sum256(nil); !bytes.Equal(res.SHA256, sum[:]) {
		t.Errorf("checksum %x", res.SHA256)
	}
}

// brokenMap is an image whose extent map fails partway.
type brokenMap struct{ format.Image }

func (b brokenMap) Extent(off int64) (format.Extent, error) {
	if off >= 2<<20 {
		return format.Extent{}, errors.New("injected map error")
	}
	return format.Extent{Start: off, Length: min(1<<20, b.Size()-off), Status: format.Data, Offset: off}, nil
}

// TestMapErrorMidway checks that a failing extent map stops the
// conversion with its error.
func TestMapErrorMidway(t *testing.T) {
	_, src := rawSource(t, 9<<20, formattest.Dense)
	var buf bytes.Buffer
	_, err := convert.Convert(context.Background(), brokenMap{open(t, src)}, rawWriter(t), &buf, convert.Options{})
	if err == nil || !strings.Contains(err.Error(), "injected map error") {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := convert.Compare(context.Background(), brokenMap{open(t, src)}, open(t, src)); err == nil {
		t.Fatal("Compare ignored the map error")
	}
}

// TestOpenStdinSpool checks that a stream is spooled byte for byte into
// an unlinked file whose zero blocks are holes.
func TestOpenStdinSpool(t *testing.T) {
	want := make([]byte, 8<<20+100)
	rand.New(rand.NewSource(3)).Read(want[1<<20 : 2<<20])
	want[len(want)-1] = 7
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { w.Write(want); w.Close() }()
	dir := t.TempDir()
	f, err := convert.OpenStdin(context.Background(), r, dir)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != int64(len(want)) || f.Name() != "" {
		t.Fatalf("size %d name %q, want %d and no name", f.Size(), f.Name(), len(want))
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("spooled bytes differ from the stream")
	}
	fi, _ := f.Stat()
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 2<<20 {
		t.Errorf("spool allocates %d bytes for 1 MiB of data", blocks)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("spool left %d entries in its directory", len(ents))
	}
}

// A raw source that shrinks while it is converted is an error: the data
// past its new end must not turn into zeros in an output that succeeds.
func TestSourceShrinks(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.WriteRuns(t, src, 64<<20, 1<<20, 0, 48<<20)
	img := open(t, src)
	var once sync.Once
	opts := convert.Options{Workers: 1, InFlight: 2, ChunkSize: 64 << 10, Progress: func(done, total int64) {
		// After the first chunk: the map past 1 MiB is not read yet.
		once.Do(func() {
			if err := os.Truncate(src, 32<<20); err != nil {
				t.Error(err)
			}
		})
	}}
	_, err := tryConvert(t, context.Background(), img, rawWriter(t), filepath.Join(dir, "out.raw"), opts)
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("converting a source that shrank: %v, want an error saying it changed", err)
	}
}

// A source whose modification time changes during the run (written in
// place, same size) is an error too.
func TestSourceModified(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.WriteRuns(t, src, 8<<20, 1<<20, 0)
	img := open(t, src)
	if err := format.Unchanged(img); err != nil {
		t.Fatalf("before any change: %v", err)
	}
	f, err := os.OpenFile(src, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 4<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = tryConvert(t, context.Background(), img, rawWriter(t), filepath.Join(dir, "out.raw"), convert.Options{})
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("converting a source modified since it was opened: %v", err)
	}
}
