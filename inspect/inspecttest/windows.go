package inspecttest

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// PE machine types and optional header magics.
const (
	MachineI386  = 0x14c
	MachineAMD64 = 0x8664
	MachineARM64 = 0xaa64
	PE32         = 0x10b
	PE32Plus     = 0x20b
)

// PE returns a minimal PE image: the DOS header, the PE signature at
// 0x80, the COFF and optional headers with the operating system version,
// and, when version[0] is not 0, an .rsrc section holding the
// VS_FIXEDFILEINFO of file version version[0].version[1].version[2].version[3].
func PE(machine, magic uint16, version [4]uint16) []byte {
	const sig, rsrc = 0x80, 0x400
	b := make([]byte, 0x600)
	copy(b, "MZ")
	le := binary.LittleEndian
	le.PutUint32(b[0x3c:], sig)
	copy(b[sig:], "PE\x00\x00")
	le.PutUint16(b[sig+4:], machine)
	optSize := 0xe0
	if magic == PE32Plus {
		optSize = 0xf0
	}
	le.PutUint16(b[sig+20:], uint16(optSize))
	opt := b[sig+24:]
	le.PutUint16(opt, magic)
	le.PutUint16(opt[40:], version[0])
	le.PutUint16(opt[42:], version[1])
	if version[0] == 0 {
		return b
	}
	le.PutUint16(b[sig+6:], 1) // one section
	sec := b[sig+24+optSize:]
	copy(sec, ".rsrc")
	le.PutUint32(sec[8:], 0x200)   // VirtualSize
	le.PutUint32(sec[12:], 0x2000) // VirtualAddress
	le.PutUint32(sec[16:], 0x200)  // SizeOfRawData
	le.PutUint32(sec[20:], rsrc)   // PointerToRawData
	// The resource tree is not walked by readers that scan for the
	// fixed file info's signature; put it where a VS_VERSIONINFO keeps it.
	copy(b[rsrc+0x40:], []byte("\x00\x00V\x00S\x00_\x00V\x00E\x00R\x00S\x00I\x00O\x00N\x00_\x00I\x00N\x00F\x00O\x00\x00\x00"))
	ffi := b[rsrc+0x68:]
	le.PutUint32(ffi, 0xfeef04bd)
	le.PutUint32(ffi[4:], 0x00010000)
	for _, off := range []int{8, 16} { // file and product version
		le.PutUint32(ffi[off:], uint32(version[0])<<16|uint32(version[1]))
		le.PutUint32(ffi[off+4:], uint32(version[2])<<16|uint32(version[3]))
	}
	return b
}

// Windows describes the registry of a Windows installation. Empty
// strings and zero numbers leave their values out, as a damaged or
// unusual hive would.
type Windows struct {
	// SOFTWARE\Microsoft\Windows NT\CurrentVersion.
	ProductName, EditionID, InstallationType, DisplayVersion string
	CurrentVersion, CurrentBuild, CurrentBuildNumber         string
	Major, Minor                                             uint32 // CurrentMajor/MinorVersionNumber; Major 0 leaves both out
	// SYSTEM.
	ControlSet   uint32 // Select\Current; 0 means 1
	ProductType  string // WinNT, ServerNT or LanmanNT
	NTDS         bool   // the NTDS service is configured (a domain controller)
	ComputerName string
	Arch         string // PROCESSOR_ARCHITECTURE: AMD64, x86, ARM64
	// Services are driver and service names with their Start values.
	Services map[string]uint32
}

// Server2019 is a Windows Server 2019 Standard member server with the
// virtio drivers installed.
func Server2019(name string) Windows {
	return Windows{
		ProductName: "Windows Server 2019 Standard", EditionID: "ServerStandard", InstallationType: "Server",
		CurrentVersion: "6.3", CurrentBuild: "17763", CurrentBuildNumber: "17763", Major: 10, DisplayVersion: "1809",
		ControlSet: 1, ProductType: "ServerNT", ComputerName: name, Arch: "AMD64",
		Services: map[string]uint32{"viostor": 0, "netkvm": 3, "storvsc": 0, "netvsc": 3, "cloudbase-init": 2},
	}
}

