package parallels

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

const seeds = "../../testdata/parallels"

// variants are the cluster sizes qemu-img makes images in: its default
// (1 MiB), small and large powers of two, and one of 7 sectors.
var variants = []formattest.Variant{
	{Name: "default"},
	{Name: "4k", Args: []string{"-o", "cluster_size=4k"}},
	{Name: "64k", Args: []string{"-o", "cluster_size=64k"}},
	{Name: "3584", Args: []string{"-o", "cluster_size=3584"}},
	{Name: "2M", Args: []string{"-o", "cluster_size=2M"}},
}

func TestConformance(t *testing.T) {
	formattest.Run(t, Name, variants, formattest.Options{})
	formattest.RunEmptyHuge(t, Name, "2T", variants[:1], formattest.Options{})
}

// makeImage creates a parallels image of size with options opts and runs
// the qemu-io commands cmds on it; it returns its path.
func makeImage(t *testing.T, dir, opts, size string, cmds ...string) string {
	t.Helper()
	path := filepath.Join(dir, "img.hds")
	var extra []string
	if opts != "" {
		extra = []string{"-o", opts}
	}
	formattest.Create(t, path, Name, size, extra...)
	formattest.QemuIO(t, Name, path, cmds...)
	return path
}

// TestWrittenOutOfOrder: clusters qemu allocates in the order they are
// written, so the catalog is not monotonic and partial clusters hold
// zeros around the data; info, map and bytes match qemu-img's.
func TestWrittenOutOfOrder(t *testing.T) {
	formattest.RequireQemu(t)
	for _, opts := range []string{"", "cluster_size=4k", "cluster_size=3584"} {
		t.Run(opts, func(t *testing.T) {
			path := makeImage(t, t.TempDir(), opts, "9M",
				"write -P 0x11 5M 4097", "write -P 0x22 0 512", "write -P 0x33 5M 1",
				"write -P 0x44 8M 1M", "write -z 1M 64k", "write -P 0x55 1536k 3k")
			formattest.Check(t, path, formattest.Options{})
		})
	}
}

func put32(d []byte, off int, v uint32) { binary.LittleEndian.PutUint32(d[off:], v) }
func put64(d []byte, off int, v uint64) { binary.LittleEndian.PutUint64(d[off:], v) }

// toSectors rewrites an image qemu made ("WithouFreSpacExt", catalog in
// clusters) in the old format: "WithoutFreeSpace", catalog in sectors.
func toSectors(d []byte) []byte {
	copy(d, magicSectors)
	tracks := binary.LittleEndian.Uint32(d[hdrTracks:])
	n := int(binary.LittleEndian.Uint32(d[hdrBATEntries:]))
	for i := range n {
		off := headerSize + entrySize*i
		put32(d, off, binary.LittleEndian.Uint32(d[off:])*tracks)
	}
	return d
}

// withExtension appends a format extension cluster holding a dirty
// bitmap feature (its L1 entries: all clear, all set and a cluster of
// bits appended after it) and points ext_off at it.
func withExtension(d []byte) []byte {
	le := binary.LittleEndian
	cs := int(le.Uint32(d[hdrTracks:])) * sectorSize
	sectors := le.Uint64(d[hdrNbSectors:])
	d = append(d, make([]byte, (cs-len(d)%cs)%cs)...)
	extOff := len(d)
	ext := make([]byte, cs)
	le.PutUint64(ext, extMagic)
	pos := extHeaderLen
	// Granularity 1 sector: one bit per sector, in 64-bit words.
	words := (int(sectors)-1)/64 + 1
	l1 := (words*8 + cs - 1) / cs
	le.PutUint64(ext[pos:], featDirtyBitmap)
	le.PutUint32(ext[pos+16:], uint32(bitmapFeatLen+8*l1))
	f := ext[pos+featHeaderLen:]
	le.PutUint64(f, sectors)
	copy(f[8:24], "0123456789abcdef")
	le.PutUint32(f[24:], 1)
	le.PutUint32(f[28:], uint32(l1))
	bitsAt := extOff + cs
	for i := range l1 {
		le.PutUint64(f[bitmapFeatLen+8*i:], uint64(i%3)) // 0, 1, then a cluster
		if i%3 == 2 {
			le.PutUint64(f[bitmapFeatLen+8*i:], uint64(bitsAt/sectorSize))
		}
	}
	sum := md5.Sum(ext[extHeaderLen:])
	copy(ext[8:], sum[:])
	d = append(d, ext...)
	d = append(d, bytes.Repeat([]byte{0xa5}, cs)...) // the bitmap's one cluster of bits
	put64(d, hdrExtOff, uint64(extOff/sectorSize))
	return d
}

