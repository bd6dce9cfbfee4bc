package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// sectorSize is the logical block size MBR tables are read with. GPT
// disks may also have 4096-byte logical blocks (4Kn): the sector size is
// the one whose LBA 1 holds the GPT signature.
const (
	sectorSize   = 512
	sectorSize4K = 4096
)

// MBR layout (sector 0).
const (
	mbrDiskSig    = 440    // u32 disk signature
	mbrTable      = 446    // four 16-byte partition entries
	mbrEntrySize  = 16     // bytes per entry
	mbrBootSig    = 510    // 0x55 0xAA
	mbrBootable   = 0x80   // status byte of the active partition
	mbrTypeGPT    = 0xee   // protective MBR entry covering a GPT disk
	mbrTypeEFI    = 0xef   // EFI System partition on an MBR disk
	mbrMaxLogical = 128    // logical partitions followed in an EBR chain
	mbrMaxEntries = 4      // primary entries
	mbrSignature  = 0xaa55 // little-endian u16 at mbrBootSig
)

// GPT header layout (UEFI spec 5.3.2), at LBA 1 and the disk's last LBA.
const (
	gptSignature     = "EFI PART"
	gptHeaderSizeOff = 12 // u32 header size, 92..sector size
	gptHeaderCRCOff  = 16 // u32 CRC32 of the header with this field zeroed
	gptMyLBAOff      = 24 // u64 LBA of this header
	gptDiskGUIDOff   = 56 // disk GUID
	gptEntriesLBAOff = 72 // u64 LBA of the entry array
	gptNumEntriesOff = 80 // u32 number of entries
	gptEntrySizeOff  = 84 // u32 size of one entry, 128 × 2^n
	gptEntriesCRCOff = 88 // u32 CRC32 of the entry array
	gptFirstUsable   = 40 // u64 first LBA a partition may use
	gptLastUsable    = 48 // u64 last LBA a partition may use
	gptMinHeaderSize = 92
	gptMinEntrySize  = 128
	// gptMaxArray caps the entry array read: the spec's minimum is
	// 16 KiB and real tables never exceed a few hundred KiB.
	gptMaxArray = 1 << 20
	// Entry layout.
	gptEntryType              = 0  // partition type GUID
	gptEntryUnique            = 16 // unique partition GUID
	gptEntryFirstLBA          = 32 // u64
	gptEntryLastLBA           = 40 // u64, inclusive
	gptEntryAttrs             = 48 // u64 attribute flags
	gptEntryName              = 56 // 72 bytes of UTF-16LE
	gptNameBytes              = 72
	gptAttrLegacyBIOSBootable = 1 << 2
)

// GUID of the EFI System partition type.
const gptTypeESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"

