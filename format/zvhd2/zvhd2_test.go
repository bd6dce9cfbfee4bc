package zvhd2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/internal/vhdspec"
	"github.com/diskimg/diskimg/format/internal/vhdspec/vhdspectest"
)

func openVector(t testing.TB, name string) *Image {
	t.Helper()
	img, err := format.Open(vhdspectest.VectorPath(t, name), "", format.Policy{Untrusted: true})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	z, ok := format.TopLayer(img).(*Image)
	if !ok {
		t.Fatalf("%s probed as %s", name, img.Info().Format)
	}
	return z
}

func openBytes(b []byte) (*Image, error) {
	return Open(&formattest.MemFile{Data: b, Path: "/nonexistent/x.zvhd2"})
}

const mib = 1 << 20

func TestT1Variants(t *testing.T) {
	raw := vhdspectest.ReadVector(t, "t1.raw")
	size := int64(len(raw))
	for _, v := range []struct {
		file   string
		method string
		dense  bool
	}{{"t1.zvhd2", "zstd", false}, {"t1z.zvhd2", "zlib", false}, {"t1d.zvhd2", "zstd", true}} {
		t.Run(v.file, func(t *testing.T) {
			img := openVector(t, v.file)
			defer img.Close()
			if img.Size() != size {
				t.Fatalf("size %d, want %d", img.Size(), size)
			}
			if got := vhdspectest.ReadAll(t, img); !bytes.Equal(got, raw) {
				t.Fatalf("bytes differ from t1.raw")
			}
			vhdspectest.WantExtents(t, img, format.Data, 2*mib, 4*mib, size)
			sp := img.Info().Specific.(*Specific)
			if sp.Compression != v.method || sp.DenseIndex != v.dense || sp.CurrentSize != 1<<30 ||
				sp.BlockSize != vhdspec.BlockSize || sp.Version != 1 || sp.StoredBlocks != 2 || sp.CreatorVersion != "1.4" {
				t.Errorf("format-specific %+v", sp)
			}
			if img.Info().VirtualSize != size || img.Info().ClusterSize != vhdspec.BlockSize || img.Info().Format != Name {
				t.Errorf("info %+v", img.Info())
			}
			checkReadAtEnd(t, img)
		})
	}
}

func checkReadAtEnd(t *testing.T, img format.Image) {
	t.Helper()
	buf := make([]byte, 4096)
	if n, err := img.ReadAt(buf, img.Size()-100); n != 100 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
	if n, err := img.ReadAt(buf, img.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v", n, err)
	}
}