// TestVariantsQemuReads: the old magic, a zero data_off, the in-use flag
// and a format extension are read as qemu-img reads them (these are
// valid images, which qemu-img opens read-only).
func TestVariantsQemuReads(t *testing.T) {
	dir := formattest.QemuDir(t)
	orig := makeImage(t, dir, "cluster_size=64k", "3M", "write -P 0x5a 64k 100k", "write -P 0x6b 1M 1", "write -P 0x7c 0 4k")
	data := formattest.ReadFile(t, orig)
	for _, c := range []struct {
		name  string
		patch func(d []byte) []byte
	}{
		{"sectors", toSectors},
		{"sectors-no-data-off", func(d []byte) []byte { put32(toSectors(d), hdrDataOff, 0); return d }},
		{"in-use", func(d []byte) []byte { put32(d, hdrInUse, inUseMagic); return d }},
		{"extension", withExtension},
		{"sectors-extension", func(d []byte) []byte { return withExtension(toSectors(d)) }},
		{"disk-past-catalog", func(d []byte) []byte { put64(d, hdrNbSectors, 8192); return d }},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := formattest.Patched(t, t.TempDir(), "p.hds", data, c.patch)
			formattest.Check(t, path, formattest.Options{})
			if c.name != "disk-past-catalog" {
				if out := formattest.QemuCompareOutput(t, orig, path); !bytes.Contains(out, []byte("Images are identical")) {
					t.Errorf("qemu-img compare: %s", out)
				}
			}
		})
	}
}

func TestProbe(t *testing.T) {
	for _, c := range []struct {
		data string
		want bool
	}{
		{magicExt + "\x02\x00\x00\x00", true},
		{magicSectors + "\x02\x00\x00\x00", true},
		{magicSectors + "\x01\x00\x00\x00", false},
		{magicSectors + "\x02\x00\x00", false},
		{"WithoutFreeSpacE\x02\x00\x00\x00", false},
	} {
		if got := Probe(&formattest.MemFile{Data: []byte(c.data)}); got != c.want {
			t.Errorf("Probe(%q) = %v", c.data, got)
		}
	}
}

// TestSeeds checks that the seeds open, so the fuzzer starts from valid
// files. With PARALLELS_WRITE_SEEDS=1 it first writes them with qemu-img.
func TestSeeds(t *testing.T) {
	if os.Getenv("PARALLELS_WRITE_SEEDS") == "1" {
		writeSeeds(t)
	}
	for _, s := range formattest.Seeds(t, seeds) {
		img, err := formattest.OpenMem(t, Name, s.Data)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
			continue
		}
		if err := formattest.Validate(img); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		img.Close()
	}
}

func writeSeeds(t *testing.T) {
	path := makeImage(t, formattest.QemuDir(t), "cluster_size=4k", "64k", "write -P 0x5a 12k 4k", "write -P 0x6b 1000 100", "write -P 0x7c 40k 5k")
	data := formattest.ReadFile(t, path)
	formattest.WriteFiles(t, seeds, map[string][]byte{
		"data.hds":      data,
		"sectors.hds":   toSectors(bytes.Clone(data)),
		"extension.hds": withExtension(bytes.Clone(data)),
	})
}

func FuzzParallels(f *testing.F) { formattest.FuzzOpen(f, Name, seeds) }

