package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// Sizes are the corpus dimensions. A zero size leaves that corpus out.
type Sizes struct {
	// RandomDisk is the virtual size of the "random" disk, which holds
	// RandomData bytes of random data in four runs, the rest sparse.
	RandomDisk, RandomData int64
	// Dense is the size of the "dense" disk: random data end to end, the
	// case for raw throughput against cat.
	Dense int64
	// OSDisk is the virtual size of the "os" disk (GPT, EFI FAT32, ext4)
	// and OSFiles the bytes of files put in its ext4 partition.
	OSDisk, OSFiles int64
	// Huge is the virtual size of the "empty" disk: no data at all.
	Huge int64
	// Preallocated is the virtual size of the "prealloc" disk, a qcow2
	// with preallocation=metadata, and FixedVHD that of the "fixed" disk,
	// a fixed VHD: each holds HoleData bytes of random data in four runs,
	// and every other allocated block is a hole in the file.
	Preallocated, FixedVHD, HoleData int64
}

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
	tib = int64(1) << 40
)

// FullSizes is the corpus issue #7 describes.
var FullSizes = Sizes{RandomDisk: 4 * gib, RandomData: 1 * gib, Dense: 1 * gib, OSDisk: 4 * gib, OSFiles: 384 * mib, Huge: 1 * tib,
	Preallocated: 256 * gib, FixedVHD: 64 * gib, HoleData: 64 * mib}

// QuickSizes is the `make bench` corpus: the same shapes, a quarter of
// the data, so the whole set runs in a few minutes on two cores.
var QuickSizes = Sizes{RandomDisk: 1 * gib, RandomData: 256 * mib, Dense: 256 * mib, OSDisk: 1 * gib, OSFiles: 96 * mib, Huge: 1 * tib,
	Preallocated: 256 * gib, FixedVHD: 64 * gib, HoleData: 64 * mib}

// TinySizes is for tests: seconds, not minutes.
var TinySizes = Sizes{RandomDisk: 16 * mib, RandomData: 4 * mib, Dense: 8 * mib, Huge: 1 * tib,
	Preallocated: 1 * gib, FixedVHD: 1 * gib, HoleData: 4 * mib}

const (
	espSize  = 64 * mib // EFI system partition
	gptAlign = 1 * mib  // first partition and the space left for the backup GPT
	sector   = 512
	// minOSDisk fits the ESP (FAT32 needs about 33 MiB) and a small ext4.
	minOSDisk = espSize + 64*mib
)

// corpus is one source disk, as a raw file plus its copies in every input
// format.
type corpus struct {
	name   string
	size   int64             // virtual size
	raw    string            // path of the raw original
	inputs map[string]string // input format -> path
	note   string            // why it is missing, when raw == ""
	// only, when set, is the one input format of a corpus made in it
	// with options (holes), converted to qcow2 and raw only.
	only string
}

// holeCorpora are the disks whose allocated blocks are holes in their
// files, made from a sparse raw disk by qemu-img convert -O FORMAT -o
// OPTIONS (diskimg's without qemu-img).
var holeCorpora = []struct {
	name, format, opts string
	size               func(Sizes) int64
}{
	{"prealloc", "qcow2", "preallocation=metadata", func(s Sizes) int64 { return s.Preallocated }},
	{"fixed", "vpc", "subformat=fixed", func(s Sizes) int64 { return s.FixedVHD }},
}

// fill writes n random bytes at off in f, from a deterministic generator.
func fill(f *os.File, rng *rand.ChaCha8, off, n int64) error {
	buf := make([]byte, min(n, 4*mib))
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		rng.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
		n -= int64(len(b))
	}
	return nil
}

func seed(name string) [32]byte {
	var s [32]byte
	copy(s[:], "diskimg bench "+name)
	return s
}

// makeDisk makes a disk of size bytes, a hole but for what write puts in
// it.
func makeDisk(path string, size int64, write func(f *os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := write(f); err != nil {
		return err
	}
	return f.Close()
}

// makeRandom makes a sparse disk with data in four equal runs spread
// over it, each starting on a MiB boundary.
func makeRandom(path string, size, data int64) error {
	return makeDisk(path, size, func(f *os.File) error {
		rng := rand.NewChaCha8(seed("random"))
		run := data / 4 / mib * mib
		if run == 0 {
			run = data / 4
		}
		for i := int64(0); i < 4; i++ {
			off := i * (size / 4) / mib * mib
			if err := fill(f, rng, off, min(run, size-off)); err != nil {
				return err
			}
		}
		return nil
	})
}

// makeDense makes a disk of random data end to end.
func makeDense(path string, size int64) error {
	return makeDisk(path, size, func(f *os.File) error { return fill(f, rand.NewChaCha8(seed("dense")), 0, size) })
}

// makeEmpty makes a disk with no data.
func makeEmpty(path string, size int64) error {
	return makeDisk(path, size, func(*os.File) error { return nil })
}

// osTools are the programs makeOS needs.
var osTools = []string{"sgdisk", "mkfs.vfat", "mkfs.ext4"}

// missingTool returns the first of names not on PATH, "" when all are.
func missingTool(names ...string) string {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return n
		}
	}
	return ""
}