// readGPT parses the GPT of disk; ok is false when there is none (neither
// header carries the signature).
func readGPT(disk dev, r *Report) (pt *PartitionTable, ok bool, err error) {
	ss := int64(sectorSize)
	primary, perr := gptHeader(disk, 1, ss)
	if errors.Is(perr, errNoGPT) {
		// A 4Kn disk: the header is at byte 4096, and its backup in the
		// last 4 KiB.
		if p4, err4 := gptHeader(disk, 1, sectorSize4K); !errors.Is(err4, errNoGPT) {
			primary, perr, ss = p4, err4, sectorSize4K
		} else if b4, _ := gptHeader(disk, disk.size/sectorSize4K-1, sectorSize4K); b4 != nil {
			ss = sectorSize4K
		}
	}
	if isImageErr(perr) {
		return nil, false, perr
	}
	lastLBA := disk.size/ss - 1
	hdr := primary
	if perr != nil {
		backup, berr := gptHeader(disk, lastLBA, ss)
		if isImageErr(berr) {
			return nil, false, berr
		}
		if errors.Is(perr, errNoGPT) && errors.Is(berr, errNoGPT) {
			return nil, false, nil
		}
		if !errors.Is(perr, errNoGPT) {
			r.addf(Error, "primary GPT header: %v", perr)
		}
		if berr != nil {
			if !errors.Is(berr, errNoGPT) {
				r.addf(Error, "backup GPT header: %v", berr)
			}
			return nil, false, nil
		}
		r.addf(Warning, "using the backup GPT header at LBA %d", lastLBA)
		hdr = backup
	}
	pt = &PartitionTable{Type: "gpt", UUID: guid(hdr[gptDiskGUIDOff:]), SectorSize: ss, Partitions: []Partition{}}
	n := int64(le.Uint32(hdr[gptNumEntriesOff:]))
	esize := int64(le.Uint32(hdr[gptEntrySizeOff:]))
	elba := int64(le.Uint64(hdr[gptEntriesLBAOff:]))
	first, last := min(le.Uint64(hdr[gptFirstUsable:]), uint64(lastLBA)), min(le.Uint64(hdr[gptLastUsable:]), uint64(lastLBA))
	pt.meta = []span{{end: int64(max(first, 2)) * ss}, {start: (int64(last) + 1) * ss, end: disk.size},
		{start: 0, end: ss * 2}, {start: (lastLBA) * ss, end: disk.size}}
	if elba >= 0 && elba <= lastLBA && n*esize <= gptMaxArray {
		pt.meta = append(pt.meta, span{start: elba * ss, end: min(elba*ss+n*esize, disk.size)})
	}
	switch {
	case esize < gptMinEntrySize || esize%gptMinEntrySize != 0 || esize&(esize-1) != 0:
		r.addf(Error, "GPT header: entry size %d is not 128 × a power of two", esize)
		return pt, true, nil
	case n*esize > gptMaxArray:
		r.addf(Error, "GPT header: %d entries of %d bytes exceed the %d-byte limit", n, esize, gptMaxArray)
		return pt, true, nil
	case elba < 0 || elba > lastLBA:
		r.addf(Error, "GPT header: entry array LBA %d is past the end of the disk", elba)
		return pt, true, nil
	}
	arr, err := disk.read(elba*ss, int(n*esize))
	if err != nil {
		if isImageErr(err) {
			return nil, false, err
		}
		r.addf(Error, "GPT entry array: %v", err)
		return pt, true, nil
	}
	if crc32.ChecksumIEEE(arr) != le.Uint32(hdr[gptEntriesCRCOff:]) {
		r.addf(Error, "GPT entry array checksum mismatch")
	}
	for i := int64(0); i < n; i++ {
		e := arr[i*esize : (i+1)*esize]
		if format.IsZero(e[gptEntryType : gptEntryType+16]) {
			continue
		}
		num := int(i + 1)
		first, last := le.Uint64(e[gptEntryFirstLBA:]), le.Uint64(e[gptEntryLastLBA:])
		p := Partition{
			Number:   num,
			Type:     guid(e[gptEntryType:]),
			UUID:     guid(e[gptEntryUnique:]),
			Name:     utf16le(e[gptEntryName : gptEntryName+gptNameBytes]),
			Bootable: le.Uint64(e[gptEntryAttrs:])&gptAttrLegacyBIOSBootable != 0,
		}
		p.TypeName = gptTypeNames[p.Type]
		if p.TypeName == "" {
			p.TypeName = "unknown"
		}
		if first > last {
			r.addf(Error, "partition %d: first LBA %d is after last LBA %d", num, first, last)
			continue
		}
		if !clipPartition(&p, first, last-first+1, disk.size, ss, r) {
			continue
		}
		pt.Partitions = append(pt.Partitions, p)
	}
	checkOverlaps(pt.Partitions, r)
	return pt, true, nil
}

var errNoGPT = errors.New("no GPT signature")