// TestT1Descriptor checks every trailer field of t1.zvhd2 against the
// values docs/ZVHD2.md gives for the driver's output, and the index entries.
func TestT1Descriptor(t *testing.T) {
	file := vhdspectest.ReadVector(t, "t1.zvhd2")
	img := openVector(t, "t1.zvhd2")
	defer img.Close()
	d := *img.d
	h := vhdspec.DecodeDescriptor(file)
	want := vhdspec.Descriptor{
		Cookie: [8]byte{'z', '2', 's', 't', 'r', 'm'}, Features: 2, FormatVersion: 0x00010000,
		DataOffset: ^uint64(0), Timestamp: h.Timestamp, CreatorApp: [4]byte{'t', 'a', 'p'},
		CreatorVersion: 0x00010004, CreatorOS: 0, OrigSize: 5243392, CurrSize: 1 << 30,
		Geometry: 0x00960411, DiskType: 4, Checksum: d.Checksum, UUID: h.UUID,
		Version: 1, BlockSize: 2 * mib, MaxBlkNum: 3,
		IndexLBA: 2113536, BitmapLBA: 2637824, IndexSize: 524288, BitmapSize: 4096,
		IndexSegSize: 524288, BitmapSegSize: 4096, IndexSegNum: 1, BitmapSegNum: 1,
		NonZeroBlkNum: 2, IndexDense: 0, CompressMethod: vhdspec.MethodZstd,
	}
	if d != want {
		t.Errorf("trailer\n got %+v\nwant %+v", d, want)
	}
	if d.Checksum != vhdspec.DescriptorChecksum(file[len(file)-vhdspec.SlotSize:]) {
		t.Errorf("checksum %#x", d.Checksum)
	}
	// The header at 0 is the same before the data is known.
	if h.NonZeroBlkNum != 0 || h.IndexLBA != 0 || h.OrigSize != d.OrigSize || h.Checksum != vhdspec.DescriptorChecksum(file) {
		t.Errorf("header %+v", h)
	}
	if h.UUID == ([16]byte{}) || vhdspec.FormatUUID(h.UUID) != img.Info().Specific.(*Specific).UUID {
		t.Errorf("uuid %x / %s", h.UUID, img.Info().Specific.(*Specific).UUID)
	}
	es := img.entries
	if len(es) != 2 || es[0].Offset != 4096 || es[0].Block != 0 || es[0].Length != 2101248 ||
		es[1].Offset != 4096+2101248 || es[1].Block != 2 || es[1].Length != 4096 {
		t.Errorf("index entries %+v", es)
	}
	// Re-encoding the decoded trailer gives its bytes back.
	b := make([]byte, vhdspec.DescriptorSize)
	d.Encode(b)
	if !bytes.Equal(b, file[len(file)-vhdspec.SlotSize:][:vhdspec.DescriptorSize]) {
		t.Errorf("Encode(DecodeDescriptor(trailer)) differs from the trailer")
	}
	js, err := json.Marshal(img.Info().Specific)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(js, &m)
	for _, k := range []string{"current-size", "block-size", "compression", "zvhd2-version", "dense-index", "stored-blocks", "uuid", "creator-version", "timestamp"} {
		if _, ok := m[k]; !ok {
			t.Errorf("format-specific lacks %q: %s", k, js)
		}
	}
}

// TestGeometry pins the CHS geometry the descriptors store: every branch
// of the specification's computation (17, 31, 63 and 255 sectors a
// track, the 65535×16×255 cap) and the cut of the sector count to 32
// bits. For 10 MiB, 200 MiB, 1 GiB and 40 GiB qemu-img writes the same
// heads and sectors a track into a VHD, and one cylinder more: it rounds
// the disk up to whole cylinders where the specification rounds down.
func TestGeometry(t *testing.T) {
	for _, c := range []struct {
		size uint64
		want uint32
	}{
		{5243392, 0x00960411}, {1024, 0x00000411}, {3 * mib, 0x005a0411}, {68723684864, 0x808210ff},
		{10 << 20, 0x012d0411}, {200 << 20, 0x0339101f}, {1 << 30, 0x0820103f}, {40 << 30, 0x505010ff},
		{200 << 30, 0xffff10ff}, {2<<40 + 1<<20, 0x001e0411},
	} {
		if got := vhdspec.PackedGeometry(c.size); got != c.want {
			t.Errorf("Geometry(%d) = %#08x, want %#08x", c.size, got, c.want)
		}
	}
}

func TestT3AllZero(t *testing.T) {
	img := openVector(t, "t3.zvhd2")
	defer img.Close()
	raw := vhdspectest.ReadVector(t, "t3.raw")
	if img.Size() != int64(len(raw)) {
		t.Fatalf("size %d", img.Size())
	}
	vhdspectest.WantExtents(t, img, format.Zero, 3*mib)
	if !bytes.Equal(vhdspectest.ReadAll(t, img), raw) {
		t.Errorf("bytes differ from t3.raw")
	}
	d := *img.d
	if d.NonZeroBlkNum != 0 || d.IndexSize != 0 || d.IndexLBA != 8192 || d.BitmapLBA != 8192 || d.BitmapSegNum != 1 || d.MaxBlkNum != 2 {
		t.Errorf("descriptor %+v", d)
	}
}

