package inspect

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format/formattest"
)

// mbrDisk returns a raw disk of size bytes whose MBR holds entries of
// (type, first LBA, sectors).
func mbrDisk(size int, entries ...[3]uint32) []byte {
	d := make([]byte, size)
	for i, e := range entries {
		p := d[mbrTable+i*mbrEntrySize:]
		p[4] = byte(e[0])
		binary.LittleEndian.PutUint32(p[8:], e[1])
		binary.LittleEndian.PutUint32(p[12:], e[2])
	}
	binary.LittleEndian.PutUint16(d[mbrBootSig:], mbrSignature)
	return d
}

func TestPartitionPastEnd(t *testing.T) {
	t.Parallel()
	r := inspectBytes(t, mbrDisk(1<<20, [3]uint32{0x83, 2048 / 2, 100}, [3]uint32{0x83, 1100, 1 << 30}, [3]uint32{0x83, 1 << 31, 8}))
	if !hasFinding(r, "partition 2 extends past end of disk") || !hasFinding(r, "partition 3 starts past end of disk") {
		t.Errorf("findings %v", r.Findings)
	}
	if n := len(r.PartitionTable.Partitions); n != 2 || r.PartitionTable.Partitions[1].Size != (2048-1100)*512 {
		t.Errorf("partitions %+v", r.PartitionTable.Partitions)
	}
}

func TestEBRLoop(t *testing.T) {
	t.Parallel()
	d := mbrDisk(1<<20, [3]uint32{0x05, 100, 1000})
	// The EBR at LBA 100 points to itself as the next one.
	ebr := d[100*512:]
	binary.LittleEndian.PutUint16(ebr[mbrBootSig:], mbrSignature)
	ebr[mbrTable+4] = 0x83
	binary.LittleEndian.PutUint32(ebr[mbrTable+8:], 10)
	binary.LittleEndian.PutUint32(ebr[mbrTable+12:], 10)
	ebr[mbrTable+16+4] = 0x05
	r := inspectBytes(t, d)
	if !hasFinding(r, "loops") {
		t.Errorf("findings %v", r.Findings)
	}
}

// realDisk builds the GPT test disk once and returns its bytes (192 MiB,
// mostly zero) for patching.
func realDisk(t *testing.T) []byte {
	disk := gptLinuxDisk(t, t.TempDir())
	b := formattest.ReadFile(t, disk)
	return b
}

func TestHostileGPTAndExt4(t *testing.T) {
	t.Parallel()
	orig := realDisk(t)
	root := int64(33 * mib)
	sb := root + extSuperOff
	cases := []struct {
		name, want string
		f          func(d []byte)
	}{
		{"ext4 checksum", "partition 2: ext4 superblock checksum mismatch", func(d []byte) { d[sb+extVolumeName] ^= 1 }},
		{"ext4 block size", "s_log_block_size 40", func(d []byte) { binary.LittleEndian.PutUint32(d[sb+extLogBlockSize:], 40) }},
		{"ext4 blocks count", "s_blocks_count", func(d []byte) { binary.LittleEndian.PutUint32(d[sb+extBlocksCountLo:], 0xffffffff) }},
		{"ext4 inode size", "s_inode_size", func(d []byte) { binary.LittleEndian.PutUint16(d[sb+extInodeSize:], 3) }},
		{"gpt header crc", "using the backup GPT header", func(d []byte) { d[512+gptDiskGUIDOff] ^= 1 }},
		{"gpt entries crc", "GPT entry array checksum mismatch", func(d []byte) { d[1024+gptEntryName] ^= 1; fixGPTHeader(d, 512) }},
		{"gpt entry count", "exceed the 1048576-byte limit", func(d []byte) {
			binary.LittleEndian.PutUint32(d[512+gptNumEntriesOff:], 1<<30)
			fixGPTHeader(d, 512)
		}},
		{"gpt partition past end", "partition 3 extends past end of disk", func(d []byte) {
			e := d[1024+2*128:]
			binary.LittleEndian.PutUint64(e[gptEntryLastLBA:], 1<<40)
			binary.LittleEndian.PutUint32(d[512+gptEntriesCRCOff:], crc32.ChecksumIEEE(d[1024:1024+128*128]))
			fixGPTHeader(d, 512)
		}},
		{"fat sectors", "vfat boot sector: BPB_TotSec", func(d []byte) {
			binary.LittleEndian.PutUint32(d[mib+fatTotSec32:], 0xffffffff)
			d[mib+fatTotSec16], d[mib+fatTotSec16+1] = 0, 0
		}},
		{"swap last page", "swap header: last_page", func(d []byte) { binary.LittleEndian.PutUint32(d[161*mib+swapLastPage:], 0xfffffff0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := bytes.Clone(orig)
			c.f(d)
			start := time.Now()
			r := inspectBytes(t, d)
			if !hasFinding(r, c.want) {
				t.Errorf("no finding %q in %v", c.want, r.Findings)
			}
			// Generous: the host is shared; a hang takes far longer.
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("took %v", el)
			}
		})
	}
	// A root directory inode pointing at a huge extent tree must not
	// read unbounded data: corrupt every inode table entry's i_block.
	t.Run("ext4 garbage inodes", func(t *testing.T) {
		d := bytes.Clone(orig)
		for i := root + 2*mib; i < root+8*mib; i += 4 {
			binary.LittleEndian.PutUint32(d[i:], 0x7fff_f30a)
		}
		inspectBytes(t, d)
	})
}

