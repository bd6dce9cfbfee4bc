package inspect

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Windows detection on an NTFS volume: \Windows\System32 must exist; the
// SOFTWARE hive names the product, a system DLL's PE header the
// architecture.

const (
	winSystem32 = `Windows\System32`
	winSoftware = `Windows\System32\config\SOFTWARE`
	winSystem   = `Windows\System32\config\SYSTEM`
	winKernel   = `Windows\System32\ntoskrnl.exe`
	// win11Build is the first build of Windows 11 (client).
	win11Build    = 22000
	winVersionKey = `Microsoft\Windows NT\CurrentVersion`
	winUnknown    = "windows, version unknown"
)

// winPEFiles name the architecture through their PE headers.
var winPEFiles = []string{`Windows\System32\kernel32.dll`, winKernel}

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
	for _, hv := range []struct {
		path string
		read func(*hive, *OS) error
	}{{winSoftware, hiveVersion}, {winSystem, hiveSystem}} {
		err := readHive(v, hv.path, o, hv.read)
		if isImageErr(err) {
			return nil, err
		}
		if err != nil {
			r.addf(Warning, "%s: windows registry \\%s: %v", where, hv.path, err)
		}
	}
	for _, p := range winPEFiles {
		s, err := v.file(p)
		if err == nil {
			var h []byte
			if h, err = peHeader(s.readAt, s.size); err == nil {
				o.Arch, o.Bits = peArch(h)
				// The kernel's version resource stands in for a SOFTWARE
				// hive that does not name the version.
				if p == winKernel && (o.Version == "" || o.Build == "") {
					peVersion(s.readAt, s.size, o)
				}
			}
		}
		if isImageErr(err) {
			return nil, err
		}
	}
	windowsName(o)
	return o, nil
}

// readHive opens the registry hive file at path and hands it to read.
func readHive(v *ntfsVol, path string, o *OS, read func(*hive, *OS) error) error {
	s, err := v.file(path)
	if err != nil {
		return err
	}
	h, err := openHive(s.readAt, s.size)
	if err != nil {
		return err
	}
	return read(h, o)
}

// hiveVersion fills o from the CurrentVersion key of a SOFTWARE hive,
// falling back from each value to its older or newer name.
func hiveVersion(h *hive, o *OS) error {
	k, err := h.openKey(winVersionKey)
	if err != nil {
		return err
	}
	str := func(names ...string) string {
		for _, n := range names {
			if s, err := h.stringValue(k, n); err == nil && s != "" {
				return s
			}
		}
		return ""
	}
	if name := str("ProductName"); name != "" {
		o.PrettyName = name
	}
	o.Edition = str("EditionID")
	o.InstallationType = str("InstallationType")
	// Windows 10 and later keep CurrentVersion at "6.3" and record the
	// real version in two DWORDs.
	if maj, err := h.dwordValue(k, "CurrentMajorVersionNumber"); err == nil {
		minor, _ := h.dwordValue(k, "CurrentMinorVersionNumber")
		o.Version = strconv.Itoa(int(maj)) + "." + strconv.Itoa(int(minor))
	} else {
		o.Version = str("CurrentVersion")
	}
	o.Build = str("CurrentBuild", "CurrentBuildNumber")
	o.DisplayVersion = str("DisplayVersion", "ReleaseId")
	return nil
}

// winStart names a service's Start value.
var winStart = []string{"boot", "system", "auto", "demand", "disabled"}

// winRoles maps ProductOptions\ProductType to the machine's role.
var winRoles = map[string]string{"WINNT": "workstation", "SERVERNT": "server", "LANMANNT": "domain controller"}

// winArch maps PROCESSOR_ARCHITECTURE to uname -m's names.
var winArch = map[string]string{"AMD64": "x86_64", "X86": "i386", "ARM64": "aarch64", "ARM": "arm"}