func TestT4Tiny(t *testing.T) {
	img := openVector(t, "t4.zvhd2")
	defer img.Close()
	raw := vhdspectest.ReadVector(t, "t4.raw")
	want := append(raw, make([]byte, 24)...) // orig_size rounds 1000 up to 1024
	if img.Size() != 1024 {
		t.Fatalf("size %d", img.Size())
	}
	if !bytes.Equal(vhdspectest.ReadAll(t, img), want) {
		t.Errorf("bytes differ from t4.raw")
	}
	vhdspectest.WantExtents(t, img, format.Data, 1024)
	if d := *img.d; d.Geometry != 0x411 || d.MaxBlkNum != 1 || d.CurrSize != 1<<30 {
		t.Errorf("descriptor %+v", d)
	}
}

// t2Blocks are the blocks of t2.zvhd2 that hold data, in the order of
// t2-blocks.bin's 16 KiB chunks.
var t2Blocks = []int64{0, 32767, 32768, 32770}

func TestT2TwoSegments(t *testing.T) {
	img := openVector(t, "t2.zvhd2")
	defer img.Close()
	const size = 68723684864
	if img.Size() != size {
		t.Fatalf("size %d", img.Size())
	}
	d := *img.d
	if d.BitmapSegNum != 2 || d.IndexSegNum != 1 || d.NonZeroBlkNum != 4 || d.MaxBlkNum != 32771 || d.CurrSize != 65<<30 {
		t.Errorf("descriptor %+v", d)
	}
	vhdspectest.WantExtents(t, img, format.Data, 2*mib, 32767*2*mib, 32769*2*mib, 32770*2*mib, size)
	chunks := vhdspectest.ReadVector(t, "t2-blocks.bin")
	for i, b := range t2Blocks {
		off := b * vhdspec.BlockSize
		n := min(vhdspec.BlockSize, size-off)
		got := make([]byte, n)
		if m, err := img.ReadAt(got, off); int64(m) != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, m, err)
		}
		want := make([]byte, n)
		copy(want, chunks[i*16384:(i+1)*16384])
		if !bytes.Equal(got, want) {
			t.Errorf("block %d differs from t2-blocks.bin chunk %d", b, i)
		}
	}
	// Samples of the zero runs, including a read across a data/zero edge.
	buf := make([]byte, 64<<10)
	for _, off := range []int64{2 * mib, 1 << 30, 32767*2*mib - 65536 + 12345, 32769 * 2 * mib} {
		if _, err := img.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, make([]byte, len(buf))) {
			t.Errorf("offset %d: data where zeros are expected", off)
		}
	}
	checkReadAtEnd(t, img)
}

// TestBuilt reads images made by the test writer: dense and sparse index,
// zstd and zlib, many runs, to cover what the vectors do not.
func TestBuilt(t *testing.T) {
	blocks, want := vhdspectest.ManyRuns()
	for _, method := range []uint8{vhdspec.MethodZstd, vhdspec.MethodZlib} {
		for _, dense := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s dense=%v", vhdspec.Method(method), dense), func(t *testing.T) {
				img, err := openBytes(spec{origSize: vhdspectest.ManyRunsSize, method: method, dense: dense, blocks: blocks}.build(t))
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				vhdspectest.WantManyRuns(t, img, want)
			})
		}
	}
}

func TestProbe(t *testing.T) {
	for name, want := range map[string]bool{"t1.zvhd2": true, "t1.zvhd": false, "t1.raw": false} {
		f, err := format.OpenFile(vhdspectest.VectorPath(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := vhdspec.HasCookie(f, vhdspec.CookieZVHD2); got != want {
			t.Errorf("%s: probe %v", name, got)
		}
		f.Close()
	}
	_, err := openBytes(vhdspectest.ReadVector(t, "t1.zvhd"))
	if !errors.Is(err, format.ErrWrongType) {
		t.Errorf("ZVHD opened as ZVHD2: %v", err)
	}
}

// BenchmarkOpenEmpty1TiB opens an empty 1 TiB image (16 bitmap segments,
// no index), takes its info and walks its whole extent map.
func BenchmarkOpenEmpty1TiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "empty.zvhd2")
	formattest.WriteFile(b, path, spec{origSize: 1 << 40, method: vhdspec.MethodZstd}.build(b))
	formattest.BenchOpenEmpty(b, path, Name, 1)
}

