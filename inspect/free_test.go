package inspect

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// memImage is a raw in-memory image whose map says every byte is data.
func memImage(t testing.TB, data []byte) format.Image {
	t.Helper()
	img, err := openMem(data)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestSparseImageMap(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte{7}, 64<<10)
	s := &sparseImage{Image: memImage(t, data), free: []span{{start: 4096, end: 8192}, {start: 12288, end: 65536}}}
	var got []format.Extent
	err := format.Walk(s, 0, func(e format.Extent) error {
		if (e.File != nil) != (e.Offset >= 0) {
			t.Errorf("extent %v: File and Offset disagree", e)
		}
		e.File = nil
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []format.Extent{
		{Start: 0, Length: 4096, Status: format.Data, Offset: 0},
		{Start: 4096, Length: 4096, Status: format.Zero, Offset: -1},
		{Start: 8192, Length: 4096, Status: format.Data, Offset: 8192},
		{Start: 12288, Length: 65536 - 12288, Status: format.Zero, Offset: -1},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("map %v, want %v", got, want)
	}
	// A read across every boundary, and reads inside one range.
	for _, r := range [][2]int64{{0, 65536}, {4000, 9000}, {5000, 100}, {8192, 4096}, {65000, 1000}} {
		p := make([]byte, r[1])
		n, err := s.ReadAt(p, r[0])
		if want := min(r[1], 65536-r[0]); int64(n) != want || (err != nil) != (want < r[1]) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", r[1], r[0], n, err)
		}
		for i := range n {
			off := r[0] + int64(i)
			free := off >= 4096 && off < 8192 || off >= 12288
			if (p[i] == 0) != free {
				t.Fatalf("byte %d reads %d", off, p[i])
			}
		}
	}
}

func TestFreeList(t *testing.T) {
	t.Parallel()
	const k = 1024
	l := &freeList{limit: 4, window: 1000 * k}
	for _, s := range [][2]int64{{-5, 10 * k}, {10 * k, 20 * k}, {30 * k, 30*k + 2048}, {40 * k, 60 * k}, {70 * k, 90 * k}, {100 * k, 200 * k}, {990 * k, 2000 * k}} {
		if err := l.add(s[0], s[1]); err != nil {
			t.Fatal(err)
		}
	}
	// Touching ranges merge, past four the shortest go, and the last is
	// clipped to the window.
	want := []span{{end: 20 * k}, {start: 40 * k, end: 60 * k}, {start: 70 * k, end: 90 * k}, {start: 100 * k, end: 200 * k}, {start: 990 * k, end: 1000 * k}}
	if fmt.Sprint(l.spans) != fmt.Sprint(want) {
		t.Fatalf("spans %v, want %v", l.spans, want)
	}
	if err := l.add(150*k, 160*k); err != errUnsorted {
		t.Fatalf("out of order add: %v", err)
	}
	if got := subtract([]span{{start: 0, end: 100}, {start: 200, end: 300}}, []span{{start: 50, end: 250}, {start: 10, end: 20}}); fmt.Sprint(got) != "[{0 10 0} {20 50 0} {250 300 0}]" {
		t.Fatalf("subtract = %v", got)
	}
}

func TestBitmapRuns(t *testing.T) {
	t.Parallel()
	b := []byte{0b11110000, 0xff, 0x00, 0x00, 0b00000001}
	var runs [][2]int64
	zeros, _ := bitmapRuns(b, 38, func(from, to int64) error { runs = append(runs, [2]int64{from, to}); return nil })
	if fmt.Sprint(runs) != "[[0 4] [16 32] [33 38]]" || zeros != 4+16+5 {
		t.Fatalf("runs %v zeros %d", runs, zeros)
	}
}

// extImage makes an ext filesystem of size bytes holding files, deletes
// every other one and returns the image.
func extImage(t *testing.T, dir string, size int64, mkfs ...string) string {
	t.Helper()
	requireTools(t, map[string]string{"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs"})
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	c := newChurn(3)
	add, _ := c.stage(size / 3)
	var rm []string
	for i, n := range sortedKeys(add) {
		p := filepath.Join(tree, strings.ReplaceAll(n, "/", "_"))
		os.WriteFile(p, add[n], 0o644)
		if i%2 == 0 {
			rm = append(rm, "rm /"+filepath.Base(p))
		}
	}
	img := filepath.Join(dir, "ext.img")
	garbageFile(t, img, size, 1)
	if len(mkfs) == 0 {
		mkfs = []string{"mkfs.ext4"}
	}
	run(t, mkfs[0], append(mkfs[1:], "-q", "-F", "-E", "nodiscard", "-d", tree, img)...)
	script := filepath.Join(dir, "rm")
	os.WriteFile(script, []byte(strings.Join(rm, "\n")+"\n"), 0o644)
	run(t, "debugfs", "-w", "-f", script, img)
	return img
}

func sparsifyBytes(t *testing.T, data []byte, opts SparsifyOptions) ([]byte, *SparsifyReport) {
	t.Helper()
	s, rep, err := Sparsify(memImage(t, data), opts)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(data))
	if n, err := s.ReadAt(out, 0); n != len(out) {
		t.Fatal(err)
	}
	return out, rep
}

