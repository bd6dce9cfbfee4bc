package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

const (
	testProduct = "Windows 10 Pro"
	testBuild   = "19045"
	testDisplay = "22H2"
)

// win10 is the registry of a Windows 10 Pro workstation.
var win10 = inspecttest.Windows{ProductName: testProduct, EditionID: "Professional", InstallationType: "Client",
	CurrentVersion: "6.3", CurrentBuild: testBuild, DisplayVersion: testDisplay, Major: 10,
	ProductType: "WinNT", ComputerName: "DESKTOP-21", Arch: "AMD64", Services: map[string]uint32{"storvsc": 0, "netvsc": 3}}

// softwareHive is win10's SOFTWARE hive.
func softwareHive() []byte { return win10.Software() }

func peFile(machine, magic uint16) []byte { return inspecttest.PE(machine, magic, [4]uint16{}) }

func memReader(b []byte) func(off int64, n int) ([]byte, error) {
	return func(off int64, n int) ([]byte, error) {
		if off < 0 || n < 0 || off+int64(n) > int64(len(b)) {
			return nil, errors.New("out of range")
		}
		return b[off : off+int64(n)], nil
	}
}

func TestRegistryHive(t *testing.T) {
	t.Parallel()
	b := softwareHive()
	if *update {
		sys := inspecttest.Server2019("SEED").System()
		formattest.WriteFiles(t, filepath.Join("..", "testdata", "inspect"), map[string][]byte{"software-hive.seed": b, "system-hive.seed": sys})
	}
	h, err := openHive(memReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	k, err := h.openKey(`microsoft\WINDOWS NT\CurrentVersion`)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := h.stringValue(k, "productname"); err != nil || s != testProduct {
		t.Errorf("ProductName %q %v", s, err)
	}
	if n, err := h.dwordValue(k, "CurrentMajorVersionNumber"); err != nil || n != 10 {
		t.Errorf("CurrentMajorVersionNumber %d %v", n, err)
	}
	if _, err := h.openKey(`Microsoft\Missing`); !errors.Is(err, errNotFound) {
		t.Errorf("missing key: %v", err)
	}
	o := &OS{}
	if err := hiveVersion(h, o); err != nil || o.PrettyName != testProduct || o.Version != "10.0" || o.Build != testBuild || o.DisplayVersion != testDisplay {
		t.Errorf("os %+v %v", o, err)
	}

	// Hostile hives: each error names what is wrong.
	patch := func(f func(d []byte)) []byte { d := bytes.Clone(b); f(d); return d }
	root := int(binary.LittleEndian.Uint32(b[regfRootCell:]))
	cases := []struct {
		name, want string
		d          []byte
	}{
		{"magic", "no regf signature", patch(func(d []byte) { d[0] = 'x' })},
		{"truncated", "shorter than its base block", b[:100]},
		{"bins size", "hive bins data size", patch(func(d []byte) { binary.LittleEndian.PutUint32(d[regfBinsSize:], 1<<31) })},
		{"root offset", "cell offset", patch(func(d []byte) { binary.LittleEndian.PutUint32(d[regfRootCell:], 1<<30) })},
		{"root cell size", "invalid size", patch(func(d []byte) { binary.LittleEndian.PutUint32(d[regfBaseSize+root:], 0xe0000000) })},
		{"root not nk", "not a key node", patch(func(d []byte) { d[regfBaseSize+root+4] = 'x' })},
		{"subkey count", "claims", patch(func(d []byte) {
			l := int(binary.LittleEndian.Uint32(d[regfBaseSize+root+4+nkSubkeyList:]))
			binary.LittleEndian.PutUint16(d[regfBaseSize+l+4+listCount:], 0xffff)
		})},
		{"ri loop", "nest too deeply", patch(func(d []byte) {
			l := binary.LittleEndian.Uint32(d[regfBaseSize+root+4+nkSubkeyList:])
			binary.LittleEndian.PutUint32(d[regfBaseSize+int(l)+4+listItems:], l)
		})},
	}
	for _, c := range cases {
		h, err := openHive(memReader(c.d), int64(len(c.d)))
		if err == nil {
			_, err = h.openKey(winVersionKey)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestPEHeader(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		machine, magic uint16
		arch           string
		bits           int
	}{{peMachineAMD, peOptMagic64, "x86_64", 64}, {peMachineI386, peOptMagic32, "i386", 32}, {peMachineA64, peOptMagic64, "aarch64", 64}} {
		b := peFile(c.machine, c.magic)
		h, err := peHeader(memReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if a, n := peArch(h); a != c.arch || n != c.bits {
			t.Errorf("%#x: %s/%d, want %s/%d", c.machine, a, n, c.arch, c.bits)
		}
	}
	b := peFile(peMachineAMD, peOptMagic64)
	binary.LittleEndian.PutUint32(b[peLfanew:], 1<<30)
	if _, err := peHeader(memReader(b), int64(len(b))); err == nil || !strings.Contains(err.Error(), "e_lfanew") {
		t.Errorf("huge e_lfanew: %v", err)
	}
}

// TestNTFSSystemDirs walks the directory index of a fresh mkntfs volume
// (no mount needed): $Extend\$Reparse must resolve to the record
// ntfsinfo reports.
func TestNTFSSystemDirs(t *testing.T) {
	t.Parallel()
	requireTools(t, map[string]string{"mkntfs": "ntfs-3g", "ntfsinfo": "ntfs-3g"})
	for _, cs := range []string{"512", "4096", "65536"} {
		path := filepath.Join(t.TempDir(), "ntfs.fs")
		sparseFile(t, path, 48*mib)
		run(t, "mkntfs", "-q", "-F", "-f", "-c", cs, path)
		info := run(t, "ntfsinfo", "-F", "$Extend/$Reparse", path)
		m := regexp.MustCompile(`Dumping Inode (\d+)`).FindStringSubmatch(info)
		if m == nil {
			t.Fatalf("ntfsinfo: %s", info)
		}
		want, _ := strconv.ParseInt(m[1], 10, 64)
		data := formattest.ReadFile(t, path)
		v := ntfsOf(t, data)
		if err := v.loadMFT(); err != nil {
			t.Fatal(err)
		}
		got, err := v.openPath(`$EXTEND\$reparse`)
		if err != nil || got != want {
			t.Errorf("cluster %s: $Extend\\$Reparse is record %d (%v), ntfsinfo says %d", cs, got, err, want)
		}
		if _, err := v.openPath(`Windows\System32`); !errors.Is(err, errNotFound) {
			t.Errorf("cluster %s: Windows found on an empty volume: %v", cs, err)
		}
	}
}

// TestWindowsNTFS builds a GPT disk with an EFI System partition and an
// NTFS volume holding \Windows\system32 (with hundreds of entries, so the
// index spans several INDX blocks), a SOFTWARE hive and kernel32.dll.
func TestWindowsNTFS(t *testing.T) {
	t.Parallel()
	requireTools(t, map[string]string{"sgdisk": "gdisk", "mkntfs": "ntfs-3g", "mkfs.vfat": "dosfstools"})
	dir := t.TempDir()
	disk := filepath.Join(dir, "win.raw")
	sparseFile(t, disk, 96*mib)
	run(t, "sgdisk", "-n", "1:1M:+16M", "-t", "1:ef00", "-n", "2:0:+64M", "-t", "2:0700", disk)
	esp := filepath.Join(dir, "esp.fs")
	inspecttest.ESP(t, esp, 16*mib, map[string][]byte{"EFI/Microsoft/Boot/bootmgfw.efi": peFile(peMachineAMD, peOptMagic64),
		"EFI/Boot/bootx64.efi": peFile(peMachineAMD, peOptMagic64)})
	nt := filepath.Join(dir, "ntfs.fs")
	hiveData := softwareHive()
	files := map[string][]byte{
		"Windows/system32/config/SOFTWARE": hiveData,
		"Windows/system32/config/SYSTEM":   win10.System(),
		"Windows/system32/kernel32.dll":    peFile(peMachineAMD, peOptMagic64),
		"Program Files/x":                  nil,
	}
	for i := 0; i < 600; i++ {
		files["Windows/system32/api-ms-win-core-file-l1-"+strconv.Itoa(i)+".dll"] = nil
	}
	// 8 KiB clusters: index blocks (4 KiB) are smaller than a cluster,
	// so their VCNs count 512-byte units.
	inspecttest.NTFS(t, nt, 64*mib, "Windows", files, "-c", "8192")
	if *update {
		writeNTFSSeed(t)
	}
	place(t, disk, esp, mib)
	place(t, disk, nt, 17*mib)

	r := inspectFile(t, disk)
	o := r.OS
	if o == nil {
		t.Fatalf("no OS found; findings %v", r.Findings)
	}
	if o.Type != "windows" || o.Distro != "windows" || o.PrettyName != testProduct || o.Version != "10.0" || o.Build != testBuild ||
		o.DisplayVersion != testDisplay || o.Arch != "x86_64" || o.Bits != 64 || o.Boot != "uefi" || o.Partition != 2 ||
		o.Edition != "Professional" || o.InstallationType != "Client" || o.Role != "workstation" || o.Hostname != "DESKTOP-21" || o.Virtio {
		t.Errorf("os %+v", o)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings: %v", r.Findings)
	}
	checkFS(t, "ntfs", r.PartitionTable.Partitions[1].Filesystem, blkid(t, nt))
	var txt strings.Builder
	r.WriteText(&txt)
	if !strings.Contains(txt.String(), "os:              windows (Windows 10 Pro)\nversion:         10.0 build 19045 (22H2)\nedition:         Professional (Client)\n"+
		"role:            workstation\nhostname:        DESKTOP-21\narch:            x86_64, 64-bit\n"+
		"boot:            uefi: partition 1, \\EFI\\Boot\\bootx64.efi \\EFI\\Microsoft\\Boot\\bootmgfw.efi\n"+
		"drivers:         storvsc (boot), netvsc (demand)\ncloudbase-init:  no\nvirtio drivers:  no\n") {
		t.Errorf("text output:\n%s", txt.String())
	}

	// A damaged hive still gives Windows, version unknown, and a finding.
	data := formattest.ReadFile(t, disk)
	i := bytes.Index(data, hiveData[:64])
	if i < 0 {
		t.Fatal("hive not found in the disk")
	}
	bad := bytes.Clone(data)
	bad[i] = 'x'
	r = inspectBytes(t, bad)
	if r.OS == nil || r.OS.Type != "windows" || r.OS.PrettyName != winUnknown || r.OS.Arch != "x86_64" || !hasFinding(r, "no regf signature") {
		t.Errorf("damaged hive: os %+v findings %v", r.OS, r.Findings)
	}
	// Damaged index blocks: a finding, never a crash.
	bad = bytes.Clone(data)
	for j := 0; j < 8; {
		k := bytes.Index(bad, []byte(ntfsIndxMagic))
		if k < 0 {
			break
		}
		bad[k] = 'y'
		j++
	}
	r = inspectBytes(t, bad)
	if r.OS != nil || !hasFinding(r, "INDX signature") {
		t.Errorf("damaged index: os %+v findings %v", r.OS, r.Findings)
	}
}

// writeNTFSSeed writes testdata/inspect/ntfs-windows.seed: a sparse
// encoding of a small NTFS volume with 512-byte clusters holding the
// Windows tree, without the $UpCase table, for the NTFS fuzz test.
func writeNTFSSeed(t *testing.T) {
	nt := filepath.Join(t.TempDir(), "small.fs")
	// Enough long names to need an index block beside the root.
	files := map[string][]byte{"Windows/System32/config/SOFTWARE": softwareHive(), "Windows/System32/kernel32.dll": peFile(peMachineAMD, peOptMagic64)}
	for i := 0; i < 12; i++ {
		files["Windows/System32/api-ms-win-core-file-l"+strconv.Itoa(i)+".dll"] = nil
	}
	inspecttest.NTFS(t, nt, 2*mib, "", files, "-c", "512")
	data := formattest.ReadFile(t, nt)
	v := ntfsOf(t, data)
	const upcase = 10 // $UpCase: 128 KiB no parser reads
	s, err := v.stream(upcase, ntfsAttrData, "")
	if err != nil {
		t.Fatal(err)
	}
	var vcn int64
	for _, r := range s.runs {
		if r.lcn >= 0 {
			clear(data[r.lcn*v.cs : (r.lcn+r.clusters)*v.cs])
		}
		vcn += r.clusters
	}
	// Records not in use (mkntfs preallocates 64) are not read either.
	if err := v.loadMFT(); err != nil || len(v.mft.runs) != 1 {
		t.Fatalf("$MFT: %v %+v", err, v.mft)
	}
	for off := v.mftOff; off < v.mftOff+v.mft.size; off += v.recSize {
		if rec := data[off : off+v.recSize]; le.Uint16(rec[ntfsRecFlags:])&ntfsRecInUse == 0 {
			clear(rec)
		}
	}
	formattest.WriteFile(t, filepath.Join("..", "testdata", "inspect", "ntfs-windows.seed"), sparseEncode(data))
}

// TestWindowsRegistryFacts reads edition, role, computer name, drivers
// and version from SOFTWARE and SYSTEM hives the way Windows variants
// leave them, including hives missing the usual values.
func TestWindowsRegistryFacts(t *testing.T) {
	t.Parallel()
	dc := inspecttest.Server2019("DC01")
	dc.ProductType = "LanmanNT"
	ntds := inspecttest.Server2019("DC02") // ServerNT, but NTDS configured
	ntds.NTDS = true
	cs2 := inspecttest.Server2019("APP02") // the current control set is ControlSet002
	cs2.ControlSet = 2
	old := inspecttest.Windows{ProductName: "Windows Server 2008 R2 Standard", EditionID: "ServerStandard", CurrentVersion: "6.1",
		CurrentBuildNumber: "7601", ProductType: "ServerNT", Services: map[string]uint32{"xenvbd": 0, "xennet": 4}}
	bare := inspecttest.Windows{EditionID: "ServerDatacenter", CurrentVersion: "6.3", CurrentBuild: "20348", ProductType: "ServerNT", Arch: "ARM64"}
	win11 := win10
	win11.CurrentBuild = "22631"
	for _, tc := range []struct {
		name string
		w    inspecttest.Windows
		want OS
	}{
		{"dc", dc, OS{PrettyName: "Windows Server 2019 Standard", Version: "10.0", Build: "17763", DisplayVersion: "1809", Edition: "ServerStandard",
			InstallationType: "Server", Role: "domain controller", Hostname: "DC01", Arch: "x86_64", Bits: 64, CloudInit: true, Virtio: true}},
		{"ntds", ntds, OS{PrettyName: "Windows Server 2019 Standard", Version: "10.0", Build: "17763", DisplayVersion: "1809", Edition: "ServerStandard",
			InstallationType: "Server", Role: "domain controller", Hostname: "DC02", Arch: "x86_64", Bits: 64, CloudInit: true, Virtio: true}},
		{"member", inspecttest.Server2019("APP01"), OS{PrettyName: "Windows Server 2019 Standard", Version: "10.0", Build: "17763", DisplayVersion: "1809",
			Edition: "ServerStandard", InstallationType: "Server", Role: "server", Hostname: "APP01", Arch: "x86_64", Bits: 64, CloudInit: true, Virtio: true}},
		{"controlset002", cs2, OS{PrettyName: "Windows Server 2019 Standard", Version: "10.0", Build: "17763", DisplayVersion: "1809",
			Edition: "ServerStandard", InstallationType: "Server", Role: "server", Hostname: "APP02", Arch: "x86_64", Bits: 64, CloudInit: true, Virtio: true}},
		// No CurrentMajorVersionNumber, CurrentBuild or InstallationType: the older values and ProductType stand in.
		{"2008r2", old, OS{PrettyName: "Windows Server 2008 R2 Standard", Version: "6.1", Build: "7601", Edition: "ServerStandard",
			InstallationType: "Server", Role: "server"}},
		// No ProductName: the name is made from what is known.
		{"no-product-name", bare, OS{PrettyName: "Windows Server 6.3 (ServerDatacenter)", Version: "6.3", Build: "20348", Edition: "ServerDatacenter",
			InstallationType: "Server", Role: "server", Arch: "aarch64", Bits: 64}},
		// Windows 11 still says Windows 10 in ProductName.
		{"win11", win11, OS{PrettyName: "Windows 11 Pro", Version: "10.0", Build: "22631", DisplayVersion: testDisplay, Edition: "Professional",
			InstallationType: "Client", Role: "workstation", Hostname: "DESKTOP-21", Arch: "x86_64", Bits: 64}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &OS{PrettyName: winUnknown}
			for _, b := range []struct {
				data []byte
				read func(*hive, *OS) error
			}{{tc.w.Software(), hiveVersion}, {tc.w.System(), hiveSystem}} {
				h, err := openHive(memReader(b.data), int64(len(b.data)))
				if err != nil {
					t.Fatal(err)
				}
				if err := b.read(h, o); err != nil {
					t.Fatal(err)
				}
			}
			windowsName(o)
			o.Drivers = nil
			if !reflect.DeepEqual(*o, tc.want) {
				t.Errorf("os\n%+v\nwant\n%+v", *o, tc.want)
			}
		})
	}
	// Drivers and their start types.
	o := &OS{}
	b := old.System()
	h, _ := openHive(memReader(b), int64(len(b)))
	if err := hiveSystem(h, o); err != nil {
		t.Fatal(err)
	}
	if want := []Driver{{"xenvbd", "xen", "storage", "boot", ""}, {"xennet", "xen", "network", "disabled", ""}}; !slices.Equal(o.Drivers, want) || o.Virtio {
		t.Errorf("drivers %+v", o.Drivers)
	}
	// A hive without Select cannot name its control set.
	b = inspecttest.Hive(&inspecttest.Key{Name: "ROOT", Subkeys: []*inspecttest.Key{{Name: "ControlSet001"}}})
	h, _ = openHive(memReader(b), int64(len(b)))
	if err := hiveSystem(h, &OS{}); err == nil || !strings.Contains(err.Error(), "Select") {
		t.Errorf("no Select: %v", err)
	}
}

// TestPEVersion reads the version from a kernel's version resource,
// and from the optional header without one.
func TestPEVersion(t *testing.T) {
	t.Parallel()
	b := inspecttest.PE(peMachineAMD, peOptMagic64, [4]uint16{10, 0, 17763, 5830})
	o := &OS{}
	peVersion(memReader(b), int64(len(b)), o)
	if o.Version != "10.0" || o.Build != "17763" {
		t.Errorf("version %q build %q", o.Version, o.Build)
	}
	o = &OS{Version: "6.3"}
	peVersion(memReader(b), int64(len(b)), o)
	if o.Version != "6.3" || o.Build != "17763" {
		t.Errorf("kept version %q build %q", o.Version, o.Build)
	}
	b = inspecttest.PE(peMachineAMD, peOptMagic64, [4]uint16{})
	binary.LittleEndian.PutUint16(b[0x80+24+40:], 6)
	binary.LittleEndian.PutUint16(b[0x80+24+42:], 1)
	o = &OS{}
	peVersion(memReader(b), int64(len(b)), o)
	if o.Version != "6.1" || o.Build != "" {
		t.Errorf("header version %q build %q", o.Version, o.Build)
	}
}

// TestWindowsDisks inspects Windows system disks made with mkntfs and an
// ntfs-3g mount: a domain controller, a member server whose SOFTWARE
// hive names no version (ntoskrnl.exe's resource does), and a server
// whose Windows volume is BitLocker-encrypted.
func TestWindowsDisks(t *testing.T) {
	t.Parallel()
	dc := inspecttest.Server2019("DC01")
	dc.ProductType = "LanmanNT"
	member := inspecttest.Server2019("APP01")
	member.Major, member.CurrentVersion, member.CurrentBuild, member.CurrentBuildNumber, member.ProductName = 0, "", "", "", ""
	kernel := [4]uint16{10, 0, 17763, 1}
	for _, tc := range []struct {
		name  string
		disk  inspecttest.WindowsDisk
		check func(t *testing.T, r *Report)
	}{
		{"dc", inspecttest.WindowsDisk{Windows: dc, KernelVersion: kernel}, func(t *testing.T, r *Report) {
			if o := r.OS; o == nil || o.Role != "domain controller" || o.PrettyName != "Windows Server 2019 Standard" || o.Hostname != "DC01" ||
				o.Boot != "bios" || !o.Virtio || !o.CloudInit || o.Partition != 1 {
				t.Errorf("os %+v", o)
			}
		}},
		{"member", inspecttest.WindowsDisk{Windows: member, KernelVersion: kernel}, func(t *testing.T, r *Report) {
			if o := r.OS; o == nil || o.Role != "server" || o.PrettyName != "Windows Server 10.0 (ServerStandard)" || o.Version != "10.0" ||
				o.Build != "17763" || o.InstallationType != "Server" {
				t.Errorf("os %+v", o)
			}
		}},
		{"bitlocker", inspecttest.WindowsDisk{Windows: dc, KernelVersion: kernel, BitLocker: true}, func(t *testing.T, r *Report) {
			p := r.PartitionTable.Partitions
			if r.OS != nil || len(p) != 2 || p[1].Filesystem == nil || p[1].Filesystem.Type != "BitLocker" || !p[1].Filesystem.Encrypted ||
				p[0].Filesystem == nil || p[0].Filesystem.Type != "ntfs" {
				t.Errorf("os %+v partitions %+v", r.OS, p)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := tc.disk.Build(t, t.TempDir(), tc.name+".raw")
			r := inspectFile(t, disk)
			if b := r.Boot; b == nil || !slices.Equal(b.Modes, []string{"bios"}) || b.BIOS.Loader != "windows" {
				t.Errorf("boot %+v", r.Boot)
			}
			if len(r.Findings) != 0 {
				t.Errorf("findings %v", r.Findings)
			}
			tc.check(t, r)
		})
	}
}
