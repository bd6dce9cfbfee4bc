package vdi_test

// Differencing VDI images (VirtualBox snapshots, image type 4), which
// qemu-img cannot make: a test-only writer lays one out as VirtualBox's
// VDICore.h describes it over a parent qemu-img made, and the tests read
// the chain against a raw oracle built alongside.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/vdi"
)

// VDI 1.1 header fields the writer sets (offsets in the file).
const (
	offSignature  = 0x40
	offVersion    = 0x44
	offHeaderSize = 0x48
	offType       = 0x4c
	offBlocks     = 0x154
	offData       = 0x158
	offSectorSize = 0x168
	offDiskSize   = 0x170
	offBlockSize  = 0x178
	offNBlocks    = 0x180
	offAllocated  = 0x184
	offUUID       = 0x188
	offModify     = 0x198
	offLink       = 0x1a8
	offParentMod  = 0x1b8
	blockSize     = 1 << 20
	blockFree     = 0xffffffff // the parent's block
	blockZero     = 0xfffffffe // zeros
)

// vdiDiff describes a differencing VDI: its own UUID, the parent's UUIDs,
// the writes it holds (each block a write touches is stored whole, the
// rest of it copied from the parent, as VirtualBox writes) and the blocks
// it discarded (zeros).
type vdiDiff struct {
	size             int64
	uuid, link, pmod [16]byte
	writes           []formattest.Write
	zero             []int64
}

func newUUID(t testing.TB) [16]byte {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	return u
}

// uuids returns the creation and modification UUIDs of the VDI at path.
func uuids(t testing.TB, path string) (create, modify [16]byte) {
	t.Helper()
	b := formattest.ReadFile(t, path)
	return [16]byte(b[offUUID:]), [16]byte(b[offModify:])
}

// uuidText shows a UUID as VirtualBox does.
func uuidText(u [16]byte) string {
	return fmt.Sprintf("{%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x}", u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8:10], u[10:])
}

// writeVDIDiff writes the differencing VDI d describes at path, whose
// parent's guest bytes are the raw file parentRaw: header, block map at
// 1 MiB, blocks from 2 MiB on, in the order their first write comes.
func writeVDIDiff(t testing.TB, path, parentRaw string, d vdiDiff) {
	t.Helper()
	blocks := (d.size + blockSize - 1) / blockSize
	bmapLen := (blocks*4 + blockSize - 1) / blockSize * blockSize
	hdr := make([]byte, 512)
	copy(hdr, "<<< Oracle VM VirtualBox Disk Image >>>\n")
	le := binary.LittleEndian
	le.PutUint32(hdr[offSignature:], 0xbeda107f)
	le.PutUint32(hdr[offVersion:], 0x00010001)
	le.PutUint32(hdr[offHeaderSize:], 0x190)
	le.PutUint32(hdr[offType:], 4)
	le.PutUint32(hdr[offBlocks:], blockSize)
	le.PutUint32(hdr[offData:], uint32(blockSize+bmapLen))
	le.PutUint32(hdr[offSectorSize:], 512)
	le.PutUint64(hdr[offDiskSize:], uint64(d.size))
	le.PutUint32(hdr[offBlockSize:], blockSize)
	le.PutUint32(hdr[offNBlocks:], uint32(blocks))
	copy(hdr[offUUID:], d.uuid[:])
	modify := newUUID(t)
	copy(hdr[offModify:], modify[:])
	copy(hdr[offLink:], d.link[:])
	copy(hdr[offParentMod:], d.pmod[:])

	bmap := make([]uint32, blocks)
	for i := range bmap {
		bmap[i] = blockFree
	}
	for _, b := range d.zero {
		bmap[b] = blockZero
	}
	src, err := os.Open(parentRaw)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var next uint32
	for _, w := range d.writes {
		for g := w.Off; g < w.Off+int64(len(w.Data)); g = (g/blockSize + 1) * blockSize {
			b := g / blockSize
			if bmap[b] == blockZero {
				t.Fatalf("block %d is written and zero", b)
			}
			if bmap[b] != blockFree {
				continue
			}
			// The block, copied from the parent (zeros past its end).
			buf := make([]byte, blockSize)
			src.ReadAt(buf, b*blockSize)
			if _, err := f.WriteAt(buf, blockSize+bmapLen+int64(next)*blockSize); err != nil {
				t.Fatal(err)
			}
			bmap[b] = next
			next++
		}
	}
	for _, w := range d.writes {
		for o := int64(0); o < int64(len(w.Data)); {
			g := w.Off + o
			b := g / blockSize
			n := min(int64(len(w.Data))-o, (b+1)*blockSize-g)
			if _, err := f.WriteAt(w.Data[o:o+n], blockSize+bmapLen+int64(bmap[b])*blockSize+g-b*blockSize); err != nil {
				t.Fatal(err)
			}
			o += n
		}
	}
	le.PutUint32(hdr[offAllocated:], next)
	raw := make([]byte, bmapLen)
	for i, e := range bmap {
		le.PutUint32(raw[i*4:], e)
	}
	if _, err := f.WriteAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(raw, blockSize); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(blockSize + bmapLen + int64(next)*blockSize); err != nil {
		t.Fatal(err)
	}
}

