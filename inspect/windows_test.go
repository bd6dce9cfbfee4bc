package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
)

// regKey and regVal describe a hive for buildHive.
type regKey struct {
	name    string
	utf16   bool   // store the name as UTF-16LE instead of Latin-1
	list    string // subkey list kind: lf, lh, li or ri (of two li lists)
	values  []regVal
	subkeys []*regKey
}

type regVal struct {
	name string
	typ  uint32
	data []byte
}

func regString(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

func regDword(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// buildHive writes a regf file holding root, the way the format is laid
// out by Windows: a 4 KiB base block, then 4 KiB-aligned hive bins of
// cells with negative (allocated) sizes.
func buildHive(root *regKey) []byte {
	bins := make([]byte, 32) // one hbin header, filled in at the end
	alloc := func(data []byte) uint32 {
		off := uint32(len(bins))
		size := (len(data) + 4 + 7) &^ 7
		cell := make([]byte, size)
		binary.LittleEndian.PutUint32(cell, uint32(-int32(size)))
		copy(cell[4:], data)
		bins = append(bins, cell...)
		return off
	}
	var write func(k *regKey) uint32
	write = func(k *regKey) uint32 {
		var kids []uint32
		for _, s := range k.subkeys {
			kids = append(kids, write(s))
		}
		var listOff uint32 = regfNoCell
		if len(kids) > 0 {
			mk := func(kind string, offs []uint32) uint32 {
				b := append([]byte(kind), 0, 0)
				binary.LittleEndian.PutUint16(b[2:], uint16(len(offs)))
				for _, o := range offs {
					b = binary.LittleEndian.AppendUint32(b, o)
					if kind == "lf" || kind == "lh" {
						b = append(b, 0, 0, 0, 0) // hash, unused by readers
					}
				}
				return alloc(b)
			}
			switch k.list {
			case "ri":
				h := len(kids) / 2
				listOff = mk("ri", []uint32{mk("li", kids[:h]), mk("li", kids[h:])})
			case "":
				listOff = mk("lh", kids)
			default:
				listOff = mk(k.list, kids)
			}
		}
		var vals []uint32
		for _, v := range k.values {
			vk := make([]byte, vkName)
			copy(vk, vkMagic)
			binary.LittleEndian.PutUint16(vk[vkNameLen:], uint16(len(v.name)))
			binary.LittleEndian.PutUint32(vk[vkType:], v.typ)
			binary.LittleEndian.PutUint16(vk[vkFlags:], vkCompName)
			if len(v.data) <= 4 {
				binary.LittleEndian.PutUint32(vk[vkDataSize:], uint32(len(v.data))|vkInline)
				copy(vk[vkDataOff:], v.data)
			} else {
				binary.LittleEndian.PutUint32(vk[vkDataSize:], uint32(len(v.data)))
				binary.LittleEndian.PutUint32(vk[vkDataOff:], alloc(v.data))
			}
			vals = append(vals, alloc(append(vk, v.name...)))
		}
		nk := make([]byte, nkName)
		copy(nk, nkMagic)
		name := []byte(k.name)
		if k.utf16 {
			name = regString(k.name)
			name = name[:len(name)-2]
		} else {
			binary.LittleEndian.PutUint16(nk[nkFlags:], nkCompName)
		}
		binary.LittleEndian.PutUint32(nk[nkSubkeys:], uint32(len(kids)))
		binary.LittleEndian.PutUint32(nk[nkSubkeyList:], listOff)
		binary.LittleEndian.PutUint32(nk[nkValues:], uint32(len(vals)))
		binary.LittleEndian.PutUint32(nk[nkValueList:], regfNoCell)
		if len(vals) > 0 {
			var vl []byte
			for _, o := range vals {
				vl = binary.LittleEndian.AppendUint32(vl, o)
			}
			binary.LittleEndian.PutUint32(nk[nkValueList:], alloc(vl))
		}
		binary.LittleEndian.PutUint16(nk[nkNameLen:], uint16(len(name)))
		return alloc(append(nk, name...))
	}
	rootOff := write(root)
	// Pad the bin to 4 KiB with one free cell.
	if pad := (4096 - len(bins)%4096) % 4096; pad > 0 {
		free := make([]byte, pad)
		binary.LittleEndian.PutUint32(free, uint32(pad))
		bins = append(bins, free...)
	}
	copy(bins, "hbin")
	binary.LittleEndian.PutUint32(bins[8:], uint32(len(bins)))
	base := make([]byte, regfBaseSize)
	copy(base, regfMagic)
	binary.LittleEndian.PutUint32(base[4:], 1)
	binary.LittleEndian.PutUint32(base[8:], 1)
	binary.LittleEndian.PutUint32(base[0x14:], 1) // version 1.5
	binary.LittleEndian.PutUint32(base[0x18:], 5)
	binary.LittleEndian.PutUint32(base[0x20:], 1)
	binary.LittleEndian.PutUint32(base[regfRootCell:], rootOff)
	binary.LittleEndian.PutUint32(base[regfBinsSize:], uint32(len(bins)))
	var sum uint32
	for i := 0; i < 0x1fc; i += 4 {
		sum ^= binary.LittleEndian.Uint32(base[i:])
	}
	binary.LittleEndian.PutUint32(base[0x1fc:], sum)
	return append(base, bins...)
}

const (
	testProduct = "Windows 10 Pro"
	testBuild   = "19045"
	testDisplay = "22H2"
)

// softwareHive is a SOFTWARE hive with the keys Windows 10 has on the
// path to CurrentVersion, with every subkey list kind on the way.
func softwareHive() []byte {
	cv := &regKey{name: "CurrentVersion", values: []regVal{
		{"SystemRoot", regSZ, regString(`C:\Windows`)},
		{"CurrentVersion", regSZ, regString("6.3")},
		{"CurrentBuild", regSZ, regString(testBuild)},
		{"DisplayVersion", regSZ, regString(testDisplay)},
		{"ProductName", regSZ, regString(testProduct)},
		{"CurrentMajorVersionNumber", regDWORD, regDword(10)},
		{"CurrentMinorVersionNumber", regDWORD, regDword(0)},
	}}
	nt := &regKey{name: "Windows NT", utf16: true, list: "li", subkeys: []*regKey{cv, {name: "Accessibility"}}}
	ms := &regKey{name: "Microsoft", list: "lf", subkeys: []*regKey{{name: ".NETFramework"}, {name: "Windows"}, nt}}
	return buildHive(&regKey{name: "ROOT", list: "ri", subkeys: []*regKey{{name: "Classes"}, {name: "Clients"}, ms, {name: "Policies"}}})
}

// peFile is a minimal PE image header for machine with the given
// optional header magic.
func peFile(machine, magic uint16) []byte {
	b := make([]byte, 1024)
	copy(b, peDOSMagic)
	binary.LittleEndian.PutUint32(b[peLfanew:], 0x80)
	copy(b[0x80:], peSignature)
	binary.LittleEndian.PutUint16(b[0x80+peMachine:], machine)
	binary.LittleEndian.PutUint16(b[0x80+peOptMagic:], magic)
	return b
}

func memReader(b []byte) func(off int64, n int) ([]byte, error) {
	return func(off int64, n int) ([]byte, error) {
		if off < 0 || n < 0 || off+int64(n) > int64(len(b)) {
			return nil, errors.New("out of range")
		}
		return b[off : off+int64(n)], nil
	}
}

func TestRegistryHive(t *testing.T) {
	b := softwareHive()
	if *update {
		if err := os.WriteFile(filepath.Join("..", "testdata", "inspect", "software-hive.seed"), b, 0o644); err != nil {
			t.Fatal(err)
		}
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
	requireTool(t, "mkntfs", "ntfs-3g")
	requireTool(t, "ntfsinfo", "ntfs-3g")
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
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		d := dev{r: bytes.NewReader(data), size: int64(len(data))}
		v, err := parseNTFSBoot(d, data[:512])
		if err != nil {
			t.Fatal(err)
		}
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

// mountNTFS mounts an NTFS file with ntfs-3g (FUSE) for the test to fill
// and returns the mount point and an unmount function; the test is
// skipped when FUSE mounts are not possible here.
func mountNTFS(t *testing.T, fsPath string) (string, func()) {
	t.Helper()
	requireTool(t, "ntfs-3g", "ntfs-3g")
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ntfs-3g", fsPath, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount NTFS with FUSE here: %v %s", err, out)
	}
	mounted := true
	unmount := func() {
		if mounted {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount: %v %s", err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)
	return mnt, unmount
}

// TestWindowsNTFS builds a GPT disk with an EFI System partition and an
// NTFS volume holding \Windows\system32 (with hundreds of entries, so the
// index spans several INDX blocks), a SOFTWARE hive and kernel32.dll.
func TestWindowsNTFS(t *testing.T) {
	for tool, pkg := range map[string]string{"sgdisk": "gdisk", "mkntfs": "ntfs-3g", "mkfs.vfat": "dosfstools"} {
		requireTool(t, tool, pkg)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "win.raw")
	sparseFile(t, disk, 96*mib)
	run(t, "sgdisk", "-n", "1:1M:+16M", "-t", "1:ef00", "-n", "2:0:+64M", "-t", "2:0700", disk)
	esp := filepath.Join(dir, "esp.fs")
	sparseFile(t, esp, 16*mib)
	run(t, "mkfs.vfat", "-n", "ESP", esp)
	nt := filepath.Join(dir, "ntfs.fs")
	sparseFile(t, nt, 64*mib)
	// 8 KiB clusters: index blocks (4 KiB) are smaller than a cluster,
	// so their VCNs count 512-byte units.
	run(t, "mkntfs", "-q", "-F", "-f", "-c", "8192", "-L", "Windows", nt)
	mnt, unmount := mountNTFS(t, nt)
	sys := filepath.Join(mnt, "Windows", "system32")
	for _, d := range []string{filepath.Join(sys, "config"), filepath.Join(mnt, "Program Files")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 600; i++ {
		name := filepath.Join(sys, "api-ms-win-core-file-l1-"+strconv.Itoa(i)+".dll")
		if err := os.WriteFile(name, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hiveData := softwareHive()
	for name, data := range map[string][]byte{
		filepath.Join(sys, "config", "SOFTWARE"): hiveData,
		filepath.Join(sys, "kernel32.dll"):       peFile(peMachineAMD, peOptMagic64),
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	unmount()
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
		o.DisplayVersion != testDisplay || o.Arch != "x86_64" || o.Bits != 64 || o.Boot != "uefi" || o.Partition != 2 {
		t.Errorf("os %+v", o)
	}
	if len(r.Findings) != 0 {
		t.Errorf("findings: %v", r.Findings)
	}
	checkFS(t, "ntfs", r.PartitionTable.Partitions[1].Filesystem, blkid(t, nt))
	var txt strings.Builder
	r.WriteText(&txt)
	if !strings.Contains(txt.String(), "os:              windows (Windows 10 Pro)\nversion:         10.0 build 19045 (22H2)\narch:            x86_64, 64-bit\nboot:            uefi\n") {
		t.Errorf("text output:\n%s", txt.String())
	}

	// A damaged hive still gives Windows, version unknown, and a finding.
	data, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
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
	sparseFile(t, nt, 2*mib)
	run(t, "mkntfs", "-q", "-F", "-f", "-c", "512", nt)
	mnt, unmount := mountNTFS(t, nt)
	sys := filepath.Join(mnt, "Windows", "System32")
	if err := os.MkdirAll(filepath.Join(sys, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Enough long names to need an index block beside the root.
	for i := 0; i < 12; i++ {
		if err := os.WriteFile(filepath.Join(sys, "api-ms-win-core-file-l"+strconv.Itoa(i)+".dll"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(sys, "config", "SOFTWARE"), softwareHive(), 0o644)
	os.WriteFile(filepath.Join(sys, "kernel32.dll"), peFile(peMachineAMD, peOptMagic64), 0o644)
	unmount()
	data, err := os.ReadFile(nt)
	if err != nil {
		t.Fatal(err)
	}
	d := dev{r: bytes.NewReader(data), size: int64(len(data))}
	v, err := parseNTFSBoot(d, data[:512])
	if err != nil {
		t.Fatal(err)
	}
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
	if err := os.WriteFile(filepath.Join("..", "testdata", "inspect", "ntfs-windows.seed"), sparseEncode(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