func TestSparsifyDirty(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img := extImage(t, dir, 16<<20)
	clean := formattest.ReadFile(t, img)
	// The journal's first block, whose superblock says what to replay.
	var jblk int64
	fmt.Sscan(strings.TrimSpace(run(t, "debugfs", "-R", "bmap <8> 0", img)), &jblk)
	bs := int64(1024) << le.Uint32(clean[extSuperOff+extLogBlockSize:])
	for _, tc := range []struct{ name, cmd, why string }{
		{"state", "ssv state 0", "not cleanly unmounted"},
		{"errors", "ssv state 3", "records errors"},
		{"recovery", "feature needs_recovery", "needs recovery"},
		{"journal", "", "transactions to replay"},
	} {
		p := filepath.Join(dir, tc.name)
		data := bytes.Clone(clean)
		if tc.cmd == "" {
			be.PutUint32(data[jblk*bs+jbdStart:], 1)
		} else {
			os.WriteFile(p, clean, 0o644)
			run(t, "debugfs", "-w", "-R", tc.cmd, p)
			data, _ = os.ReadFile(p)
		}
		out, rep := sparsifyBytes(t, data, SparsifyOptions{})
		if k := rep.Filesystems[0].Kept; !strings.Contains(k, "dirty") || !strings.Contains(k, tc.why) || !bytes.Equal(out, data) {
			t.Errorf("%s: kept %q", tc.name, k)
		}
		if _, rep := sparsifyBytes(t, data, SparsifyOptions{Force: true}); rep.Filesystems[0].Kept != "" || rep.SavedBytes == 0 {
			t.Errorf("%s forced: %+v", tc.name, rep.Filesystems[0])
		}
	}
}

// TestSparsifyDirtyFAT sets the dirty flags of FAT and exFAT volumes.
func TestSparsifyDirtyFAT(t *testing.T) {
	t.Parallel()
	requireTools(t, map[string]string{"mkfs.vfat": "dosfstools", "mkfs.exfat": "exfatprogs"})
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		mkfs []string
		off  int
		bit  byte
	}{
		{"fat16", []string{"mkfs.vfat", "-F", "16"}, fatState16, fatStateDirty},
		{"fat32", []string{"mkfs.vfat", "-F", "32"}, fatState32, fatStateDirty},
		{"fat32-fat1", []string{"mkfs.vfat", "-F", "32", "-R", "32"}, 32*512 + 7, 0}, // clears FAT[1]'s clean bit
		{"exfat", []string{"mkfs.exfat"}, exfatVolumeFlags, exfatDirty},
	} {
		p := filepath.Join(dir, tc.name)
		garbageFile(t, p, 40<<20, 2)
		run(t, tc.mkfs[0], append(tc.mkfs[1:], p)...)
		data, _ := os.ReadFile(p)
		if _, rep := sparsifyBytes(t, data, SparsifyOptions{}); rep.Filesystems[0].Kept != "" || rep.SavedBytes == 0 {
			t.Fatalf("%s clean: %+v", tc.name, rep.Filesystems[0])
		}
		if tc.bit == 0 {
			data[tc.off] &^= 0x08
		} else {
			data[tc.off] |= tc.bit
		}
		out, rep := sparsifyBytes(t, data, SparsifyOptions{})
		if !strings.Contains(rep.Filesystems[0].Kept, "dirty") || !bytes.Equal(out, data) {
			t.Errorf("%s dirty: %+v", tc.name, rep.Filesystems[0])
		}
	}
}

// ntfsRecordAttr returns the offset in the image of attribute typ's
// value in MFT record n.
func ntfsRecordAttr(t *testing.T, data []byte, n int64, typ uint32) (*ntfsVol, int64) {
	t.Helper()
	v := ntfsOf(t, data)
	rec := v.mftOff + n*v.recSize
	a, err := v.attr(n, typ)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := v.record(n)
	off := int64(bytes.Index(b, a))
	return v, rec + off + int64(le.Uint16(a[ntfsAttrValOff:]))
}

func TestSparsifyDirtyNTFS(t *testing.T) {
	t.Parallel()
	requireTool(t, "mkfs.ntfs", "ntfs-3g")
	dir := t.TempDir()
	p := filepath.Join(dir, "ntfs.img")
	garbageFile(t, p, 32<<20, 3)
	run(t, "mkfs.ntfs", "-q", "-F", "-f", p)
	clean, _ := os.ReadFile(p)
	if _, rep := sparsifyBytes(t, clean, SparsifyOptions{}); rep.Filesystems[0].Kept != "" || rep.SavedBytes == 0 {
		t.Fatalf("clean: %+v", rep.Filesystems[0])
	}
	data := bytes.Clone(clean)
	_, off := ntfsRecordAttr(t, data, ntfsRecVolume, ntfsAttrVolInfo)
	if (off+ntfsVolInfoFlags)%512 >= 510 {
		t.Skip("the flags sit under a fixup")
	}
	data[off+ntfsVolInfoFlags] |= ntfsVolDirty
	if out, rep := sparsifyBytes(t, data, SparsifyOptions{}); !strings.Contains(rep.Filesystems[0].Kept, "dirty flag") || !bytes.Equal(out, data) {
		t.Errorf("$Volume dirty: %+v", rep.Filesystems[0])
	}

	// A restart page in $LogFile: a client in use and no clean flag is dirty.
	for _, flags := range []uint16{0, ntfsRaClean} {
		data := bytes.Clone(clean)
		v, _ := ntfsRecordAttr(t, data, ntfsRecLogFile, ntfsAttrData)
		s, err := v.stream(ntfsRecLogFile, ntfsAttrData, "")
		if err != nil || s.runs[0].lcn < 0 {
			t.Fatal(err)
		}
		page := restartPage(4096, 0, flags)
		copy(data[s.runs[0].lcn*v.cs:], page)
		copy(data[s.runs[0].lcn*v.cs+4096:], page)
		_, rep := sparsifyBytes(t, data, SparsifyOptions{})
		if k := rep.Filesystems[0].Kept; (flags == 0) != strings.Contains(k, "$LogFile says") {
			t.Errorf("restart area flags %#x: kept %q", flags, k)
		}
	}
}