// fixGPTHeader recomputes the header CRC of the GPT header at off.
func fixGPTHeader(d []byte, off int) {
	h := d[off : off+gptMinHeaderSize]
	binary.LittleEndian.PutUint32(h[gptHeaderCRCOff:], 0)
	binary.LittleEndian.PutUint32(h[gptHeaderCRCOff:], crc32.ChecksumIEEE(h))
}

// TestLVMLabel checks a hand-built PV label and metadata area (pvcreate
// needs device-mapper and root, so it is not used).
func TestLVMLabel(t *testing.T) {
	t.Parallel()
	d := make([]byte, 4<<20)
	l := d[512:]
	copy(l, lvmLabelID)
	binary.LittleEndian.PutUint64(l[8:], 1)
	binary.LittleEndian.PutUint32(l[lvmLabelOffsetXL:], 32)
	copy(l[lvmLabelTypeOff:], lvmLabelType)
	copy(l[32:], "abcdefGHIJklmnOPQRstuvWXYZ012345")
	binary.LittleEndian.PutUint64(l[64:], uint64(len(d)))
	binary.LittleEndian.PutUint64(l[72:], 1<<20) // data area
	binary.LittleEndian.PutUint64(l[80:], 0)
	// zero pair ends data areas at 88; metadata area at 4096
	binary.LittleEndian.PutUint64(l[104:], 4096)
	binary.LittleEndian.PutUint64(l[112:], 1<<20-4096)
	mda := d[4096:]
	copy(mda[4:], lvmMDAMagic)
	text := "vg0 {\nid = \"x\"\nextent_size = 8192 # 4 MiB\nlogical_volumes {\nroot {\nsegment_count = 1\nsegment1 {\nextent_count = 10\n}\n}\nswap {\nsegment1 {\nextent_count = 2\n}\n}\n}\n}\n"
	binary.LittleEndian.PutUint64(mda[40:], 512)
	binary.LittleEndian.PutUint64(mda[48:], uint64(len(text)))
	copy(mda[512:], text)
	r := inspectBytes(t, d)
	fs := r.Filesystem
	if fs == nil || fs.Type != "LVM2_member" || fs.UUID != "abcdef-GHIJ-klmn-OPQR-stuv-WXYZ-012345" || fs.Size != int64(len(d)) {
		t.Fatalf("lvm %+v %v", fs, r.Findings)
	}
	want := []LogicalVolume{{"vg0", "root", 10 * 4 << 20}, {"vg0", "swap", 2 * 4 << 20}}
	if len(fs.Volumes) != 2 || fs.Volumes[0] != want[0] || fs.Volumes[1] != want[1] {
		t.Errorf("volumes %+v", fs.Volumes)
	}
}

// FuzzInspect runs every parser on mutated superblock seeds: the seeds in
// testdata/inspect are the first sectors of real filesystems and tables.
func FuzzInspect(f *testing.F) {
	formattest.AddSeeds(f, filepath.Join("..", "testdata", "inspect"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		img, err := openMem(data)
		if err != nil {
			return
		}
		start := time.Now()
		Inspect(img, Options{})
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("inspect took %v", el)
		}
	})
}

// TestSeedExt4Tree reads the OS from the 64 KiB ext4 seed (1 KiB blocks,
// no journal), built by mkfs.ext4 -d from a tree with os-release and a
// usrmerged /bin/sh.
func TestSeedExt4Tree(t *testing.T) {
	t.Parallel()
	d := formattest.ReadFile(t, filepath.Join("..", "testdata", "inspect", "ext4-tree.seed"))
	r := inspectBytes(t, d)
	if r.Filesystem == nil || r.Filesystem.Type != "ext4" || r.Filesystem.Label != "seed" {
		t.Fatalf("fs %+v", r.Filesystem)
	}
	if o := r.OS; o == nil || o.Distro != "debian" || o.Version != "12" || o.Arch == "" || o.Boot != "none" {
		t.Errorf("os %+v findings %v", r.OS, r.Findings)
	}
}

// BenchmarkInspect3GiB inspects a sparse 3 GiB GPT disk whose ext4 root
// fills it, converted to qcow2 when a qcow2 reader is registered.
func BenchmarkInspect3GiB(b *testing.B) {
	requireTools(b, map[string]string{"sgdisk": "gdisk", "mkfs.ext4": "e2fsprogs"})
	dir := b.TempDir()
	disk := filepath.Join(dir, "big.raw")
	sparseFile(b, disk, 3<<30)
	run(b, "sgdisk", "-n", "1:1M:0", "-t", "1:8300", disk)
	root := filepath.Join(dir, "root.fs")
	sparseFile(b, root, 3<<30-2*mib)
	run(b, "mkfs.ext4", "-q", "-F", "-d", linuxTree(b), root)
	place(b, disk, root, mib)
	path := disk
	if _, err := lookupFormat("qcow2"); err == nil {
		path = filepath.Join(dir, "big.qcow2")
		formattest.Convert(b, disk, path, "qcow2")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := inspectFile(b, path)
		if r.OS == nil || len(r.PartitionTable.Partitions) != 1 {
			b.Fatalf("report %+v", r)
		}
	}
}