// makeOS makes an OS-like disk: a GPT with an EFI system partition
// (FAT32) and a Linux partition (ext4) holding files bytes of files, a
// mix of compressible text and random binaries. tmp is a scratch dir
// for the file tree.
func makeOS(ctx context.Context, env []string, path, tmp string, size, files int64) error {
	if err := makeEmpty(path, size); err != nil {
		return err
	}
	espStart := gptAlign / sector
	rootStart := (gptAlign + espSize) / sector
	rootEnd := (size-gptAlign)/sector - 1 // leaves room for the backup GPT
	if err := run(ctx, env, "sgdisk",
		"-n", fmt.Sprintf("1:%d:%d", espStart, rootStart-1), "-t", "1:ef00", "-c", "1:EFI system",
		"-n", fmt.Sprintf("2:%d:%d", rootStart, rootEnd), "-t", "2:8300", "-c", "2:root",
		path); err != nil {
		return err
	}
	if err := run(ctx, env, "mkfs.vfat", "-F", "32", "-n", "EFI", "--offset", strconv.FormatInt(espStart, 10),
		path, strconv.FormatInt(espSize/kib, 10)); err != nil {
		return err
	}
	tree := filepath.Join(tmp, "os-tree")
	if err := makeTree(tree, files); err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	rootKiB := (rootEnd + 1 - rootStart) * sector / kib
	return run(ctx, env, "mkfs.ext4", "-q", "-F", "-L", "root",
		"-E", "offset="+strconv.FormatInt(rootStart*sector, 10),
		"-d", tree, path, strconv.FormatInt(rootKiB, 10)+"k")
}

// words make the text files: a small vocabulary, like source and
// documentation, so they compress about as well as real ones (3-4x).
var words = []string{
	"the", "of", "and", "to", "in", "is", "for", "that", "with", "on",
	"config", "return", "error", "file", "value", "system", "kernel", "package",
	"func", "struct", "int", "string", "if", "else", "while", "static", "void",
	"usr", "lib", "share", "doc", "license", "version", "copyright", "free",
	"software", "module", "device", "driver", "buffer", "memory", "page",
}

// makeTree writes about total bytes of files under dir: two thirds text
// (4 KiB to 512 KiB each) and one third random binaries (64 KiB to 4 MiB),
// in a few dozen directories. The content depends only on total.
func makeTree(dir string, total int64) error {
	rng := rand.New(rand.NewPCG(uint64(total), 7))
	bin := rand.NewChaCha8(seed("tree"))
	// A text pool that files take slices of: cheap to make, same ratio.
	var pool []byte
	for len(pool) < 2<<20 {
		pool = append(pool, words[rng.IntN(len(words))]...)
		if rng.IntN(12) == 0 {
			pool = append(pool, '\n')
		} else {
			pool = append(pool, ' ')
		}
	}
	buf := make([]byte, 4*mib)
	for i, done := 0, int64(0); done < total; i++ {
		var sub string
		var n int64
		text := i%3 != 2
		if text {
			sub = filepath.Join("usr", "share", "doc", fmt.Sprintf("pkg%02d", i%40))
			n = 4*kib + rng.Int64N(508*kib)
		} else {
			sub = filepath.Join("usr", "lib", fmt.Sprintf("lib%02d", i%20))
			n = 64*kib + rng.Int64N(4*mib-64*kib)
		}
		n = min(n, total-done)
		d := filepath.Join(dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		var data []byte
		if text {
			off := rng.Int64N(int64(len(pool)) - n%int64(len(pool)) + 1)
			for int64(len(data)) < n {
				data = append(data, pool[off:min(int64(len(pool)), off+n-int64(len(data)))]...)
				off = 0
			}
		} else {
			data = buf[:n]
			bin.Read(data)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d", i)), data, 0o644); err != nil {
			return err
		}
		done += n
	}
	return nil
}