// restartPage makes a $LogFile restart page of size bytes with its
// update sequence applied.
func restartPage(size int, inUse, flags uint16) []byte {
	p := make([]byte, size)
	copy(p, ntfsRstrMagic)
	const usa = 0x1e
	n := size/ntfsSectorStride + 1
	le.PutUint16(p[ntfsRecUSAOff:], usa)
	le.PutUint16(p[ntfsRecUSACount:], uint16(n))
	le.PutUint32(p[ntfsRstrPageSize:], uint32(size))
	le.PutUint32(p[ntfsRstrPageSize+4:], uint32(size))
	ra := 0x30
	le.PutUint16(p[ntfsRstrAreaOff:], uint16(ra))
	le.PutUint64(p[ra+ntfsRaLSN:], 1000)
	le.PutUint16(p[ra+ntfsRaInUse:], inUse)
	le.PutUint16(p[ra+ntfsRaFlags:], flags)
	le.PutUint16(p[usa:], 7)
	for i := 1; i < n; i++ {
		end := i*ntfsSectorStride - 2
		copy(p[usa+2*i:], p[end:end+2])
		le.PutUint16(p[end:], 7)
	}
	return p
}

func TestSparsifySwap(t *testing.T) {
	t.Parallel()
	requireTool(t, "mkswap", "util-linux")
	p := filepath.Join(t.TempDir(), "swap")
	garbageFile(t, p, 8<<20, 4)
	run(t, "mkswap", "-U", "5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0022", p)
	data, _ := os.ReadFile(p)
	out, rep := sparsifyBytes(t, data, SparsifyOptions{})
	if !bytes.Equal(out[:4096], data[:4096]) || !format.IsZero(out[4096:]) || rep.SavedBytes != 8<<20-4096 {
		t.Fatalf("swap: %+v", rep.Filesystems)
	}
	os.WriteFile(p, out, 0o644)
	if m := blkid(t, p); m["TYPE"] != "swap" || m["UUID"] != "5b6c2c2e-0d5e-4c6f-9a55-6a1d1f0e0022" {
		t.Fatalf("blkid after sparsifying: %v", m)
	}
}

// TestSparsifyOverlap: a partition whose filesystem marks free the bytes
// of another partition that overlaps it must not lose them, nor may any
// filesystem free the partition table.
func TestSparsifyOverlap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fsImg := extImage(t, dir, 16<<20)
	fsData, _ := os.ReadFile(fsImg)
	disk := make([]byte, 1<<20+len(fsData))
	copy(disk[1<<20:], fsData)
	// Partition 1 holds the ext4; partition 2 sits in its free tail and
	// holds bytes of its own.
	s0 := disk[:512]
	le.PutUint16(s0[mbrBootSig:], mbrSignature)
	e := s0[mbrTable:]
	e[4] = 0x83
	le.PutUint32(e[8:], 2048)
	le.PutUint32(e[12:], uint32(len(fsData)/512))
	e = s0[mbrTable+16:]
	e[4] = 0x83
	p2 := int64(1<<20 + len(fsData) - 1<<20)
	le.PutUint32(e[8:], uint32(p2/512))
	le.PutUint32(e[12:], 1<<20/512)
	copy(disk[p2:], bytes.Repeat([]byte("partition 2 "), 1<<20/12))
	out, rep := sparsifyBytes(t, disk, SparsifyOptions{})
	if rep.Filesystems[0].Kept != "" || rep.SavedBytes == 0 {
		t.Fatalf("report %+v", rep.Filesystems)
	}
	if !bytes.Equal(out[p2:p2+1<<20], disk[p2:p2+1<<20]) || !bytes.Equal(out[:512], disk[:512]) {
		t.Fatal("the overlapping partition or the MBR lost bytes")
	}

	// A filesystem on the whole disk whose boot sector is also an MBR:
	// the partition it lists keeps its bytes.
	whole := bytes.Clone(fsData)
	copy(whole[:512], s0)
	le.PutUint32(whole[mbrTable+8:], uint32((len(whole)-1<<20)/512))
	le.PutUint32(whole[mbrTable+12:], 1<<20/512)
	clear(whole[mbrTable+16 : mbrTable+32])
	tail := len(whole) - 1<<20
	copy(whole[tail:], bytes.Repeat([]byte("partition 1 "), 1<<20/12))
	out, rep = sparsifyBytes(t, whole, SparsifyOptions{})
	if rep.Filesystems[0].Where != "disk" || rep.SavedBytes == 0 || !bytes.Equal(out[tail:], whole[tail:]) || !bytes.Equal(out[:512], whole[:512]) {
		t.Fatalf("whole-disk filesystem under an MBR: %+v", rep.Filesystems)
	}
}