// gptHeader reads and validates the GPT header at lba.
func gptHeader(disk dev, lba, ss int64) ([]byte, error) {
	if lba < 1 || (lba+1)*ss > disk.size {
		return nil, errNoGPT
	}
	hdr, err := disk.read(lba*ss, int(ss))
	if err != nil {
		return nil, err
	}
	if string(hdr[:8]) != gptSignature {
		return nil, errNoGPT
	}
	hsize := le.Uint32(hdr[gptHeaderSizeOff:])
	if hsize < gptMinHeaderSize || int64(hsize) > ss {
		return nil, fmt.Errorf("header size %d is outside %d..%d", hsize, gptMinHeaderSize, ss)
	}
	c := bytes.Clone(hdr[:hsize])
	copy(c[gptHeaderCRCOff:gptHeaderCRCOff+4], []byte{0, 0, 0, 0})
	if crc32.ChecksumIEEE(c) != le.Uint32(hdr[gptHeaderCRCOff:]) {
		return nil, fmt.Errorf("header checksum mismatch at LBA %d", lba)
	}
	if my := le.Uint64(hdr[gptMyLBAOff:]); my != uint64(lba) {
		return nil, fmt.Errorf("header at LBA %d says it is at LBA %d", lba, my)
	}
	return hdr, nil
}

// clipPartition sets p's byte range from sectors, reporting a partition
// that starts or ends past the end of the disk; false drops it.
func clipPartition(p *Partition, firstLBA, sectors uint64, diskSize, ss int64, r *Report) bool {
	maxLBA := uint64(diskSize / ss)
	if firstLBA >= maxLBA {
		r.addf(Error, "partition %d starts past end of disk (LBA %d, disk has %d sectors)", p.Number, firstLBA, maxLBA)
		return false
	}
	if sectors > maxLBA-firstLBA {
		r.addf(Error, "partition %d extends past end of disk (ends at LBA %d, disk has %d sectors)", p.Number, firstLBA+sectors, maxLBA)
		sectors = maxLBA - firstLBA
	}
	p.Start = int64(firstLBA) * ss
	p.Size = int64(sectors) * ss
	return true
}

func checkOverlaps(parts []Partition, r *Report) {
	for i := range parts {
		for j := i + 1; j < len(parts); j++ {
			a, b := parts[i], parts[j]
			if a.Start < b.Start+b.Size && b.Start < a.Start+a.Size && a.Type != "0x05" && a.Type != "0x0f" && a.Type != "0x85" {
				r.addf(Warning, "partitions %d and %d overlap", a.Number, b.Number)
			}
		}
	}
}

// readMBR parses an MBR partition table from sector 0 (already known to
// carry the boot signature), following one chain of extended boot
// records for logical partitions.
func readMBR(disk dev, s0 []byte, r *Report) (*PartitionTable, error) {
	pt := &PartitionTable{Type: "mbr", UUID: fmt.Sprintf("%08x", le.Uint32(s0[mbrDiskSig:])), Partitions: []Partition{},
		meta: []span{{end: sectorSize}}}
	for i := 0; i < mbrMaxEntries; i++ {
		e := s0[mbrTable+i*mbrEntrySize : mbrTable+(i+1)*mbrEntrySize]
		typ := e[4]
		if typ == 0 {
			continue
		}
		p := mbrPartition(i+1, e, 0)
		if !clipPartition(&p, uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:])), disk.size, sectorSize, r) {
			continue
		}
		pt.Partitions = append(pt.Partitions, p)
		if isExtended(typ) {
			if err := readEBRs(disk, p.Start/sectorSize, pt, r); err != nil {
				return nil, err
			}
		}
	}
	checkOverlaps(pt.Partitions, r)
	return pt, nil
}

func mbrPartition(num int, e []byte, _ int64) Partition {
	typ := e[4]
	p := Partition{Number: num, Type: fmt.Sprintf("0x%02x", typ), Bootable: e[0] == mbrBootable}
	p.TypeName = mbrTypeNames[typ]
	if p.TypeName == "" {
		p.TypeName = "unknown"
	}
	return p
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// readEBRs follows the extended boot record chain starting at the
// extended partition's first LBA; logical partitions number from 5.
func readEBRs(disk dev, extLBA int64, pt *PartitionTable, r *Report) error {
	seen := map[int64]bool{}
	lba := extLBA
	for num := 5; num < 5+mbrMaxLogical; num++ {
		if seen[lba] {
			r.addf(Error, "extended boot record chain loops at LBA %d", lba)
			return nil
		}
		seen[lba] = true
		s, err := disk.read(lba*sectorSize, sectorSize)
		if err != nil {
			if isImageErr(err) {
				return err
			}
			r.addf(Error, "extended boot record at LBA %d: %v", lba, err)
			return nil
		}
		if le.Uint16(s[mbrBootSig:]) != mbrSignature {
			r.addf(Error, "extended boot record at LBA %d has no boot signature", lba)
			return nil
		}
		pt.meta = append(pt.meta, span{start: lba * sectorSize, end: (lba + 1) * sectorSize})
		e := s[mbrTable : mbrTable+mbrEntrySize]
		if e[4] != 0 {
			p := mbrPartition(num, e, lba)
			if clipPartition(&p, uint64(lba)+uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:])), disk.size, sectorSize, r) {
				pt.Partitions = append(pt.Partitions, p)
			}
		}
		next := s[mbrTable+mbrEntrySize : mbrTable+2*mbrEntrySize]
		if next[4] == 0 {
			return nil
		}
		lba = extLBA + int64(le.Uint32(next[8:]))
	}
	r.addf(Warning, "more than %d logical partitions; the rest are not listed", mbrMaxLogical)
	return nil
}