// Software returns the SOFTWARE hive: the keys on the way to
// CurrentVersion, with every subkey list kind on the way.
func (w Windows) Software() []byte {
	cv := &Key{Name: "CurrentVersion"}
	cv.Set("SystemRoot", RegSZ, String(`C:\Windows`))
	for _, v := range []struct{ name, val string }{
		{"CurrentVersion", w.CurrentVersion}, {"CurrentBuild", w.CurrentBuild}, {"CurrentBuildNumber", w.CurrentBuildNumber},
		{"DisplayVersion", w.DisplayVersion}, {"EditionID", w.EditionID}, {"InstallationType", w.InstallationType},
		{"ProductName", w.ProductName},
	} {
		if v.val != "" {
			cv.Set(v.name, RegSZ, String(v.val))
		}
	}
	if w.Major != 0 {
		cv.Set("CurrentMajorVersionNumber", RegDWORD, DWORD(w.Major))
		cv.Set("CurrentMinorVersionNumber", RegDWORD, DWORD(w.Minor))
	}
	nt := &Key{Name: "Windows NT", UTF16: true, List: "li", Subkeys: []*Key{cv, {Name: "Accessibility"}}}
	ms := &Key{Name: "Microsoft", List: "lf", Subkeys: []*Key{{Name: ".NETFramework"}, {Name: "Windows"}, nt}}
	return Hive(&Key{Name: "ROOT", List: "ri", Subkeys: []*Key{{Name: "Classes"}, {Name: "Clients"}, ms, {Name: "Policies"}}})
}

// System returns the SYSTEM hive. Control sets other than the current
// one hold stale values, so a reader must follow Select\Current.
func (w Windows) System() []byte {
	cur := w.ControlSet
	if cur == 0 {
		cur = 1
	}
	root := &Key{Name: "ROOT"}
	root.Sub("MountedDevices")
	root.Path("Select").Set("Current", RegDWORD, DWORD(cur)).Set("Default", RegDWORD, DWORD(cur)).Set("LastKnownGood", RegDWORD, DWORD(cur))
	for n := uint32(1); n <= max(cur, 2); n++ {
		cs := root.Path(fmt.Sprintf("ControlSet%03d", n))
		if n != cur {
			cs.Path(`Control\ComputerName\ComputerName`).Set("ComputerName", RegSZ, String("STALE"))
			cs.Path(`Control\ProductOptions`).Set("ProductType", RegSZ, String("LanmanNT"))
			cs.Path(`Services\NTDS\Parameters`).Set("DSA Database file", RegSZ, String(`C:\Windows\NTDS\ntds.dit`))
			continue
		}
		// Filler keys, so lookups go through long hashed lists.
		for i := 0; i < 40; i++ {
			cs.Path(fmt.Sprintf(`Control\Filler%02d`, i))
			cs.Path(fmt.Sprintf(`Services\svc%03d`, i)).Set("Start", RegDWORD, DWORD(3))
		}
		if w.ComputerName != "" {
			cs.Path(`Control\ComputerName\ComputerName`).Set("ComputerName", RegSZ, String(w.ComputerName))
		}
		if w.ProductType != "" {
			cs.Path(`Control\ProductOptions`).Set("ProductType", RegSZ, String(w.ProductType))
		}
		if w.Arch != "" {
			cs.Path(`Control\Session Manager\Environment`).Set("PROCESSOR_ARCHITECTURE", RegSZ, String(w.Arch))
		}
		svc := cs.Path("Services")
		if w.NTDS {
			svc.Path(`NTDS\Parameters`).Set("DSA Database file", RegSZ, String(`C:\Windows\NTDS\ntds.dit`))
		}
		for _, name := range sortedNames(w.Services) {
			svc.Path(name).Set("Start", RegDWORD, DWORD(w.Services[name])).Set("Type", RegDWORD, DWORD(1))
		}
	}
	return Hive(root)
}

// WindowsMBRCode stands in for Windows's MBR boot code: what tells it
// apart is the error messages it carries.
func WindowsMBRCode() []byte {
	b := make([]byte, 440)
	copy(b, "\x33\xc0\x8e\xd0\xbc\x00\x7c")
	copy(b[0x163:], "Invalid partition table\x00Error loading operating system\x00Missing operating system")
	return b
}

func sortedNames(m map[string]uint32) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