// TestSparsifyUnsure: group descriptors pointing outside the filesystem,
// or a bitmap claiming more free blocks than its descriptor, keep it whole.
func TestSparsifyUnsure(t *testing.T) {
	t.Parallel()
	img := extImage(t, t.TempDir(), 16<<20, "mkfs.ext4", "-O", "^metadata_csum,^uninit_bg", "-b", "1024")
	clean, _ := os.ReadFile(img)
	for _, tc := range []struct {
		name string
		off  int64
		val  uint32
	}{
		{"bitmap outside", 2*1024 + extGDBlockBitmapLo, 1 << 30},
		{"free count low", 2*1024 + extGDFreeBlocksLo, 0},
	} {
		data := bytes.Clone(clean)
		if tc.name == "free count low" {
			le.PutUint16(data[tc.off:], uint16(tc.val))
		} else {
			le.PutUint32(data[tc.off:], tc.val)
		}
		out, rep := sparsifyBytes(t, data, SparsifyOptions{Force: true})
		if !strings.HasPrefix(rep.Filesystems[0].Kept, "unsure") || !bytes.Equal(out, data) {
			t.Errorf("%s: %+v", tc.name, rep.Filesystems[0])
		}
	}
	// A swap signature left in the ext4's first block: which is in use?
	data4k, _ := os.ReadFile(extImage(t, t.TempDir(), 16<<20, "mkfs.ext4", "-b", "4096"))
	copy(data4k[4096-10:], "SWAPSPACE2")
	if out, rep := sparsifyBytes(t, data4k, SparsifyOptions{}); rep.Filesystems[0].Kept != "ambiguous: signatures of swap and ext4" || !bytes.Equal(out, data4k) {
		t.Errorf("swap and ext4: %+v", rep.Filesystems[0])
	}
	big := extImage(t, t.TempDir(), 16<<20, "mkfs.ext4", "-O", "bigalloc", "-C", "16384")
	data, _ := os.ReadFile(big)
	if _, rep := sparsifyBytes(t, data, SparsifyOptions{}); !strings.Contains(rep.Filesystems[0].Kept, "bigalloc") {
		t.Errorf("bigalloc: %+v", rep.Filesystems[0])
	}
	// Btrfs is copied whole: its free space is not read.
	b := formattest.ReadFile(t, filepath.Join("..", "testdata", "inspect", "btrfs.seed"))
	b = fuzzBytes(b)
	if _, rep := sparsifyBytes(t, b, SparsifyOptions{}); rep.Filesystems[0].Type != "btrfs" || !strings.Contains(rep.Filesystems[0].Kept, "copied whole") {
		t.Errorf("btrfs: %+v", rep.Filesystems)
	}
}

// lvmPVImage writes a physical volume of size bytes to path: the label in
// sector 1, one metadata area at 4 KiB holding text, data from 1 MiB.
func lvmPVImage(t testing.TB, data []byte, uuid, text string) {
	t.Helper()
	l := data[512:1024]
	clear(l)
	copy(l, lvmLabelID)
	le.PutUint64(l[lvmLabelSector:], 1)
	le.PutUint32(l[lvmLabelOffsetXL:], 32)
	copy(l[lvmLabelTypeOff:], lvmLabelType)
	copy(l[32:], uuid)
	le.PutUint64(l[64:], uint64(len(data)))
	for i, v := range []uint64{1 << 20, 0, 0, 0, 4096, 1<<20 - 4096, 0, 0} {
		le.PutUint64(l[72+8*i:], v)
	}
	le.PutUint32(l[lvmLabelCRC:], lvmCRC(lvmInitialCRC, l[lvmLabelCRCStart:]))
	h := data[4096 : 4096+512]
	clear(h)
	copy(h[4:], lvmMDAMagic)
	le.PutUint32(h[lvmMDAVersion:], 1)
	le.PutUint64(h[lvmMDAStart:], 4096)
	le.PutUint64(h[lvmMDASize:], 1<<20-4096)
	le.PutUint64(h[lvmRawLocns:], 512)
	le.PutUint64(h[lvmRawLocns+8:], uint64(len(text)))
	le.PutUint32(h[lvmRawLocns+16:], lvmCRC(lvmInitialCRC, []byte(text)))
	le.PutUint32(h, lvmCRC(lvmInitialCRC, h[4:]))
	copy(data[4096+512:], text)
}

const testPVUUID = "ZUDf1nRpZtJAezOv7VS10RZ17zn6kCF6"

// lvmText makes VG metadata with 4 MiB extents; segs are LV name and
// segment lines (start_extent, extent_count, "pv0", first extent).
func lvmTestText(peCount int64, lvs map[string][][3]int64, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "vgt {\nid = \"mk01UE-rzVL-cxQy-QZT3-Ru2a-Yube-TfcgLZ\"\nseqno = 4\nformat = \"lvm2\"\nextent_size = 8192\n")
	fmt.Fprintf(&b, "physical_volumes {\npv0 {\nid = \"ZUDf1n-RpZt-JAez-Ov7V-S10R-Z17z-n6kCF6\"\ndevice = \"/dev/loop0\"\nstatus = [\"ALLOCATABLE\"]\npe_start = 2048\npe_count = %d\n}\n}\n", peCount)
	b.WriteString("logical_volumes {\n")
	for _, name := range []string{"root", "swap", "other"} {
		segs, ok := lvs[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "%s {\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nsegment_count = %d\n", name, len(segs))
		for i, s := range segs {
			fmt.Fprintf(&b, "segment%d {\nstart_extent = %d\nextent_count = %d\ntype = \"striped\"\nstripe_count = 1 # linear\nstripes = [\n\"pv0\", %d\n]\n}\n", i+1, s[0], s[1], s[2])
		}
		b.WriteString("}\n")
	}
	b.WriteString(extra + "}\n}\n# Generated by a test\ncontents = \"Text Format Volume Group\"\nversion = 1\n")
	return b.String()
}