// mbrLooksValid reports whether sector 0's entries are plausible: status
// bytes 0x00 or 0x80 and at least one used entry.
func mbrLooksValid(s0 []byte) bool {
	if le.Uint16(s0[mbrBootSig:]) != mbrSignature {
		return false
	}
	used := 0
	for i := 0; i < mbrMaxEntries; i++ {
		e := s0[mbrTable+i*mbrEntrySize:]
		if e[0] != 0 && e[0] != mbrBootable {
			return false
		}
		if e[4] != 0 {
			used++
		}
	}
	return used > 0
}

func isImageErr(err error) bool {
	var ie *imageError
	return errors.As(err, &ie)
}

var gptTypeNames = map[string]string{
	"c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
	"21686148-6449-6e6f-744e-656564454649": "BIOS boot",
	"0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
	"e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
	"0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
	"a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
	"ca7d7ccb-63ed-4c53-861c-1742536059cc": "Linux LUKS",
	"933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
	"3b8f8425-20e0-4f3b-907f-1a25a76f98e8": "Linux server data",
	"4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
	"44479540-f297-41b2-9af7-d131d5f0458a": "Linux root (x86)",
	"b921b045-1df0-41c3-af44-4c6f280d3fae": "Linux root (ARM-64)",
	"69dad710-2ce4-4e3c-b16c-21a1d49abed3": "Linux root (ARM)",
	"bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
	"ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
	"e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
	"de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery environment",
	"5808c8aa-7e8f-42e0-85d2-e1e90434cfb3": "Microsoft LDM metadata",
	"af9b60a0-1431-4f62-bc68-3311714a69ad": "Microsoft LDM data",
	"48465300-0000-11aa-aa11-00306543ecac": "Apple HFS/HFS+",
	"7c3457ef-0000-11aa-aa11-00306543ecac": "Apple APFS",
	"6a898cc3-1dd2-11b2-99a6-080020736631": "Solaris /usr & Apple ZFS",
	"516e7cb6-6ecf-11d6-8ff8-00022d09712b": "FreeBSD UFS",
	"83bd6b9d-7f41-11dc-be0b-001560b84f0f": "FreeBSD boot",
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12",
	0x04: "FAT16 <32M",
	0x05: "Extended",
	0x06: "FAT16",
	0x07: "HPFS/NTFS/exFAT",
	0x0b: "W95 FAT32",
	0x0c: "W95 FAT32 (LBA)",
	0x0e: "W95 FAT16 (LBA)",
	0x0f: "W95 Ext'd (LBA)",
	0x27: "Hidden NTFS WinRE",
	0x82: "Linux swap / Solaris",
	0x83: "Linux",
	0x85: "Linux extended",
	0x8e: "Linux LVM",
	0xa5: "FreeBSD",
	0xa6: "OpenBSD",
	0xee: "GPT",
	0xef: "EFI (FAT-12/16/32)",
	0xfd: "Linux raid autodetect",
}

// isESP reports whether p is an EFI System partition.
func isESP(p Partition) bool {
	return p.Type == gptTypeESP || strings.EqualFold(p.Type, fmt.Sprintf("0x%02x", mbrTypeEFI))
}
