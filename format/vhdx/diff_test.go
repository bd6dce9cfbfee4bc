package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// diffParent makes a dynamic VHDX parent and its raw oracle, path+".raw".
func diffParent(t *testing.T, path string, size int64, opts string, cmds ...string) string {
	t.Helper()
	return formattest.WithOracle(t, path, Name, size, []string{"-o", opts}, cmds...)
}

// overlay builds the raw oracle of a child: the parent's raw oracle with
// the child's writes over it and its zero blocks cleared.
func overlay(t *testing.T, parentRaw, raw string, s diffSpec) {
	t.Helper()
	var zeros [][2]int64
	for _, b := range append(append([]int64(nil), s.zero...), s.unmapped...) {
		zeros = append(zeros, [2]int64{b * s.blockSize, min(s.blockSize, s.size-b*s.blockSize)})
	}
	formattest.Overlay(t, parentRaw, raw, s.size, zeros, s.writes)
}

// random returns n random bytes.
func random(seed, n int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// cell is what one sector of a chain holds: its status and depth.
type cell struct {
	st    format.Status
	depth int
}

// expectedRuns is the map a child of s over parent should have: what the
// child holds at depth 0, the rest the parent's map one layer deeper.
func expectedRuns(t *testing.T, parent format.Image, s diffSpec) []formattest.MapRun {
	t.Helper()
	ss := s.logical
	cells := make([]cell, s.size/ss)
	err := format.Walk(parent, 0, func(e format.Extent) error {
		for o := e.Start; o < e.End() && o/ss < int64(len(cells)); o += ss {
			cells[o/ss] = cell{e.Status, e.Depth + 1}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range append(append([]int64(nil), s.zero...), s.unmapped...) {
		for o := b * s.blockSize; o < min((b+1)*s.blockSize, s.size); o += ss {
			cells[o/ss] = cell{format.Zero, 0}
		}
	}
	for _, w := range s.writes {
		for o := w.Off; o < w.Off+int64(len(w.Data)); o += ss {
			cells[o/ss] = cell{format.Data, 0}
		}
	}
	var out []formattest.MapRun
	for i, c := range cells {
		out = formattest.AppendMapRun(out, formattest.MapRun{Start: int64(i) * ss, Length: ss, Depth: c.depth,
			Present: c.st != format.Unallocated, Zero: c.st != format.Data, Data: c.st == format.Data})
	}
	return out
}

// openChild writes dir/child.avhdx as s describes over the parent whose
// raw oracle is praw, and its oracle dir/child.raw, and opens the chain.
func openChild(t *testing.T, dir, praw string, s diffSpec) (format.Image, string) {
	t.Helper()
	child := filepath.Join(dir, "child.avhdx")
	writeDiff(t, child, s)
	raw := filepath.Join(dir, "child.raw")
	overlay(t, praw, raw, s)
	img, err := format.Open(child, "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img, raw
}

// checkMap compares the chain's map with expectedRuns.
func checkMap(t *testing.T, img format.Image, parent string, s diffSpec) {
	t.Helper()
	p := formattest.Open(t, parent, Name)
	if got, want := formattest.MapRuns(t, img), expectedRuns(t, p, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("map\n got %v\nwant %v", got, want)
	}
}

// compareWindows reads each window of img and of the raw file and
// compares them.
func compareWindows(t *testing.T, img format.Image, raw string, windows [][2]int64) {
	t.Helper()
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range windows {
		for off := w[0]; off < w[1]; {
			n := min(w[1]-off, 4<<20)
			got, want := make([]byte, n), make([]byte, n)
			if _, err := img.ReadAt(got, off); err != nil {
				t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
			}
			if _, err := f.ReadAt(want, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("bytes at %d differ from the raw oracle (first at +%d)", off, formattest.FirstDiff(got, want))
			}
			off += n
		}
	}
}

// TestDifferencing reads a differencing VHDX made over a qemu-img parent:
// partially present blocks (sectors scattered, runs across a block
// boundary, the disk's last sector), a fully present block, ZERO and
// UNMAPPED blocks over the parent's data, at 512- and 4096-byte logical
// sectors. Every byte must be the raw oracle's and the map must give each
// sector's layer.
func TestDifferencing(t *testing.T) {
	formattest.RequireQemu(t)
	for _, c := range []struct {
		name             string
		logical, blockSz int64
	}{
		{"512-1M", 512, 1 << 20},
		{"4096-4M", 4096, 4 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			const size = 64 << 20
			parent := filepath.Join(dir, "parent.vhdx")
			praw := diffParent(t, parent, size, "block_size=1M",
				"write -P 0x11 0 3M", "write -P 0x22 10M 1M", "write -P 0x33 40M 2M", "write -P 0x44 63M 1M")
			ss, bs := c.logical, c.blockSz
			s := diffSpec{size: size, blockSize: bs, logical: ss, dataWrite: randomGUID(t),
				locator: [][2]string{linkage(dataWriteOf(t, parent)), {"relative_path", `.\parent.vhdx`},
					{"absolute_win32_path", `\\?\D:\vms\parent.vhdx`}},
				writes: []formattest.Write{
					{Off: ss, Data: random(1, 2*ss)},              // inside block 0
					{Off: 6 * bs, Data: random(2, bs)},            // a whole block
					{Off: 10<<20 - 3*ss, Data: random(3, 6*ss)},   // across a block boundary
					{Off: 20 << 20, Data: random(4, ss)},          // scattered sectors
					{Off: 20<<20 + 2*ss, Data: random(5, ss)},     //
					{Off: 20<<20 + 4*ss, Data: random(6, 3*ss)},   //
					{Off: size - ss, Data: random(7, ss)},         // the last sector
					{Off: 44<<20 + 5*ss, Data: random(8, 100*ss)}, // over a ZERO block's neighbour
					{Off: 48 << 20, Data: random(9, bs/2)},        // the first half of a block
					{Off: 56<<20 + bs/2, Data: random(10, bs/2)},  // the second half
				},
				zero:     []int64{40 << 20 / bs},
				unmapped: []int64{(52 << 20) / bs},
			}
			img, raw := openChild(t, dir, praw, s)
			child := filepath.Join(dir, "child.avhdx")
			info := img.Info()
			if info.Format != Name || info.Subformat != "differencing" || info.BackingFile != "parent.vhdx" ||
				info.FullBackingFile != parent || info.BackingFormat != Name || info.Backing == nil {
				t.Errorf("info %+v", info)
			}
			if err := formattest.Validate(img); err != nil {
				t.Error(err)
			}
			compareWindows(t, img, raw, [][2]int64{{0, size}})
			checkMap(t, img, parent, s)
			// The layer alone: what the child holds, the rest unallocated.
			top := formattest.OpenPolicy(t, child, "", format.Policy{NoBacking: true})
			var held int64
			for _, w := range s.writes {
				held += int64(len(w.Data))
			}
			if n, err := format.AllocatedBytes(top); err != nil || n != held {
				t.Errorf("NoBacking: %d bytes of data, %v; want %d", n, err, held)
			}
		})
	}
}

// TestDifferencingChunks puts partially present blocks in three chunks of
// 4 GiB (a sector bitmap block each) of a 9 GiB disk, around the chunk
// boundaries, over a parent with data there too.
func TestDifferencingChunks(t *testing.T) {
	dir := formattest.QemuDir(t)
	const size = 9 << 30
	parent := filepath.Join(dir, "parent.vhdx")
	praw := diffParent(t, parent, size, "block_size=1M", "write -P 0x11 4095M 2M", "write -P 0x22 8G 1M", "write -P 0x33 9215M 1M")
	s := diffSpec{size: size, blockSize: 1 << 20, logical: 512, dataWrite: randomGUID(t),
		locator: [][2]string{{"relative_path", "parent.vhdx"}, linkage(dataWriteOf(t, parent))},
		writes: []formattest.Write{
			{Off: 4<<30 - 1024, Data: random(1, 2048)},
			{Off: 8<<30 + 512, Data: random(2, 512)},
			{Off: 8<<30 + 3<<20, Data: random(3, 1<<20)},
			{Off: 9<<30 - 4096, Data: random(4, 1024)},
			{Off: 1 << 20, Data: random(5, 512)},
		},
	}
	img, raw := openChild(t, dir, praw, s)
	compareWindows(t, img, raw, [][2]int64{{0, 4 << 20}, {4<<30 - 4<<20, 4<<30 + 4<<20}, {8<<30 - 1<<20, 8<<30 + 8<<20}, {size - 4<<20, size}})
	checkMap(t, img, parent, s)
}

// TestDifferencingParents: how a differencing VHDX finds and checks its
// parent: its locator's paths in the specification's order, the policy on
// paths, DataWriteGuid against parent_linkage or parent_linkage2, chains,
// loops, a missing parent, and parents the user gives.
func TestDifferencingParents(t *testing.T) {
	dir := formattest.QemuDir(t)
	const size = 8 << 20
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	parent := filepath.Join(sub, "parent.vhdx")
	praw := diffParent(t, parent, size, "block_size=1M", "write -P 0x11 0 8M")
	id := dataWriteOf(t, parent)
	child := filepath.Join(dir, "child.avhdx")
	spec := func(loc ...[2]string) diffSpec {
		return diffSpec{size: size, blockSize: 1 << 20, logical: 512, dataWrite: randomGUID(t), locator: loc,
			writes: []formattest.Write{{Off: 512, Data: random(1, 512)}}}
	}
	open := func(s diffSpec, p format.Policy) (format.Image, error) {
		writeDiff(t, child, s)
		return format.Open(child, "", p)
	}
	for _, c := range []struct {
		name    string
		loc     [][2]string
		policy  format.Policy
		want    string // error, or the backing file name that opened
		outside bool
	}{
		{"relative", [][2]string{linkage(id), {"relative_path", `.\sub\parent.vhdx`}}, format.Policy{}, "sub/parent.vhdx", false},
		{"relative first", [][2]string{{"absolute_win32_path", `C:\vms\parent.vhdx`}, {"relative_path", `sub\parent.vhdx`}, linkage(id)}, format.Policy{}, "sub/parent.vhdx", false},
		{"linkage2", [][2]string{linkage(randomGUID(t)), {"parent_linkage2", id.String()}, {"relative_path", `sub\parent.vhdx`}}, format.Policy{}, "sub/parent.vhdx", false},
		{"upper-case GUID", [][2]string{{"parent_linkage", strings.ToUpper(id.String())}, {"relative_path", `sub\parent.vhdx`}}, format.Policy{}, "sub/parent.vhdx", false},
		{"wrong linkage", [][2]string{linkage(randomGUID(t)), {"relative_path", `sub\parent.vhdx`}}, format.Policy{}, "DataWriteGuid", false},
		{"missing", [][2]string{linkage(id), {"relative_path", `gone.vhdx`}}, format.Policy{}, "no such file", false},
		{"windows paths only", [][2]string{linkage(id), {"volume_path", `\\?\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\parent.vhdx`}, {"absolute_win32_path", `\\?\D:\vms\parent.vhdx`}}, format.Policy{}, "absolute Windows path", true},
		{"given parent", [][2]string{linkage(id), {"absolute_win32_path", `D:\vms\parent.vhdx`}}, format.Policy{Parents: []string{praw, parent}}, parent, false},
		{"dotdot", [][2]string{linkage(id), {"relative_path", `..\parent.vhdx`}}, format.Policy{}, "\"..\"", true},
		{"self", [][2]string{linkage(id), {"relative_path", `child.avhdx`}}, format.Policy{}, "loops", false},
		{"not a vhdx", [][2]string{linkage(id), {"relative_path", `sub\parent.vhdx.raw`}}, format.Policy{}, "not a vhdx image", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			img, err := open(spec(c.loc...), c.policy)
			if err != nil {
				if !strings.Contains(err.Error(), c.want) {
					t.Fatalf("error %v, want %q", err, c.want)
				}
				if c.outside != errors.Is(err, format.ErrOutsideDirectory) {
					t.Errorf("error %v: outside the directory %v, want %v", err, !c.outside, c.outside)
				}
				return
			}
			defer img.Close()
			if got := img.Info().BackingFile; got != c.want {
				t.Errorf("opened %q, want %q", got, c.want)
			}
		})
	}

	// A loop: two children naming each other, each with the other's
	// DataWriteGuid.
	a, b := filepath.Join(dir, "a.avhdx"), filepath.Join(dir, "b.avhdx")
	ida, idb := randomGUID(t), randomGUID(t)
	sa, sb := spec(linkage(idb), [2]string{"relative_path", "b.avhdx"}), spec(linkage(ida), [2]string{"relative_path", "a.avhdx"})
	sa.dataWrite, sb.dataWrite = ida, idb
	writeDiff(t, a, sa)
	writeDiff(t, b, sb)
	if _, err := format.Open(a, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("loop: %v", err)
	}

	// A chain of three: grandchild over child over parent.
	cs := spec(linkage(id), [2]string{"relative_path", `sub\parent.vhdx`})
	cs.writes = []formattest.Write{{Off: 1 << 20, Data: random(2, 4096)}, {Off: 3 << 20, Data: random(3, 1<<20)}}
	writeDiff(t, child, cs)
	gs := spec(linkage(cs.dataWrite), [2]string{"relative_path", "child.avhdx"})
	gs.writes = []formattest.Write{{Off: 1<<20 + 1024, Data: random(4, 1024)}, {Off: 7<<20 + 512, Data: random(5, 2048)}}
	grand := filepath.Join(dir, "grand.avhdx")
	writeDiff(t, grand, gs)
	craw, graw := filepath.Join(dir, "child.raw"), filepath.Join(dir, "grand.raw")
	overlay(t, praw, craw, cs)
	overlay(t, craw, graw, gs)
	img := formattest.Open(t, grand, "")
	compareWindows(t, img, graw, [][2]int64{{0, size}})
	if e, err := img.Extent(0); err != nil || e.Depth != 2 || e.Status != format.Data {
		t.Errorf("Extent(0) = %+v, %v; want the parent's data at depth 2", e, err)
	}

	// info opens an image whose parent is missing and names it.
	writeDiff(t, child, spec(linkage(id), [2]string{"relative_path", `elsewhere\parent.vhdx`}))
	img2, err := format.Open(child, "", format.Policy{DeferBackingErrors: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img2.Close()
	if info := img2.Info(); info.BackingFile != "elsewhere/parent.vhdx" || format.BackingError(img2) == nil {
		t.Errorf("info %+v, backing error %v", info, format.BackingError(img2))
	}
}

// diffSeed is a small differencing VHDX: 8 MiB, 1 MiB blocks, block 0
// partially present (its sector bitmap block at 3 MiB, the block at
// 4 MiB), block 2 fully present (at 5 MiB), block 4 zero.
func diffSeed(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "seed.avhdx")
	full := make([]byte, 1<<20) // a fully present block, mostly zeros: a small seed
	copy(full, random(2, 512))
	writeDiff(t, path, diffSpec{size: 8 << 20, blockSize: 1 << 20, logical: 512, dataWrite: randomGUID(t),
		locator: [][2]string{linkage(randomGUID(t)), {"relative_path", `.\parent.vhdx`}},
		writes:  []formattest.Write{{Off: 512, Data: random(1, 1024)}, {Off: 2 << 20, Data: full}}, zero: []int64{4}})
	b := formattest.ReadFile(t, path)
	return b
}

// Where diffSeed puts things.
const (
	seedLocator = 1<<20 + metadataSize + 40 // after the five fixed items
	seedBAT     = 2 << 20
	seedSB      = seedBAT + 4096*batEntrySize // chunk 0's sector bitmap entry
)

// TestDifferencingHostile patches a differencing VHDX's parent locator
// and sector bitmaps: each must be refused at open, by field.
func TestDifferencingHostile(t *testing.T) {
	seed := diffSeed(t)
	if img, err := openBytes(seed); err != nil {
		t.Fatalf("unpatched seed: %v", err)
	} else if img.parent == nil || img.parent.Names[0] != "parent.vhdx" {
		t.Fatalf("seed parent %+v", img.parent)
	}
	loc := func(patch func(l []byte)) func([]byte) []byte {
		return func(b []byte) []byte { patch(b[seedLocator:]); return b }
	}
	entry := func(i int, field int, v uint32) func([]byte) []byte {
		return loc(func(l []byte) {
			binary.LittleEndian.PutUint32(l[locHeaderSize+i*locEntrySize+field:], v)
		})
	}
	cases := []hostile{
		{"locator type", "", loc(func(l []byte) { l[0] ^= 1 }), "not the VHDX locator type", formattest.AtOpen},
		{"key-value count", "", loc(func(l []byte) { binary.LittleEndian.PutUint16(l[locCount:], 5000) }), "KeyValueCount", formattest.AtOpen},
		{"key outside the item", "", entry(0, 0, 1<<20), "lie outside", formattest.AtOpen},
		{"key inside the header", "", entry(0, 0, 4), "lie outside", formattest.AtOpen},
		{"odd value length", "", loc(func(l []byte) { binary.LittleEndian.PutUint16(l[locHeaderSize+10:], 3) }), "even", formattest.AtOpen},
		{"empty key", "", loc(func(l []byte) { binary.LittleEndian.PutUint16(l[locHeaderSize+8:], 0) }), "even", formattest.AtOpen},
		{"duplicate key", "", loc(func(l []byte) {
			// Entry 1's key is entry 0's.
			copy(l[locHeaderSize+locEntrySize:locHeaderSize+locEntrySize+4], l[locHeaderSize:locHeaderSize+4])
			copy(l[locHeaderSize+locEntrySize+8:locHeaderSize+locEntrySize+10], l[locHeaderSize+8:locHeaderSize+10])
		}), "duplicate key", formattest.AtOpen},
		{"no parent_linkage", "", loc(func(l []byte) {
			o := binary.LittleEndian.Uint32(l[locHeaderSize:])
			l[o] = 'P' // "Parent_linkage"
		}), "no parent_linkage", formattest.AtOpen},
		{"linkage not a GUID", "", loc(func(l []byte) {
			o := binary.LittleEndian.Uint32(l[locHeaderSize+4:])
			l[o+4] = 'z'
		}), "is not a GUID", formattest.AtOpen},
		{"no path", "", loc(func(l []byte) {
			o := binary.LittleEndian.Uint32(l[locHeaderSize+locEntrySize:])
			l[o] = 'R' // "Relative_path"
		}), "no relative_path", formattest.AtOpen},
		{"locator too short", "", put(entryAt(t, parentLocGUID, mteLength), uint32(10)), "parent locator", formattest.AtOpen},
		{"no locator", "", func(b []byte) []byte {
			e, _ := metaEntry(t, b, parentLocGUID)
			b[e]++
			b[e+mteFlags] &^= mteIsRequired
			return b
		}, "without a parent locator item", formattest.AtOpen},
		{"partial block without bitmap", "", put(at(seedSB), uint64(0)), "no sector bitmap block", formattest.AtOpen},
		{"bitmap past the end", "", put(at(seedSB), uint64(100<<20|sbPresent)), "sector bitmap block at", formattest.AtOpen},
		{"bitmap in the metadata", "", put(at(seedSB), uint64(1<<20|sbPresent)), "overlaps the metadata", formattest.AtOpen},
		{"bitmap state", "", put(at(seedSB), uint64(3<<20|3)), "invalid sector bitmap block state 3", formattest.AtOpen},
		{"partial block past the end", "", put(at(seedBAT), uint64(100<<20|blockPartiallyPresent)), "extends past the end", formattest.AtOpen},
		{"truncated bitmap", "", func(b []byte) []byte { return b[:3<<20+512] }, "extends past the end", formattest.AtOpen},
	}
	formattest.RunHostileOn(t, Name, func(string) []byte { return seed }, cases)
}

// FuzzLocator feeds arbitrary parent locator items to the parser.
func FuzzLocator(f *testing.F) {
	f.Add(parentLocator([][2]string{linkage(guid{1}), {"relative_path", `.\p.vhdx`}}))
	f.Add(parentLocator([][2]string{{"parent_linkage", "{x}"}, {"parent_linkage", ""}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < locHeaderSize {
			return
		}
		kv, err := parseLocator(b, 0)
		if err == nil && len(kv) > len(b)/locEntrySize {
			t.Fatalf("%d entries from %d bytes", len(kv), len(b))
		}
	})
}
