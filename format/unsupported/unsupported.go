// Package unsupported recognises the formats qemu-img 7.2 probes that
// diskimg does not read: bochs, cloop, dmg and luks. A file in one of them
// is refused by name (format.UnsupportedError) instead of being read as a
// raw disk, which would give the container's bytes as the guest's.
//
// The signatures are qemu's probes: bochs and cloop by their headers, luks
// by its header (LUKS2 too, which qemu 7.2 does not probe but cryptsetup
// writes), dmg by its name, as qemu probes it, and by the UDIF trailer
// ("koly") qemu's driver looks for near the end. qemu's vvfat registers no
// probe: it is a directory behind a "fat:" name, never a file's contents.
package unsupported

import (
	"encoding/binary"
	"strings"

	"github.com/diskimg/diskimg/format"
)

// Priority puts these probes after every format diskimg reads and before
// raw: where qemu would choose a readable format over them, so does
// diskimg.
const Priority = 70

// probeLen is how much of a file qemu's probes look at: the first 2 KiB,
// zero-padded past the end of a shorter file.
const probeLen = 2048

// head returns the bytes qemu's probes see, nil for an empty file (which
// qemu always opens as raw).
func head(f format.File) []byte {
	if f.Size() == 0 {
		return nil
	}
	b := make([]byte, probeLen)
	f.ReadAt(b, 0)
	return b
}

// cString reports whether field holds s followed by a NUL.
func cString(field []byte, s string) bool {
	return len(field) > len(s) && string(field[:len(s)]) == s && field[len(s)] == 0
}

// Bochs growing ("Redolog"/"Growing") images, versions 1 and 2: the
// header qemu's bochs driver probes, little-endian.
const (
	bochsMagic    = "Bochs Virtual HD Image" // NUL-terminated in 32 bytes
	bochsType     = "Redolog"                // at 32, in 16 bytes
	bochsSubtype  = "Growing"                // at 48, in 16 bytes
	bochsVersion  = 64                       // uint32
	bochsVersion1 = 0x00010000
	bochsVersion2 = 0x00020000
)

// Bochs reports whether f is a Bochs growing image.
func Bochs(f format.File) bool {
	b := head(f)
	if b == nil || !cString(b[0:32], bochsMagic) || !cString(b[32:48], bochsType) || !cString(b[48:64], bochsSubtype) {
		return false
	}
	v := binary.LittleEndian.Uint32(b[bochsVersion:])
	return v == bochsVersion1 || v == bochsVersion2
}

// cloopMagic starts a cloop (compressed loop) image, version 2.0: a shell
// script that mounts it.
const cloopMagic = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"

// Cloop reports whether f is a cloop image.
func Cloop(f format.File) bool {
	b := head(f)
	return b != nil && string(b[:len(cloopMagic)]) == cloopMagic
}

// LUKS headers (big-endian): magic and version at the start of the file,
// and LUKS2's secondary header at one of the offsets cryptsetup may put
// it (after a primary header and JSON area of 16 KiB to 4 MiB).
const (
	luksMagic      = "LUKS\xba\xbe"
	luks2Secondary = "SKUL\xba\xbe"
	luksVersion    = 6 // uint16
)

var luks2SecondaryOffsets = []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}

// LUKS returns the LUKS version of f's header (1 or 2), 0 when it has none.
func LUKS(f format.File) int {
	if b := head(f); b != nil && string(b[:len(luksMagic)]) == luksMagic {
		if v := binary.BigEndian.Uint16(b[luksVersion:]); v == 1 || v == 2 {
			return int(v)
		}
	}
	for _, off := range luks2SecondaryOffsets {
		var b [8]byte
		if n, _ := f.ReadAt(b[:], off); n == len(b) && string(b[:len(luks2Secondary)]) == luks2Secondary && binary.BigEndian.Uint16(b[luksVersion:]) == 2 {
			return 2
		}
	}
	return 0
}

// The UDIF trailer of a DMG: "koly", version 4 and its own size, 512,
// big-endian, in the last 512 bytes. qemu looks for the magic in the last
// 515 bytes (the last 511 of the second-last sector and the first 4 of the
// last), as a DMG need not be a whole number of sectors.
const (
	kolyMagic   = "koly"
	kolyVersion = 4
	kolySize    = 512
	kolyWindow  = 515
)

// DMG reports whether f is named *.dmg, which qemu probes as dmg, or ends
// with a UDIF trailer.
func DMG(f format.File) bool {
	if name := f.Name(); len(name) > 4 && strings.HasSuffix(name, ".dmg") {
		return true
	}
	return kolyAt(f) >= 0
}

// kolyAt returns the file offset of f's UDIF trailer, -1 when it has none.
func kolyAt(f format.File) int64 {
	size := f.Size()
	if size < kolySize {
		return -1
	}
	start := max(0, size-kolySize-(kolySize-1))
	b := make([]byte, size-start)
	if n, _ := f.ReadAt(b, start); n != len(b) {
		return -1
	}
	for i := 0; i+12 <= len(b); i++ {
		t := b[i:]
		if string(t[:len(kolyMagic)]) == kolyMagic && binary.BigEndian.Uint32(t[4:]) == kolyVersion && binary.BigEndian.Uint32(t[8:]) == kolySize {
			return start + int64(i)
		}
	}
	return -1
}

func init() {
	register("bochs", Priority, Bochs, func(format.File) string { return "" })
	register("cloop", Priority+1, Cloop, func(format.File) string { return "" })
	register("luks", Priority+2, func(f format.File) bool { return LUKS(f) != 0 }, func(f format.File) string {
		if LUKS(f) == 2 {
			return "a LUKS2 encrypted volume; diskimg does not decrypt"
		}
		return "a LUKS1 encrypted volume; diskimg does not decrypt"
	})
	register("dmg", Priority+3, DMG, func(f format.File) string {
		if kolyAt(f) < 0 {
			return "qemu-img takes a file named *.dmg for one; -f raw reads it as a raw disk"
		}
		return ""
	})
}

// register adds a format that is recognised and refused; detail says
// more about the file in the message.
func register(name string, prio int, probe func(format.File) bool, detail func(format.File) string) {
	format.Register(&format.Format{
		Name:     name,
		Priority: prio,
		Probe:    probe,
		Unread:   true,
		Open: func(f format.File, _ *format.Opener) (format.Image, error) {
			return nil, &format.UnsupportedError{Format: name, Detail: detail(f)}
		},
	})
}