// copyLV copies an LV's bytes between the disk and a file, through its
// segments (start_extent, extent_count, first PV extent).
func copyLV(disk, lv []byte, segs [][3]int64, toDisk bool) {
	const ext = 4 << 20
	for _, s := range segs {
		pv := disk[1<<20+s[2]*ext : 1<<20+(s[2]+s[1])*ext]
		l := lv[s[0]*ext : (s[0]+s[1])*ext]
		if toDisk {
			copy(pv, l)
		} else {
			copy(l, pv)
		}
	}
}

// TestSparsifyLVM reads crafted LVM metadata: the free extents, and the
// free space of an ext4 in a linear LV of two segments, are left out; a
// volume that another refers to is kept.
func TestSparsifyLVM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fsImg := extImage(t, dir, 24<<20)
	fsData, _ := os.ReadFile(fsImg)
	disk := make([]byte, 1<<20+16*4<<20)
	garbageFile(t, filepath.Join(dir, "g"), int64(len(disk)), 5)
	g, _ := os.ReadFile(filepath.Join(dir, "g"))
	copy(disk, g)
	root := [][3]int64{{0, 4, 6}, {4, 2, 1}} // 24 MiB in two pieces
	other := [][3]int64{{0, 2, 10}}
	text := lvmTestText(16, map[string][][3]int64{"root": root, "other": other},
		"snap {\nsegment1 {\nstart_extent = 0\nextent_count = 1\ntype = \"snapshot\"\norigin = \"other\"\ncow_store = \"cow\"\n}\n}\n")
	lvmPVImage(t, disk, testPVUUID, text)
	copyLV(disk, fsData, root, true)
	out, rep := sparsifyBytes(t, disk, SparsifyOptions{})
	var lines []string
	for _, f := range rep.Filesystems {
		lines = append(lines, fmt.Sprintf("%s %s kept=%q", f.Where, f.Type, f.Kept))
	}
	want := []string{`disk LVM2_member kept=""`, `disk, LV vgt/root ext4 kept=""`, `disk, LV vgt/other  kept="not a linear volume on this PV: copied whole"`, `disk, LV vgt/snap  kept="not a linear volume on this PV: copied whole"`}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("report:\n%s", strings.Join(lines, "\n"))
	}
	// Extents 0, 3..5 and 12..15 are free, 10..11 the kept LV's; 1..2
	// and 6..9 hold the ext4, checked below.
	for e := int64(0); e < 16; e++ {
		ext, was := out[1<<20+e*4<<20:1<<20+(e+1)*4<<20], disk[1<<20+e*4<<20:1<<20+(e+1)*4<<20]
		switch {
		case e == 0 || e >= 3 && e <= 5 || e >= 12:
			if !format.IsZero(ext) {
				t.Errorf("free extent %d is not zero", e)
			}
		case e >= 10 && e < 12:
			if !bytes.Equal(ext, was) {
				t.Errorf("extent %d of the kept LV changed", e)
			}
		}
	}
	if !bytes.Equal(out[:1<<20], disk[:1<<20]) {
		t.Error("label or metadata changed")
	}
	lv := make([]byte, len(fsData))
	copyLV(out, lv, root, false)
	p := filepath.Join(dir, "lv.img")
	os.WriteFile(p, lv, 0o644)
	fsckOK("e2fsck", "-fn")(t, p)
	if rep.Filesystems[1].SavedBytes == 0 {
		t.Error("nothing left out of the LV")
	}
	ops := extOps("mkfs.ext4")
	if a, b := ops.files(t, fsImg, dir), ops.files(t, p, dir); fmt.Sprint(a) != fmt.Sprint(b) || len(a) == 0 {
		t.Errorf("files differ: %d vs %d", len(a), len(b))
	}

	// Metadata naming the PV somewhere not understood keeps it whole.
	bad := lvmTestText(16, map[string][][3]int64{"root": root}, "odd {\nsegment1 {\nstart_extent = 0\nextent_count = 1\ntype = \"mirror\"\nlog = \"pv0\"\n}\n}\n")
	lvmPVImage(t, disk, testPVUUID, bad)
	if _, rep := sparsifyBytes(t, disk, SparsifyOptions{}); !strings.HasPrefix(rep.Filesystems[0].Kept, "unsure") {
		t.Errorf("odd metadata: %+v", rep.Filesystems)
	}
	// A bad metadata checksum keeps it whole.
	lvmPVImage(t, disk, testPVUUID, text)
	disk[4096+600] ^= 1
	if _, rep := sparsifyBytes(t, disk, SparsifyOptions{}); !strings.Contains(rep.Filesystems[0].Kept, "checksum") {
		t.Errorf("bad checksum: %+v", rep.Filesystems)
	}
}