// vdiOverlay makes the raw oracle of a child: its parent's oracle with the
// child's writes over it and its discarded blocks zeroed.
func vdiOverlay(t *testing.T, parentRaw, raw string, d vdiDiff) {
	t.Helper()
	var zeros [][2]int64
	for _, b := range d.zero {
		zeros = append(zeros, [2]int64{b * blockSize, min(blockSize, d.size-b*blockSize)})
	}
	formattest.Overlay(t, parentRaw, raw, d.size, zeros, d.writes)
}

func randomBytes(seed, n int64) []byte {
	b := make([]byte, n)
	mrand.New(mrand.NewSource(seed)).Read(b)
	return b
}

// readsLike reads all of img and compares it with the raw file.
func readsLike(t *testing.T, img format.Image, raw string) {
	t.Helper()
	want := formattest.ReadFile(t, raw)
	got := make([]byte, img.Size())
	if n, err := img.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the chain differs from the raw oracle at %d", formattest.FirstDiff(got, want))
	}
}

// TestDifferencing reads differencing VDIs over a qemu-img parent, the
// parent given as Policy.Parents: blocks the child stores, discarded
// blocks, the parent's blocks; a chain of two; and what fails.
func TestDifferencing(t *testing.T) {
	dir := formattest.QemuDir(t)
	other := t.TempDir() // parents need not live beside the child
	const size = 16<<20 + 3*512
	parent := filepath.Join(other, "base.vdi")
	praw := formattest.WithOracle(t, parent, "vdi", size, nil, "write -P 0x11 0 3M", "write -P 0x22 8M 1M", "write -P 0x33 16M 1536")
	pid, pmod := uuids(t, parent)
	child := filepath.Join(dir, "{child}.vdi")
	d := vdiDiff{size: size, uuid: newUUID(t), link: pid, pmod: pmod,
		writes: []formattest.Write{{Off: 512, Data: randomBytes(1, 1024)}, {Off: 5<<20 - 512, Data: randomBytes(2, 4096)}, {Off: 16 << 20, Data: randomBytes(3, 512)}},
		zero:   []int64{8}}
	writeVDIDiff(t, child, praw, d)
	raw := filepath.Join(dir, "child.raw")
	vdiOverlay(t, praw, raw, d)

	// Without the parent: refused at open, naming the UUID and --parent;
	// info's policy opens it and shows the parent's UUID.
	_, err := format.Open(child, "", format.Policy{})
	if err == nil || !strings.Contains(err.Error(), uuidText(pid)) || !strings.Contains(err.Error(), "--parent") {
		t.Fatalf("no parent given: %v", err)
	}
	img, err := format.Open(child, "", format.Policy{DeferBackingErrors: true})
	if err != nil {
		t.Fatal(err)
	}
	spec, ok := img.Info().Specific.(*vdi.Specific)
	if !ok || spec.ParentUUID != uuidText(pid) || spec.UUID != uuidText(d.uuid) || img.Info().Subformat != "differencing" {
		t.Errorf("info %+v", img.Info())
	}
	if format.BackingError(img) == nil {
		t.Error("no backing error")
	}
	img.Close()

	img = formattest.OpenPolicy(t, child, "", format.Policy{Parents: []string{parent}})
	if info := img.Info(); info.BackingFile != parent || info.BackingFormat != "vdi" || info.Backing == nil {
		t.Errorf("info %+v", info)
	}
	if err := formattest.Validate(img); err != nil {
		t.Error(err)
	}
	readsLike(t, img, raw)
	// Blocks 0, 4 and 16 are the child's, block 8 discarded, the rest
	// the parent's: data where qemu-io wrote, zeros elsewhere (a base
	// VDI maps its empty blocks as zero, not unallocated).
	data := func(start, n int64, depth int) formattest.MapRun {
		return formattest.MapRun{Start: start, Length: n, Depth: depth, Present: true, Data: true}
	}
	zero := func(start, n int64, depth int) formattest.MapRun {
		return formattest.MapRun{Start: start, Length: n, Depth: depth, Present: true, Zero: true}
	}
	want := []formattest.MapRun{
		data(0, 1<<20, 0), data(1<<20, 2<<20, 1), zero(3<<20, 1<<20, 1), data(4<<20, 2<<20, 0),
		zero(6<<20, 2<<20, 1), zero(8<<20, 1<<20, 0), zero(9<<20, 7<<20, 1), data(16<<20, 1536, 0),
	}
	if got := formattest.MapRuns(t, img); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("map\n got %v\nwant %v", got, want)
	}

	// A chain of two differencing images; the parents may be given in
	// any order.
	_, cmod := uuids(t, child)
	grand := filepath.Join(dir, "grand.vdi")
	g := vdiDiff{size: size, uuid: newUUID(t), link: d.uuid, pmod: cmod, writes: []formattest.Write{{Off: 2<<20 + 512, Data: randomBytes(4, 512)}, {Off: 9 << 20, Data: randomBytes(5, 2<<20)}}}
	writeVDIDiff(t, grand, raw, g)
	graw := filepath.Join(dir, "grand.raw")
	vdiOverlay(t, raw, graw, g)
	chain := formattest.OpenPolicy(t, grand, "", format.Policy{Parents: []string{parent, child}})
	readsLike(t, chain, graw)
	if e, err := chain.Extent(1 << 20); err != nil || e.Depth != 2 || e.Status != format.Data {
		t.Errorf("Extent(1M) = %+v, %v; want the base's data at depth 2", e, err)
	}

	// The wrong parent, a parent of another format, and no parent at all
	// among those given.
	other2 := filepath.Join(other, "other.vdi")
	formattest.Create(t, other2, "vdi", fmt.Sprint(size))
	if _, err := format.Open(child, "", format.Policy{Parents: []string{other2}}); err == nil || !strings.Contains(err.Error(), "has UUID") {
		t.Errorf("wrong parent: %v", err)
	}
	if _, err := format.Open(child, "", format.Policy{Parents: []string{praw}}); err == nil || !strings.Contains(err.Error(), "not a vdi image") {
		t.Errorf("raw parent: %v", err)
	}
	if _, err := format.Open(grand, "", format.Policy{Parents: []string{child}}); err == nil || !strings.Contains(err.Error(), uuidText(pid)) {
		t.Errorf("grandparent missing: %v", err)
	}
	if _, err := format.Open(child, "", format.Policy{Parents: []string{filepath.Join(other, "gone.vdi")}}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing parent: %v", err)
	}
	if _, err := format.Open(child, "", format.Policy{Parents: []string{parent}, Untrusted: true}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Errorf("untrusted: %v", err)
	}

	// Loops: an image that is its own parent, and two that are each
	// other's.
	self := filepath.Join(dir, "self.vdi")
	sid := newUUID(t)
	writeVDIDiff(t, self, praw, vdiDiff{size: size, uuid: sid, link: sid})
	if _, err := format.Open(self, "", format.Policy{Parents: []string{self}}); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("self loop: %v", err)
	}
	a, b := filepath.Join(dir, "a.vdi"), filepath.Join(dir, "b.vdi")
	ida, idb := newUUID(t), newUUID(t)
	writeVDIDiff(t, a, praw, vdiDiff{size: size, uuid: ida, link: idb})
	writeVDIDiff(t, b, praw, vdiDiff{size: size, uuid: idb, link: ida})
	if _, err := format.Open(a, "", format.Policy{Parents: []string{a, b}}); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("loop of two: %v", err)
	}
}

