package qcow2_test

import (
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format/formattest"
)

// benchSource writes a 256 MiB raw source once per benchmark: random data,
// or half random and half zeros per 64 KiB (semi-compressible).
func benchSource(b *testing.B, semi bool) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "src.raw")
	rng := rand.New(rand.NewSource(1))
	formattest.WriteSource(b, path, 256<<20, func(buf []byte, _ int64) {
		rng.Read(buf)
		if semi {
			for i := 0; i < len(buf); i += 64 << 10 {
				clear(buf[i+32<<10 : i+64<<10])
			}
		}
	})
	return path
}

// benchConvert times our conversion and qemu-img convert of the same
// source with the same options, and reports both and their ratio.
func benchConvert(b *testing.B, semi bool, v writerVariant) {
	formattest.RequireQemu(b)
	src := benchSource(b, semi)
	dir := b.TempDir()
	b.SetBytes(256 << 20)
	b.ResetTimer()
	var ours time.Duration
	for i := 0; i < b.N; i++ {
		out := filepath.Join(dir, "out.qcow2")
		os.Remove(out)
		start := time.Now()
		convertFile(b, src, "raw", out, v)
		ours += time.Since(start)
	}
	b.StopTimer()
	ref := filepath.Join(dir, "ref.qcow2")
	args := append(append([]string{"convert", "-f", "raw", "-O", "qcow2"}, v.qemuArgs()...), src, ref)
	start := time.Now()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img: %v\n%s", err, out)
	}
	qemu := time.Since(start)
	per := ours / time.Duration(b.N)
	b.ReportMetric(qemu.Seconds(), "qemu-s")
	b.ReportMetric(qemu.Seconds()/per.Seconds(), "x-qemu")
	b.Logf("diskimg %v, qemu-img %v (%.2fx); sizes: ours %d, qemu-img %d", per, qemu, qemu.Seconds()/per.Seconds(),
		fileSize(b, filepath.Join(dir, "out.qcow2")), fileSize(b, ref))
}

// BenchmarkConvertRandom256MiB: uncompressed raw -> qcow2 of random data.
func BenchmarkConvertRandom256MiB(b *testing.B) { benchConvert(b, false, writerVariants[0]) }

// BenchmarkConvertCompressedZlib256MiB: -c of half random, half zero data.
func BenchmarkConvertCompressedZlib256MiB(b *testing.B) { benchConvert(b, true, writerVariants[6]) }

// BenchmarkConvertCompressedZstd256MiB: -c zstd of the same data.
func BenchmarkConvertCompressedZstd256MiB(b *testing.B) { benchConvert(b, true, writerVariants[7]) }

// BenchmarkConvertEmpty1TiB converts an empty 1 TiB qcow2: metadata only.
func BenchmarkConvertEmpty1TiB(b *testing.B) {
	formattest.RequireQemu(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "empty.qcow2")
	formattest.Create(b, src, "qcow2", "1T")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(dir, "out.qcow2")
		os.Remove(out)
		convertFile(b, src, "qcow2", out, writerVariants[0])
	}
}