// lvmTool runs an LVM command against the loop device only, without
// udev or the kernel's device mapper (not every test machine has it).
func lvmTool(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], append([]string{"--driverloaded", "n", "--config",
		"activation{udev_sync=0 udev_rules=0} devices{use_devicesfile=0 obtain_device_list_from_udev=0}"}, args[1:]...)...)
	cmd.Env = append(os.Environ(), "DM_DISABLE_UDEV=1", "LVM_SUPPRESS_FD_WARNINGS=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// TestSparsifyLVMTools makes the PV, VG and LVs with LVM's own tools on a
// loop device (root only), an ext4 in a fragmented LV, and checks the
// output with LVM and e2fsck.
func TestSparsifyLVMTools(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("not in -short")
	}
	requireTool(t, "pvcreate", "lvm2")
	needRoot(t)
	dir := t.TempDir()
	diskPath := filepath.Join(dir, "disk.img")
	garbageFile(t, diskPath, 1<<20+32*4<<20, 6)
	loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", diskPath))
	attached := true
	detach := func() {
		if attached {
			lvmTool(t, "vgchange", "-an", "vgt")
			run(t, "losetup", "-d", loop)
			attached = false
		}
	}
	defer detach()
	lvmTool(t, "pvcreate", "-q", loop)
	lvmTool(t, "vgcreate", "-q", "-s", "4m", "vgt", loop)
	// LVM takes the largest free areas first: with none of six extents
	// left, root is split in two.
	for _, lv := range [][2]string{{"a", "8m"}, {"hole1", "12m"}, {"b", "8m"}, {"hole2", "12m"}, {"filler", "72m"}} {
		lvmTool(t, "lvcreate", "-q", "-y", "--activate", "n", "-Zn", "-Wn", "-n", lv[0], "-L", lv[1], "vgt")
	}
	lvmTool(t, "lvremove", "-q", "-y", "vgt/hole1", "vgt/hole2")
	lvmTool(t, "lvcreate", "-q", "-y", "--activate", "n", "-Zn", "-Wn", "-n", "root", "-L", "24m", "vgt")
	var segs [][3]int64
	for _, line := range strings.Split(lvmTool(t, "lvs", "--noheadings", "-o", "seg_start_pe,seg_pe_ranges", "vgt/root"), "\n") {
		var le, a, b int64
		if _, err := fmt.Sscanf(strings.TrimSpace(strings.ReplaceAll(line, loop+":", " ")), "%d %d-%d", &le, &a, &b); err == nil {
			segs = append(segs, [3]int64{le, b - a + 1, a})
		}
	}
	// PV segments: first extent, extents, LV ("" when free).
	type pvseg struct {
		start, n int64
		lv       string
	}
	var pvsegs []pvseg
	for _, line := range strings.Split(lvmTool(t, "pvs", "--segments", "--noheadings", "-o", "pvseg_start,pvseg_size,lv_name", loop), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		var s pvseg
		fmt.Sscan(f[0], &s.start)
		fmt.Sscan(f[1], &s.n)
		if len(f) > 2 {
			s.lv = f[2]
		}
		pvsegs = append(pvsegs, s)
	}
	if len(segs) != 2 {
		t.Fatalf("root's segments: %v", segs)
	}
	detach()
	fsImg := extImage(t, dir, 24<<20)
	fsData, _ := os.ReadFile(fsImg)
	disk, _ := os.ReadFile(diskPath)
	copyLV(disk, fsData, segs, true)
	out, rep := sparsifyBytes(t, disk, SparsifyOptions{})
	free := 0
	for _, s := range pvsegs {
		o, w := out[1<<20+s.start*4<<20:1<<20+(s.start+s.n)*4<<20], disk[1<<20+s.start*4<<20:1<<20+(s.start+s.n)*4<<20]
		switch s.lv {
		case "":
			free++
			if !format.IsZero(o) {
				t.Errorf("free extents %d+%d are not zero", s.start, s.n)
			}
		case "a", "b", "filler":
			if !bytes.Equal(o, w) {
				t.Errorf("LV %s changed", s.lv)
			}
		}
	}
	if free == 0 {
		t.Errorf("no free extents: %v", pvsegs)
	}
	if len(rep.Filesystems) != 5 || rep.Filesystems[0].Kept != "" || rep.Filesystems[4].Type != "ext4" || rep.Filesystems[4].Kept != "" {
		t.Fatalf("report %+v", rep.Filesystems)
	}
	outPath := filepath.Join(dir, "out.img")
	os.WriteFile(outPath, out, 0o644)
	loop = strings.TrimSpace(run(t, "losetup", "-f", "--show", "-r", outPath))
	attached = true
	if s := lvmTool(t, "lvs", "--noheadings", "-o", "lv_name", "vgt"); len(strings.Fields(s)) != 4 {
		t.Errorf("lvs on the output: %q", s)
	}
	lvmTool(t, "pvck", loop)
	detach()
	lv := make([]byte, len(fsData))
	copyLV(out, lv, segs, false)
	p := filepath.Join(dir, "lv.img")
	os.WriteFile(p, lv, 0o644)
	fsckOK("e2fsck", "-fn")(t, p)
	ops := extOps("mkfs.ext4")
	if a, b := ops.files(t, fsImg, dir), ops.files(t, p, dir); fmt.Sprint(a) != fmt.Sprint(b) || len(a) == 0 {
		t.Errorf("files differ: %d vs %d", len(a), len(b))
	}
}