// BenchmarkT2 opens the 64 GiB reference image t2.zvhd2, walks its extent
// map and reads every stored block in full.
func BenchmarkT2(b *testing.B) {
	path := vhdspectest.VectorPath(b, "t2.zvhd2")
	buf := make([]byte, vhdspec.BlockSize)
	for b.Loop() {
		img, err := format.Open(path, Name, format.Policy{})
		if err != nil {
			b.Fatal(err)
		}
		calls := 0
		err = format.Walk(img, 0, func(e format.Extent) error {
			calls++
			if e.Status != format.Data {
				return nil
			}
			for off := e.Start; off < e.End(); off += vhdspec.BlockSize {
				n := min(vhdspec.BlockSize, e.End()-off)
				if _, err := img.ReadAt(buf[:n], off); err != nil && err != io.EOF {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if calls != 5 {
			b.Fatalf("%d extents, want 5", calls)
		}
		img.Close()
	}
}

// Every ZVHD2 file with data holds a 512 KiB index segment, mostly zeros:
// too large for a seed. Seeds are kept sparse, a record a non-zero
// sector; the fuzz target runs both the input as it is and its expansion.
var sparse = formattest.SparseSeed{Magic: "zvhd2-sparse\n", Limit: 8 << 20, Grain: 512, Run: 512}

// fuzzExpanded fuzzes fn on the seeds' mutations, each as it is and
// expanded.
func fuzzExpanded(f *testing.F, fn func(t *testing.T, data []byte)) {
	formattest.AddSeeds(f, "../../testdata/zvhd2")
	f.Fuzz(func(t *testing.T, data []byte) {
		fn(t, data)
		if b := sparse.Expand(data); b != nil {
			fn(t, b)
		}
	})
}

func FuzzZVHD2(f *testing.F) {
	fuzzExpanded(f, func(t *testing.T, data []byte) { formattest.Exercise(t, data, Name) })
}

// FuzzCheck runs the check, on the opened image and through CheckFile.
func FuzzCheck(f *testing.F) {
	fuzzExpanded(f, func(t *testing.T, data []byte) { vhdspectest.Exercise(t, Name, data) })
}

// TestSeeds checks that the seeds expand to images that open and read, so
// the fuzzer starts from valid files. With ZVHD2_WRITE_SEEDS=1 it first
// regenerates them from the reference vectors.
func TestSeeds(t *testing.T) {
	dir := "../../testdata/zvhd2"
	if os.Getenv("ZVHD2_WRITE_SEEDS") == "1" {
		writeSeeds(t, dir)
	}
	n := 0
	for _, s := range formattest.Seeds(t, dir) {
		b := sparse.Expand(s.Data)
		if b == nil {
			continue
		}
		n++
		img, err := openBytes(b)
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
			continue
		}
		if err := format.Walk(img, 0, func(format.Extent) error { return nil }); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		if err := openAndRead(b); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
		img.Close()
	}
	if n == 0 {
		t.Errorf("no seeds in %s", dir)
	}
}

func writeSeeds(t *testing.T, dir string) {
	blocks := map[uint32][]byte{0: []byte("hello"), 2: bytes.Repeat([]byte{1, 2, 3}, 300)}
	sparse.WriteSeeds(t, dir, map[string][]byte{
		"t2.sparse":          vhdspectest.ReadVector(t, "t2.zvhd2"),
		"t3.sparse":          vhdspectest.ReadVector(t, "t3.zvhd2"),
		"t4.sparse":          vhdspectest.ReadVector(t, "t4.zvhd2"),
		"zlib-dense.sparse":  spec{origSize: 5*mib + 512, method: vhdspec.MethodZlib, dense: true, blocks: blocks}.build(t),
		"zstd-sparse.sparse": spec{origSize: 5*mib + 512, method: vhdspec.MethodZstd, blocks: blocks}.build(t),
	})
}