// hiveSystem fills o from a SYSTEM hive: in the control set Select\Current
// names, the computer name, the product type (a domain controller is
// LanmanNT, or has the NTDS service configured), the paravirtual drivers,
// Cloudbase-Init and the processor architecture.
func hiveSystem(h *hive, o *OS) error {
	sel, err := h.openKey("Select")
	if err != nil {
		return err
	}
	cur, err := h.dwordValue(sel, "Current")
	if err != nil {
		return err
	}
	cs, err := h.openKey(fmt.Sprintf("ControlSet%03d", cur))
	if err != nil {
		return err
	}
	str := func(p, name string) string {
		k, err := h.subkeyPath(cs, p)
		if err != nil {
			return ""
		}
		s, _ := h.stringValue(k, name)
		return s
	}
	o.Hostname = str(`Control\ComputerName\ComputerName`, "ComputerName")
	pt := strings.ToUpper(str(`Control\ProductOptions`, "ProductType"))
	o.Role = winRoles[pt]
	if o.InstallationType == "" && o.Role != "" {
		o.InstallationType = "Server"
		if o.Role == "workstation" {
			o.InstallationType = "Client"
		}
	}
	// The PE headers of the system's DLLs, read next, say it better.
	if a := winArch[strings.ToUpper(str(`Control\Session Manager\Environment`, "PROCESSOR_ARCHITECTURE"))]; a != "" {
		o.Arch, o.Bits = a, 64
		if a == "i386" || a == "arm" {
			o.Bits = 32
		}
	}
	services, err := h.subkey(cs, "Services")
	if err != nil {
		return fmt.Errorf("Services: %w", err)
	}
	if k, err := h.subkeyPath(services, `NTDS\Parameters`); err == nil {
		if _, _, err := h.value(k, "DSA Database file"); err == nil {
			o.Role = "domain controller"
		}
	}
	if _, err := h.subkey(services, "cloudbase-init"); err == nil {
		o.CloudInit = true
	}
	for _, d := range pvDrivers {
		if d.os != "windows" {
			continue
		}
		k, err := h.subkey(services, d.name)
		if err != nil {
			continue
		}
		load := "unknown"
		if n, err := h.dwordValue(k, "Start"); err == nil && int(n) < len(winStart) {
			load = winStart[n]
		}
		o.Drivers = append(o.Drivers, Driver{Name: d.name, Bus: d.bus, Class: d.class, Load: load})
	}
	o.Virtio = hasDrivers(o.Drivers, "viostor", "vioscsi") && hasDrivers(o.Drivers, "netkvm")
	return nil
}

// windowsName names a product whose SOFTWARE hive did not, and corrects
// Windows 11, whose ProductName still says Windows 10.
func windowsName(o *OS) {
	server := strings.Contains(o.InstallationType, "Server") || o.Role == "server" || o.Role == "domain controller"
	if o.PrettyName == winUnknown && (o.Version != "" || o.Edition != "") {
		name := "Windows"
		if server {
			name = "Windows Server"
		}
		if o.Version != "" {
			name += " " + o.Version
		}
		if o.Edition != "" {
			name += " (" + o.Edition + ")"
		}
		o.PrettyName = name
	}
	if b, err := strconv.Atoi(o.Build); err == nil && b >= win11Build && !server {
		if rest, ok := strings.CutPrefix(o.PrettyName, "Windows 10"); ok {
			o.PrettyName = "Windows 11" + rest
		}
	}
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

// PE section table and version resource, for peVersion.
const (
	peNumSections  = 6  // u16 after the signature
	peOptSize      = 20 // u16 after the signature
	peOptHeader    = 24 // the optional header follows the COFF header
	peOptOSVersion = 40 // u16 major, u16 minor in the optional header
	peSectionSize  = 40
	peSecRawSize   = 16 // u32 SizeOfRawData
	peSecRawPtr    = 20 // u32 PointerToRawData
	peMaxSections  = 96
	peMaxRsrc      = 4 << 20
	// VS_FIXEDFILEINFO starts with this signature, then the structure
	// version and the file version as two DWORDs (major.minor,
	// build.revision).
	peFixedFileInfo = 0xfeef04bd
)

// peVersion fills o's empty Version and Build from a PE file's version
// resource (VS_FIXEDFILEINFO in .rsrc), or the version from the optional
// header's operating system version.
func peVersion(read func(off int64, n int) ([]byte, error), size int64, o *OS) {
	dos, err := read(0, peDOSHeader)
	if err != nil {
		return
	}
	off := int64(le.Uint32(dos[peLfanew:]))
	coff, err := read(off, peOptHeader+peOptOSVersion+4)
	if err != nil {
		return
	}
	n, optSize := int64(le.Uint16(coff[peNumSections:])), int64(le.Uint16(coff[peOptSize:]))
	ver := ""
	if optSize >= peOptOSVersion+4 {
		ver = fmt.Sprintf("%d.%d", le.Uint16(coff[peOptHeader+peOptOSVersion:]), le.Uint16(coff[peOptHeader+peOptOSVersion+2:]))
	}
	build := ""
	if n <= peMaxSections {
		secs, err := read(off+peOptHeader+optSize, int(n*peSectionSize))
		for i := int64(0); err == nil && i < n; i++ {
			sec := secs[i*peSectionSize:]
			if cstr(sec[:8]) != ".rsrc" {
				continue
			}
			ptr, l := int64(le.Uint32(sec[peSecRawPtr:])), min(int64(le.Uint32(sec[peSecRawSize:])), peMaxRsrc)
			if ptr > size || l > size-ptr {
				break
			}
			rsrc, err := read(ptr, int(l))
			if err != nil {
				break
			}
			for j := 0; j+20 <= len(rsrc); j += 4 {
				if le.Uint32(rsrc[j:]) == peFixedFileInfo {
					ms, ls := le.Uint32(rsrc[j+8:]), le.Uint32(rsrc[j+12:])
					ver, build = fmt.Sprintf("%d.%d", ms>>16, ms&0xffff), strconv.Itoa(int(ls>>16))
					break
				}
			}
			break
		}
	}
	if o.Version == "" {
		o.Version = ver
	}
	if o.Build == "" {
		o.Build = build
	}
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