// TestDifferencingHostile: header fields of a differencing VDI that are
// refused at open.
func TestDifferencingHostile(t *testing.T) {
	dir := t.TempDir()
	praw := filepath.Join(dir, "p.raw")
	os.WriteFile(praw, make([]byte, 3<<20), 0o644)
	path := filepath.Join(dir, "d.vdi")
	writeVDIDiff(t, path, praw, vdiDiff{size: 3 << 20, uuid: newUUID(t), link: newUUID(t), writes: []formattest.Write{{Off: 1 << 20, Data: randomBytes(1, 512)}}, zero: []int64{2}})
	seed := formattest.ReadFile(t, path)
	// The unpatched seed opens as a layer; under the untrusted policy its
	// parent is refused.
	if _, err := vdi.Open(&formattest.MemFile{Data: seed, Path: path}); err != nil {
		t.Fatal(err)
	}
	cases := []hostile{
		{"no link", "", func(d []byte) []byte { clear(d[offLink : offLink+16]); return d }, "names no parent", formattest.AtOpen},
		{"undo", "", func(d []byte) []byte { put32(d, offType, 3); return d }, "undo VDI", formattest.AtOpen},
		{"type 5", "", func(d []byte) []byte { put32(d, offType, 5); return d }, "image type", formattest.AtOpen},
		{"base with a link", "", func(d []byte) []byte { put32(d, offType, 1); return d }, "link UUID", formattest.AtOpen},
		{"block past the end", "", func(d []byte) []byte { put32(d, 1<<20+4, 9); return d }, "block map entry 1", formattest.AtOpen},
	}
	formattest.RunHostileOn(t, "vdi", func(string) []byte { return seed }, cases)
}
