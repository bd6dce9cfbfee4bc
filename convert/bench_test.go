package convert_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

const benchSize = 256 << 20

// benchChunk overrides the engine's chunk size in BenchmarkEngineVsCopy
// (DISKIMG_BENCH_CHUNK, bytes), to tune it.
var benchChunk, _ = strconv.ParseInt(os.Getenv("DISKIMG_BENCH_CHUNK"), 10, 64)

// randomSource makes (once per benchmark) a raw file of 256 MiB of random
// data, read once so it sits in the page cache.
func randomSource(b *testing.B) (dir, src string) {
	dir = b.TempDir()
	src = filepath.Join(dir, "src.raw")
	formattest.MakeRaw(b, src, benchSize, formattest.Dense)
	os.ReadFile(src)
	return dir, src
}

// convertTo converts img to a new file dst in format w, without CreateOutput's
// temporary name and sync.
func convertTo(b *testing.B, img format.Image, w *format.WriterFormat, dst string, opts convert.Options) {
	os.Remove(dst)
	f, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := convert.Convert(context.Background(), img, w, f, opts); err != nil {
		b.Fatal(err)
	}
	f.Close()
}

// copyTo copies src to a new file dst with a read/write loop like cat's
// (ReadFrom and WriteTo hidden, so not copy_file_range).
func copyTo(b *testing.B, src, dst string, buf []byte) {
	os.Remove(dst)
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConvertRandom256M converts 256 MiB of random raw data to raw
// through the engine (file to file, page cache). Compare with
// BenchmarkIoCopy256M.
func BenchmarkConvertRandom256M(b *testing.B) {
	dir, src := randomSource(b)
	img, w := open(b, src), rawWriter(b)
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		convertTo(b, img, w, filepath.Join(dir, "dst.raw"), convert.Options{})
	}
}

// BenchmarkIoCopy256M is plain io.Copy of the same file: the baseline.
func BenchmarkIoCopy256M(b *testing.B) {
	dir, src := randomSource(b)
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		copyTo(b, src, filepath.Join(dir, "dst.raw"), make([]byte, 128<<10))
	}
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw image to raw: the
// extent map and a truncate, no data.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	os.WriteFile(src, nil, 0o644)
	os.Truncate(src, 1<<40)
	img, w := open(b, src), rawWriter(b)
	b.ReportAllocs()
	for b.Loop() {
		convertTo(b, img, w, filepath.Join(dir, "dst.raw"), convert.Options{})
	}
}

// BenchmarkEngineVsCopy alternates the engine, a plain read/write copy and
// cat(1) of the same 256 MiB file (in the page cache), so load on a shared
// machine hits all alike, and reports the engine's speed as a fraction of
// the others'.
func BenchmarkEngineVsCopy(b *testing.B) {
	dir, src := randomSource(b)
	img, w := open(b, src), rawWriter(b)
	dst := filepath.Join(dir, "dst.raw")
	var tEngine, tCopy, tCat time.Duration
	buf := make([]byte, 128<<10)
	for b.Loop() {
		start := time.Now()
		copyTo(b, src, dst, buf)
		tCopy += time.Since(start)

		os.Remove(dst)
		start = time.Now()
		out, _ := os.Create(dst)
		cat := exec.Command("cat", src)
		cat.Stdout = out
		if err := cat.Run(); err != nil {
			b.Fatal(err)
		}
		out.Close()
		tCat += time.Since(start)

		start = time.Now()
		convertTo(b, img, w, dst, convert.Options{ChunkSize: benchChunk})
		tEngine += time.Since(start)
	}
	b.ReportMetric(float64(tCopy)/float64(tEngine), "engine/copy")
	b.ReportMetric(float64(benchSize*b.N)/tEngine.Seconds()/1e6, "engineMB/s")
	b.ReportMetric(float64(benchSize*b.N)/tCopy.Seconds()/1e6, "copyMB/s")
	b.ReportMetric(float64(tCat)/float64(tEngine), "engine/cat")
}