// TestMutatedSeeds exercises the reader on seeds with random bytes
// changed, mostly in the header.
func TestMutatedSeeds(t *testing.T) {
	formattest.ExerciseMutatedHeaders(t, Name, seeds)
}

// BenchmarkOpenEmpty1TiB measures open, info and a full extent walk of an
// empty 1 TiB image: metadata time only (a 4 MiB catalog).
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, Name, "1T"), "", 1)
}

// TestSeedContents reads data.hds against the bytes qemu-io wrote.
func TestSeedContents(t *testing.T) {
	want := make([]byte, 64<<10)
	copy(want[12<<10:], bytes.Repeat([]byte{0x5a}, 4<<10))
	copy(want[1000:], bytes.Repeat([]byte{0x6b}, 100))
	copy(want[40<<10:], bytes.Repeat([]byte{0x7c}, 5<<10))
	for _, name := range []string{"data.hds", "sectors.hds", "extension.hds"} {
		img, err := formattest.OpenMem(t, Name, formattest.ReadSeed(t, seeds, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]byte, len(want))
		if n, err := img.ReadAt(got, 0); n != len(got) || err != nil {
			t.Fatalf("%s: ReadAt = %d, %v", name, n, err)
		}
		if i := formattest.FirstDiff(got, want); i >= 0 {
			t.Errorf("%s: byte %d differs", name, i)
		}
		var data int64
		format.Walk(img, 0, func(e format.Extent) error {
			if e.Status == format.Data {
				data += e.Length
			}
			return nil
		})
		if data != 4*4096 {
			t.Errorf("%s: %d bytes of data extents, want 4 clusters", name, data)
		}
		img.Close()
	}
}

// hostile lets the case table list its fields unkeyed.
type hostile formattest.Hostile

// extAt returns the file offset of the format extension of d.
func extAt(d []byte) int { return int(binary.LittleEndian.Uint64(d[hdrExtOff:])) * sectorSize }

// resum recomputes the format extension's checksum after a patch.
func resum(d []byte) []byte {
	e := extAt(d)
	cs := int(binary.LittleEndian.Uint32(d[hdrTracks:])) * sectorSize
	sum := md5.Sum(d[e+extHeaderLen : e+cs])
	copy(d[e+8:], sum[:])
	return d
}

// feature returns the offset of the first feature's data in extension.hds.
func feature(d []byte) int { return extAt(d) + extHeaderLen + featHeaderLen }

