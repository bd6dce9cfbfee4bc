package inspect

import (
	"errors"
	"fmt"
	"strconv"
)

// Windows detection on an NTFS volume: \Windows\System32 must exist; the
// SOFTWARE hive names the product, a system DLL's PE header the
// architecture.

const (
	winSystem32   = `Windows\System32`
	winSoftware   = `Windows\System32\config\SOFTWARE`
	winVersionKey = `Microsoft\Windows NT\CurrentVersion`
	winUnknown    = "windows, version unknown"
)

// winPEFiles name the architecture through their PE headers.
var winPEFiles = []string{`Windows\System32\kernel32.dll`, `Windows\System32\ntoskrnl.exe`}

// PE/COFF headers.
const (
	peDOSMagic    = "MZ"
	peLfanew      = 0x3c // u32 offset of the PE signature
	peDOSHeader   = 0x40
	peSignature   = "PE\x00\x00"
	peMachine     = 4  // u16 after the signature
	peOptMagic    = 24 // u16 optional header magic after the signature
	peHeaderRead  = 26
	peMaxLfanew   = 64 << 10
	peOptMagic32  = 0x10b
	peOptMagic64  = 0x20b
	peMachineI386 = 0x14c
	peMachineAMD  = 0x8664
	peMachineARM  = 0x1c4 // ARMv7 Thumb-2
	peMachineA64  = 0xaa64
)

var peMachines = map[uint16]string{
	peMachineI386: "i386",
	peMachineAMD:  "x86_64",
	peMachineARM:  "arm",
	peMachineA64:  "aarch64",
}

// windowsOS detects Windows on the NTFS volume on d; nil when there is
// no \Windows\System32. Problems reading the hive or PE files become
// findings prefixed with where.
func windowsOS(d dev, where string, r *Report) (*OS, error) {
	bs, err := d.read(0, 512)
	if err != nil {
		return nil, err
	}
	v, err := parseNTFSBoot(d, bs)
	if err != nil {
		return nil, nil // already reported by the probe
	}
	if err := v.loadMFT(); err != nil {
		if isImageErr(err) {
			return nil, err
		}
		r.addf(Warning, "%s: ntfs: %v", where, err)
		return nil, nil
	}
	if _, err := v.openPath(winSystem32); err != nil {
		if isImageErr(err) {
			return nil, err
		}
		if !errors.Is(err, errNotFound) {
			r.addf(Warning, "%s: ntfs: looking for \\%s: %v", where, winSystem32, err)
		}
		return nil, nil
	}
	o := &OS{Type: "windows", Distro: "windows", PrettyName: winUnknown}
	if err := windowsVersion(v, o); err != nil {
		if isImageErr(err) {
			return nil, err
		}
		r.addf(Warning, "%s: windows registry \\%s: %v", where, winSoftware, err)
	}
	for _, p := range winPEFiles {
		s, err := v.file(p)
		if err == nil {
			var h []byte
			if h, err = peHeader(s.readAt, s.size); err == nil {
				o.Arch, o.Bits = peArch(h)
				break
			}
		}
		if isImageErr(err) {
			return nil, err
		}
	}
	return o, nil
}

// windowsVersion fills o from the SOFTWARE hive's CurrentVersion key.
func windowsVersion(v *ntfsVol, o *OS) error {
	s, err := v.file(winSoftware)
	if err != nil {
		return err
	}
	h, err := openHive(s.readAt, s.size)
	if err != nil {
		return err
	}
	return hiveVersion(h, o)
}

// hiveVersion fills o from the CurrentVersion key of a SOFTWARE hive.
func hiveVersion(h *hive, o *OS) error {
	k, err := h.openKey(winVersionKey)
	if err != nil {
		return err
	}
	name, err := h.stringValue(k, "ProductName")
	if err != nil {
		return err
	}
	o.PrettyName = name
	// Windows 10 and later keep CurrentVersion at "6.3" and record the
	// real version in two DWORDs.
	if maj, err := h.dwordValue(k, "CurrentMajorVersionNumber"); err == nil {
		minor, _ := h.dwordValue(k, "CurrentMinorVersionNumber")
		o.Version = strconv.Itoa(int(maj)) + "." + strconv.Itoa(int(minor))
	} else if cv, err := h.stringValue(k, "CurrentVersion"); err == nil {
		o.Version = cv
	}
	o.Build, _ = h.stringValue(k, "CurrentBuild")
	o.DisplayVersion, _ = h.stringValue(k, "DisplayVersion")
	return nil
}

// peHeader returns the bytes of a PE file from its signature through the
// optional header magic.
func peHeader(read func(off int64, n int) ([]byte, error), size int64) ([]byte, error) {
	if size < peDOSHeader {
		return nil, errors.New("file is too small for a DOS header")
	}
	dos, err := read(0, peDOSHeader)
	if err != nil {
		return nil, err
	}
	if string(dos[:2]) != peDOSMagic {
		return nil, errors.New("no MZ signature")
	}
	off := int64(le.Uint32(dos[peLfanew:]))
	if off > peMaxLfanew || off+peHeaderRead > size {
		return nil, fmt.Errorf("e_lfanew %d is past the file", off)
	}
	h, err := read(off, peHeaderRead)
	if err != nil {
		return nil, err
	}
	if string(h[:4]) != peSignature {
		return nil, errors.New("no PE signature")
	}
	return h, nil
}

// peArch names the machine of a PE header, as uname -m does.
func peArch(h []byte) (string, int) {
	m := le.Uint16(h[peMachine:])
	name := peMachines[m]
	if name == "" {
		name = fmt.Sprintf("unknown-%#x", m)
	}
	bits := 0
	switch le.Uint16(h[peOptMagic:]) {
	case peOptMagic32:
		bits = 32
	case peOptMagic64:
		bits = 64
	}
	return name, bits
}