// TestSparsifyGPTDisk: a GPT disk with an EFI system partition, an ext4,
// swap, LUKS and a partition of unknown content. Only free space inside
// the recognised filesystems changes.
func TestSparsifyGPTDisk(t *testing.T) {
	t.Parallel()
	requireTools(t, map[string]string{"sgdisk": "gdisk", "mkfs.vfat": "dosfstools", "mkswap": "util-linux", "cryptsetup": "cryptsetup-bin"})
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	const mib = 1 << 20
	garbageFile(t, disk, 100*mib, 7)
	run(t, "sgdisk", "-n", "1:2048:+16M", "-t", "1:ef00", "-n", "2:0:+32M", "-n", "3:0:+8M", "-t", "3:8200",
		"-n", "4:0:+16M", "-n", "5:0:+16M", disk)
	parts := map[int][2]int64{1: {1 * mib, 16 * mib}, 2: {17 * mib, 32 * mib}, 3: {49 * mib, 8 * mib}, 4: {57 * mib, 16 * mib}, 5: {73 * mib, 16 * mib}}
	esp := filepath.Join(dir, "esp")
	garbageFile(t, esp, 16*mib, 8)
	run(t, "mkfs.vfat", "-F", "16", esp)
	vfat := vfatOps("mkfs.vfat")
	c := newChurn(9)
	add, _ := c.stage(8 * mib)
	vfat.update(t, esp, dir, add, nil)
	_, rm := c.stage(0)
	vfat.update(t, esp, dir, nil, rm)
	ext := extImage(t, dir, 32*mib)
	swap := filepath.Join(dir, "swap")
	garbageFile(t, swap, 8*mib, 9)
	run(t, "mkswap", swap)
	luks := filepath.Join(dir, "luks")
	garbageFile(t, luks, 16*mib, 10)
	cmd := exec.Command("cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", luks, "-")
	cmd.Stdin = strings.NewReader("secret")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("luksFormat: %v\n%s", err, out)
	}
	for n, f := range map[int]string{1: esp, 2: ext, 3: swap, 5: luks} {
		b, _ := os.ReadFile(f)
		w, _ := os.OpenFile(disk, os.O_WRONLY, 0)
		w.WriteAt(b, parts[n][0])
		w.Close()
	}
	outPath := filepath.Join(dir, "out.img")
	rep := sparsifyFile(t, disk, outPath, SparsifyOptions{})
	var lines []string
	for _, f := range rep.Filesystems {
		lines = append(lines, fmt.Sprintf("%s %s %q", f.Where, f.Type, f.Kept))
	}
	want := `partition 1 vfat ""|partition 2 ext4 ""|partition 3 swap ""|partition 4  "no filesystem recognised"|partition 5 crypto_LUKS "encrypted"`
	if strings.Join(lines, "|") != want {
		t.Fatalf("report:\n%s", strings.Join(lines, "\n"))
	}
	for _, f := range rep.Filesystems[:3] {
		if f.SavedBytes == 0 {
			t.Errorf("%s: nothing left out", f.Where)
		}
	}
	// Outside the three filesystems nothing changed: GPT, gaps, p4, p5.
	sameBytes(t, disk, outPath, 0, mib)
	sameBytes(t, disk, outPath, 57*mib, 100*mib-57*mib)
	sameBytes(t, disk, outPath, 49*mib, 4096)
	for n, f := range map[int]string{1: "esp.out", 2: "ext.out"} {
		b := readRange(t, outPath, parts[n][0], parts[n][1])
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	vfat.fsck(t, filepath.Join(dir, "esp.out"))
	fsckOK("e2fsck", "-fn")(t, filepath.Join(dir, "ext.out"))
	if a, b := vfat.files(t, esp, dir), vfat.files(t, filepath.Join(dir, "esp.out"), dir); fmt.Sprint(a) != fmt.Sprint(b) || len(a) == 0 {
		t.Errorf("ESP files differ")
	}
	eo := extOps("mkfs.ext4")
	if a, b := eo.files(t, ext, dir), eo.files(t, filepath.Join(dir, "ext.out"), dir); fmt.Sprint(a) != fmt.Sprint(b) || len(a) == 0 {
		t.Errorf("ext4 files differ")
	}
}