func TestHostile(t *testing.T) {
	cases := []hostile{
		{"wrong magic", "data.hds", func(d []byte) []byte { d[0] = 'w'; return d }, "wrong image type", formattest.AtOpen},
		{"version 3", "data.hds", func(d []byte) []byte { put32(d, hdrVersion, 3); return d }, "wrong image type", formattest.AtOpen},
		{"truncated header", "data.hds", func(d []byte) []byte { return d[:40] }, "header", formattest.AtOpen},
		{"zero tracks", "data.hds", func(d []byte) []byte { put32(d, hdrTracks, 0); return d }, "tracks at offset 28: zero sectors per cluster", formattest.AtOpen},
		{"huge tracks", "data.hds", func(d []byte) []byte { put32(d, hdrTracks, 1<<30); return d }, "tracks at offset 28", formattest.AtOpen},
		{"huge catalog", "data.hds", func(d []byte) []byte { put32(d, hdrBATEntries, 0xffffffff); return d }, "bat_entries at offset 32", formattest.AtOpen},
		{"catalog past EOF", "data.hds", func(d []byte) []byte { put32(d, hdrBATEntries, 1<<20); return d }, "bat_entries (catalog)", formattest.AtOpen},
		{"huge disk", "data.hds", func(d []byte) []byte { put64(d, hdrNbSectors, 1<<60); return d }, "nb_sectors at offset 36", formattest.AtOpen},
		{"cluster past EOF", "data.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 100); return d }, "catalog entry 3 at offset 76: cluster at sector 800", formattest.AtOpen},
		{"cluster at 2^32-1", "data.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 0xffffffff); return d }, "catalog entry 3", formattest.AtOpen},
		{"sectors cluster at 2^32-1", "sectors.hds", func(d []byte) []byte { put32(d, headerSize+4*3, 0xffffffff); return d }, "catalog entry 3", formattest.AtOpen},
		{"last cluster cut", "data.hds", func(d []byte) []byte { return d[:len(d)-1] }, "extends past the end of the file", formattest.AtOpen},
		{"ext_off past EOF", "data.hds", func(d []byte) []byte { put64(d, hdrExtOff, 1000); return d }, "ext_off at offset 56", formattest.AtOpen},
		{"ext_off huge", "data.hds", func(d []byte) []byte { put64(d, hdrExtOff, 1<<62); return d }, "ext_off at offset 56", formattest.AtOpen},
		{"ext cluster cut", "extension.hds", func(d []byte) []byte { return d[:extAt(d)+100] }, "ext_off (format extension)", formattest.AtOpen},
		{"ext magic", "extension.hds", func(d []byte) []byte { d[extAt(d)]++; return d }, "format extension magic", formattest.AtOpen},
		{"ext checksum", "extension.hds", func(d []byte) []byte { d[extAt(d)+100]++; return d }, "format extension checksum", formattest.AtOpen},
		{"feature flags", "extension.hds", func(d []byte) []byte { d[extAt(d)+extHeaderLen+8] = 1; return resum(d) }, "has flags 0x1", formattest.AtOpen},
		{"feature unknown", "extension.hds", func(d []byte) []byte { d[extAt(d)+extHeaderLen]++; return resum(d) }, "unknown feature", formattest.AtOpen},
		{"feature overrun", "extension.hds", func(d []byte) []byte { put32(d, extAt(d)+extHeaderLen+16, 1<<20); return resum(d) }, "overrun the cluster", formattest.AtOpen},
		{"no end marker", "extension.hds", func(d []byte) []byte {
			put32(d, extAt(d)+extHeaderLen+16, 4096-extHeaderLen-featHeaderLen) // the bitmap's data fills the cluster
			return resum(d)
		}, "no end-of-features marker", formattest.AtOpen},
		{"bitmap size", "extension.hds", func(d []byte) []byte { put64(d, feature(d), 7); return resum(d) }, "bitmap of 7 sectors on a disk of 128", formattest.AtOpen},
		{"bitmap granularity", "extension.hds", func(d []byte) []byte { put32(d, feature(d)+24, 3); return resum(d) }, "granularity of 3 sectors", formattest.AtOpen},
		{"bitmap l1 size", "extension.hds", func(d []byte) []byte { put32(d, feature(d)+28, 1000); return resum(d) }, "l1_size 1000 overruns", formattest.AtOpen},
		{"bitmap l1 entry", "extension.hds", func(d []byte) []byte { put64(d, feature(d)+bitmapFeatLen, 1<<40); return resum(d) }, "l1 entry 0", formattest.AtOpen},
		{"bitmap twice", "extension.hds", func(d []byte) []byte {
			f := feature(d)
			size := int(binary.LittleEndian.Uint32(d[f-8:]))
			first := bytes.Clone(d[f-featHeaderLen : f+size])
			copy(d[f+((size+7)&^7):], first)
			return resum(d)
		}, "appears twice", formattest.AtOpen},
	}
	formattest.RunHostile(t, Name, seeds, cases)
}

// TestHugeDiskSmallCatalog: a disk far larger than its catalog maps the
// rest as one unallocated run, at once (the fuzzer found a walk cluster
// by cluster).
func TestHugeDiskSmallCatalog(t *testing.T) {
	d := formattest.ReadSeed(t, seeds, "data.hds")
	put64(d, hdrNbSectors, 1<<46) // 32 PiB of 4 KiB clusters, a 16-entry catalog
	img, err := formattest.OpenMem(t, Name, d)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	e, err := img.Extent(1 << 20)
	if err != nil || e.Status != format.Unallocated || e.End() != img.Size() {
		t.Fatalf("Extent = %+v, %v", e, err)
	}
	formattest.ExerciseImage(t, img)
}
