package convert_test

import (
	"context"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
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
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 1<<20)
	for range benchSize / len(buf) {
		rng.Read(buf)
		f.Write(buf)
	}
	f.Close()
	data, _ := os.ReadFile(src)
	_ = data
	return dir, src
}

// BenchmarkConvertRandom256M converts 256 MiB of random raw data to raw
// through the engine (file to file, page cache). Compare with
// BenchmarkIoCopy256M.
func BenchmarkConvertRandom256M(b *testing.B) {
	dir, src := randomSource(b)
	img := open(b, src)
	w := rawWriter(b)
	dst := filepath.Join(dir, "dst.raw")
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		os.Remove(dst)
		f, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := convert.Convert(context.Background(), img, w, f, convert.Options{}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkIoCopy256M is plain io.Copy of the same file: the baseline.
func BenchmarkIoCopy256M(b *testing.B) {
	dir, src := randomSource(b)
	dst := filepath.Join(dir, "dst.raw")
	b.SetBytes(benchSize)
	b.ReportAllocs()
	for b.Loop() {
		os.Remove(dst)
		in, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		// Hide ReadFrom/WriteTo so this is a read/write loop like cat's,
		// not copy_file_range.
		if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 128<<10)); err != nil {
			b.Fatal(err)
		}
		in.Close()
		out.Close()
	}
}

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB raw image to raw: the
// extent map and a truncate, no data.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src.raw")
	os.WriteFile(src, nil, 0o644)
	os.Truncate(src, 1<<40)
	img := open(b, src)
	w := rawWriter(b)
	dst := filepath.Join(dir, "dst.raw")
	b.ReportAllocs()
	for b.Loop() {
		os.Remove(dst)
		f, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := convert.Convert(context.Background(), img, w, f, convert.Options{}); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkEngineVsCopy alternates the engine, a plain read/write copy and
// cat(1) of the same 256 MiB file (in the page cache), so load on a shared
// machine hits all alike, and reports the engine's speed as a fraction of
// the others'.
func BenchmarkEngineVsCopy(b *testing.B) {
	dir, src := randomSource(b)
	img := open(b, src)
	w := rawWriter(b)
	dst := filepath.Join(dir, "dst.raw")
	var tEngine, tCopy, tCat time.Duration
	buf := make([]byte, 128<<10)
	for b.Loop() {
		os.Remove(dst)
		start := time.Now()
		in, _ := os.Open(src)
		out, _ := os.Create(dst)
		if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf); err != nil {
			b.Fatal(err)
		}
		in.Close()
		out.Close()
		tCopy += time.Since(start)

		os.Remove(dst)
		start = time.Now()
		out, _ = os.Create(dst)
		cat := exec.Command("cat", src)
		cat.Stdout = out
		if err := cat.Run(); err != nil {
			b.Fatal(err)
		}
		out.Close()
		tCat += time.Since(start)

		os.Remove(dst)
		start = time.Now()
		f, _ := os.Create(dst)
		if _, err := convert.Convert(context.Background(), img, w, f, convert.Options{ChunkSize: benchChunk}); err != nil {
			b.Fatal(err)
		}
		f.Close()
		tEngine += time.Since(start)
	}
	b.ReportMetric(float64(tCopy)/float64(tEngine), "engine/copy")
	b.ReportMetric(float64(benchSize*b.N)/tEngine.Seconds()/1e6, "engineMB/s")
	b.ReportMetric(float64(benchSize*b.N)/tCopy.Seconds()/1e6, "copyMB/s")
	b.ReportMetric(float64(tCat)/float64(tEngine), "engine/cat")
}