// TestSparsifyXFSLog: a log that has wrapped around is clean after an
// unmount; one left by a shutdown is dirty (root: it mounts the image).
func TestSparsifyXFSLog(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("not in -short")
	}
	requireTools(t, map[string]string{"mkfs.xfs": "xfsprogs", "xfs_logprint": "xfsprogs", "xfs_io": "xfsprogs"})
	needRoot(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	garbageFile(t, img, 320<<20, 11)
	// The test variables let mkfs make a log smaller than 64 MiB, which
	// a few rounds of file creation wrap.
	cmd := exec.Command("mkfs.xfs", "-q", "-f", "-l", "size=1368b", img)
	cmd.Env = append(os.Environ(), "TEST_DIR=/tmp", "TEST_DEV=x", "QA_CHECK_FS=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	mount := []string{"mount", "-o", "loop"}
	wrapped := false
	for round := 0; round < 30 && !wrapped; round++ {
		mounted(t, img, false, mount, func(m string) {
			d := filepath.Join(m, "d")
			os.Mkdir(d, 0o755)
			for i := range 1500 {
				os.WriteFile(filepath.Join(d, strconv.Itoa(i)), []byte("x"), 0o644)
			}
			exec.Command("sync").Run()
			os.RemoveAll(d)
		})
		data, _ := os.ReadFile(img)
		v := memDev(data)
		sb := data[:512]
		bs, ls := int64(be.Uint32(sb[xfsBlockSize:])), int64(be.Uint64(sb[xfsLogStartOff:]))
		ag, agbno := ls>>sb[xfsAGBlkLog], ls&(1<<sb[xfsAGBlkLog]-1)
		lg := xfsLog{d: v, base: (ag*int64(be.Uint32(sb[xfsAGBlocks:])) + agbno) * bs, bbs: int64(be.Uint32(sb[xfsLogBlocks:])) * bs / 512}
		c, err := lg.cycle(0)
		if err != nil {
			t.Fatal(err)
		}
		wrapped = c >= 2 // block 0 written again: the log went round
	}
	if !wrapped {
		t.Fatal("the log did not wrap")
	}
	if s := run(t, "xfs_logprint", "-t", img); !strings.Contains(s, "<CLEAN>") {
		t.Fatalf("xfs_logprint: %s", s)
	}
	out := filepath.Join(dir, "out.img")
	if rep := sparsifyFile(t, img, out, SparsifyOptions{}); rep.Filesystems[0].Kept != "" || rep.SavedBytes == 0 {
		t.Fatalf("wrapped clean log: %+v", rep.Filesystems)
	}
	fsckOK("xfs_repair", "-n", "-f")(t, out)

	mounted(t, img, false, mount, func(m string) {
		// The file reaches the log (fsync) but no unmount record follows.
		f, err := os.Create(filepath.Join(m, "late"))
		if err != nil {
			t.Fatal(err)
		}
		f.Write(bytes.Repeat([]byte("late"), 1<<18))
		f.Sync()
		f.Close()
		run(t, "xfs_io", "-x", "-c", "shutdown", m)
	})
	if s := run(t, "xfs_logprint", "-t", img); !strings.Contains(s, "<DIRTY>") {
		t.Fatalf("xfs_logprint after shutdown: %s", s)
	}
	if rep := sparsifyFile(t, img, out, SparsifyOptions{}); !strings.Contains(rep.Filesystems[0].Kept, "dirty") {
		t.Fatalf("dirty log: %+v", rep.Filesystems)
	}
	if rep := sparsifyFile(t, img, out, SparsifyOptions{Force: true}); rep.Filesystems[0].Kept != "" {
		t.Fatalf("dirty log, forced: %+v", rep.Filesystems)
	}
}

// TestSparsifyXFSProto sparsifies XFS v4 and v5 filesystems that mkfs
// fills from a prototype file (no mount, so no root): xfs_repair passes
// and the blocks of eight files, found with xfs_db, still hold their bytes.
func TestSparsifyXFSProto(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("not in -short")
	}
	requireTools(t, map[string]string{"mkfs.xfs": "xfsprogs", "xfs_db": "xfsprogs"})
	dir := t.TempDir()
	c := newChurn(5)
	add, _ := c.stage(24 << 20)
	proto := []string{"/dev/null", "0 0", "d--755 0 0"}
	names := sortedKeys(add)
	for i, n := range names {
		p := filepath.Join(dir, fmt.Sprintf("src%d", i))
		os.WriteFile(p, add[n], 0o644)
		proto = append(proto, fmt.Sprintf("f%d ---644 0 0 %s", i, p))
	}
	proto = append(proto, "$", "$")
	os.WriteFile(filepath.Join(dir, "proto"), []byte(strings.Join(proto, "\n")+"\n"), 0o644)
	for _, crc := range []string{"1", "0"} {
		img := filepath.Join(dir, "xfs"+crc)
		garbageFile(t, img, 320<<20, 12)
		run(t, "mkfs.xfs", "-q", "-f", "-m", "crc="+crc, "-p", filepath.Join(dir, "proto"), img)
		out := img + ".out"
		rep := sparsifyFile(t, img, out, SparsifyOptions{})
		if rep.Filesystems[0].Kept != "" || rep.SavedBytes < 200<<20 {
			t.Fatalf("crc=%s: %+v", crc, rep.Filesystems)
		}
		fsckOK("xfs_repair", "-n", "-f")(t, out)
		sb := readRange(t, out, 0, 512)
		bs, agblocks := int64(be.Uint32(sb[xfsBlockSize:])), int64(be.Uint32(sb[xfsAGBlocks:]))
		ls := run(t, "xfs_db", "-r", "-c", "ls /", out)
		for i, n := range names[:min(len(names), 8)] {
			var ino int64
			for _, l := range strings.Split(ls, "\n") {
				if f := strings.Fields(l); len(f) >= 6 && f[5] == fmt.Sprintf("f%d", i) {
					ino, _ = strconv.ParseInt(f[1], 10, 64)
				}
			}
			var got []byte
			for _, l := range strings.Split(run(t, "xfs_db", "-r", "-c", fmt.Sprintf("inode %d", ino), "-c", "bmap", out), "\n") {
				var off, start, ag, agbno, count int64
				if _, err := fmt.Sscanf(l, "data offset %d startblock %d (%d/%d) count %d", &off, &start, &ag, &agbno, &count); err == nil {
					got = append(got, readRange(t, out, (ag*agblocks+agbno)*bs, count*bs)...)
				}
			}
			if len(got) < len(add[n]) || !bytes.Equal(got[:len(add[n])], add[n]) {
				t.Fatalf("crc=%s: f%d (%s, inode %d) differs after sparsifying", crc, i, n, ino)
			}
		}
	}
}

func TestHuman(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{1000 << 20: "1000 MiB", 1023 << 20: "1023 MiB", 1 << 30: "1 GiB", 1536 << 20: "1.5 GiB", 999 << 10: "999 KiB", 100: "100 B"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}
