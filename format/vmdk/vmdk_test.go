package vmdk_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/vmdk"
)

var variants = []formattest.Variant{
	{Name: "monolithicSparse", Args: []string{"-o", "subformat=monolithicSparse"}},
	{Name: "monolithicFlat", Args: []string{"-o", "subformat=monolithicFlat"}},
	{Name: "twoGbMaxExtentSparse", Args: []string{"-o", "subformat=twoGbMaxExtentSparse"}},
	{Name: "twoGbMaxExtentFlat", Args: []string{"-o", "subformat=twoGbMaxExtentFlat"}},
	{Name: "streamOptimized", Args: []string{"-o", "subformat=streamOptimized"}},
	{Name: "streamOptimized-c", Args: []string{"-c", "-o", "subformat=streamOptimized"}},
	{Name: "compat6", Args: []string{"-o", "compat6=on"}},
	{Name: "hwversion6", Args: []string{"-o", "hwversion=6"}},
	{Name: "adapter-ide", Args: []string{"-o", "adapter_type=ide"}},
	{Name: "adapter-lsilogic", Args: []string{"-o", "adapter_type=lsilogic"}},
	{Name: "zeroed-grain", Args: []string{"-o", "zeroed_grain=on"}},
}

var opts = formattest.Options{Format: "vmdk"}

func TestConformance(t *testing.T) {
	formattest.Run(t, "vmdk", variants, opts)
}

// TestEmptyHuge checks empty 2 TiB disks of every variant.
func TestEmptyHuge(t *testing.T) {
	huge := formattest.Pick(variants, "monolithicFlat", "twoGbMaxExtentFlat", "monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized")
	if testing.Short() { // 2 TiB in 2 GiB extents is 1024 files
		huge = formattest.Pick(variants, "monolithicFlat", "monolithicSparse", "streamOptimized")
	}
	formattest.RunEmptyHuge(t, "vmdk", "2T", huge, opts)
}

// TestZeroedGrains checks zeroed grains (zeroed_grain=on and write -z),
// which read as zeros without looking at the parent.
func TestZeroedGrains(t *testing.T) {
	dir := formattest.QemuDir(t)
	p := filepath.Join(dir, "zg.vmdk")
	formattest.Create(t, p, "vmdk", "10M", "-o", "zeroed_grain=on")
	formattest.QemuIO(t, "vmdk", p, "write -P 0x5a 0 1M", "write -z 64k 256k", "write -P 1 3M 4k")
	formattest.Check(t, p, opts)
	img := open(t, p, format.Policy{})
	e, err := img.Extent(64 << 10)
	if err != nil || e.Status != format.Zero || e.Length != 256<<10 {
		t.Errorf("Extent(64k) = %+v, %v; want a 256 KiB zero run", e, err)
	}
}

// TestChain checks a differencing disk over a parent: unallocated grains
// read from the parent, and the map reports their depth.
func TestChain(t *testing.T) {
	dir := formattest.QemuDir(t)
	base := filepath.Join(dir, "base.vmdk")
	child := filepath.Join(dir, "child.vmdk")
	formattest.Create(t, base, "vmdk", "10M")
	formattest.QemuIO(t, "vmdk", base, "write -P 0x22 0 1M", "write -P 0x23 5M 100k")
	formattest.Qemu(t, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
	formattest.QemuIO(t, "vmdk", child, "write -P 0x33 64k 64k", "write -P 0x34 5M 4k", "write -P 0x35 9M 512")
	formattest.Check(t, child, opts)
	img := open(t, child, format.Policy{})
	if info := img.Info(); info.BackingFile != "base.vmdk" || info.BackingFormat != "vmdk" || info.Backing == nil {
		t.Errorf("backing %q %q %v", info.BackingFile, info.BackingFormat, info.Backing)
	}
	e, err := img.Extent(0)
	if err != nil || e.Depth != 1 || e.Status != format.Data || e.Length != 64<<10 {
		t.Errorf("Extent(0) = %+v, %v; want 64 KiB of data at depth 1", e, err)
	}
	e, err = img.Extent(64 << 10)
	if err != nil || e.Depth != 0 || e.Status != format.Data {
		t.Errorf("Extent(64k) = %+v, %v; want data at depth 0", e, err)
	}
	// With NoBacking the parent's data is unallocated zeros.
	nb := open(t, child, format.Policy{NoBacking: true})
	if n, _ := format.AllocatedBytes(nb); n != 3*64<<10 {
		t.Errorf("NoBacking: %d allocated bytes, want %d", n, 3*64<<10)
	}

	// A three-level chain.
	grand := filepath.Join(dir, "grand.vmdk")
	formattest.Qemu(t, "create", "-q", "-f", "vmdk", "-b", "child.vmdk", "-F", "vmdk", grand)
	formattest.QemuIO(t, "vmdk", grand, "write -P 0x44 8M 70k")
	formattest.Check(t, grand, opts)
}

// TestMultiExtent writes across the 2 GiB extent boundaries of split disks.
func TestMultiExtent(t *testing.T) {
	formattest.RequireQemu(t)
	for _, sub := range []string{"twoGbMaxExtentSparse", "twoGbMaxExtentFlat"} {
		t.Run(sub, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "split.vmdk")
			formattest.Create(t, p, "vmdk", "5G", "-o", "subformat="+sub)
			formattest.QemuIO(t, "vmdk", p, "write -P 0x71 2047M 2M", "write -P 0x72 4095M 1025k", "write -P 0x73 5119M 1M")
			formattest.Check(t, p, opts)
			img := open(t, p, format.Policy{})
			if n := len(img.Info().ExtentFiles); n != 3 {
				t.Errorf("%d extent files, want 3", n)
			}
			// Compare the written regions byte for byte with qemu-io's pattern.
			for _, r := range []struct {
				off, n int64
				pat    byte
			}{{2047 << 20, 2 << 20, 0x71}, {4095 << 20, 1025 << 10, 0x72}, {5119 << 20, 1 << 20, 0x73}} {
				buf := make([]byte, r.n+2)
				if _, err := img.ReadAt(buf, r.off-1); err != nil && r.off+r.n != img.Size() {
					t.Fatal(err)
				}
				want := append(append([]byte{0}, bytes.Repeat([]byte{r.pat}, int(r.n))...), 0)
				if r.off+r.n == img.Size() {
					buf, want = buf[:len(buf)-1], want[:len(want)-1]
				}
				if !bytes.Equal(buf, want) {
					t.Errorf("region at %d differs from the written pattern", r.off)
				}
			}
		})
	}
}

func open(t testing.TB, path string, p format.Policy) format.Image {
	t.Helper()
	img, err := format.Open(path, "vmdk", p)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// TestExtentOutside checks that a descriptor naming an extent outside its
// directory is refused under the default policy and opened with
// AllowOutside.
func TestExtentOutside(t *testing.T) {
	root := formattest.QemuDir(t)
	imgDir := filepath.Join(root, "images")
	baitDir := filepath.Join(root, "bait")
	for _, d := range []string{imgDir, baitDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(root, "src.vmdk")
	formattest.Create(t, src, "vmdk", "1M", "-o", "subformat=monolithicFlat")
	formattest.QemuIO(t, "vmdk", src, "write -P 0x66 0 1M")
	if err := os.Rename(filepath.Join(root, "src-flat.vmdk"), filepath.Join(baitDir, "secret")); err != nil {
		t.Fatal(err)
	}
	desc := formattest.ReadFile(t, src)
	for name, ref := range map[string]string{
		"relative": "../bait/secret",
		"absolute": filepath.Join(baitDir, "secret"),
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(imgDir, name+".vmdk")
			text := strings.Replace(string(desc), `"src-flat.vmdk"`, `"`+ref+`"`, 1)
			formattest.WriteFile(t, p, []byte(text))
			_, err := format.Open(p, "vmdk", format.Policy{})
			if !errors.Is(err, format.ErrOutsideDirectory) {
				t.Fatalf("default policy: err = %v, want ErrOutsideDirectory", err)
			}
			_, err = format.Open(p, "", format.Policy{Untrusted: true})
			if err == nil {
				t.Fatal("untrusted policy opened the extent")
			}
			img := open(t, p, format.Policy{AllowOutside: true})
			buf := make([]byte, 1<<20)
			if _, err := img.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, bytes.Repeat([]byte{0x66}, 1<<20)) {
				t.Error("AllowOutside: wrong data")
			}
		})
	}
}

func TestProbe(t *testing.T) {
	for _, c := range []struct {
		data string
		want bool
	}{
		{"KDMV\x01\x00\x00\x00", true},
		{"COWD\x01\x00\x00\x00", true},
		{"# Disk DescriptorFile\nversion=1\nCID=1\n", true},
		{"# Disk DescriptorFile\r\nversion=1\r\n", true},
		{"# comment\n   \nversion=3\n", true},
		{"\nversion=3\n", false},
		{"version=4\n", false},
		{"QFI\xfb", false},
		{"# only a comment", false},
		{"", false},
	} {
		got := vmdk.Probe(&formattest.MemFile{Data: []byte(c.data)})
		if got != c.want {
			t.Errorf("Probe(%q) = %v, want %v", c.data, got, c.want)
		}
	}
	_, err := vmdk.Open(&formattest.MemFile{Data: []byte("QFI\xfb\x00\x00\x00\x03")}, nil)
	if !errors.Is(err, format.ErrWrongType) {
		t.Errorf("Open(qcow2 magic) = %v, want ErrWrongType", err)
	}
}

func FuzzVMDK(f *testing.F) { formattest.FuzzOpen(f, "vmdk", "../../testdata/vmdk") }

func BenchmarkOpenEmpty1TiB(b *testing.B) {
	formattest.RequireQemu(b)
	formattest.BenchOpenEmpty(b, formattest.CreateEmpty(b, "vmdk", "1T"), "vmdk", 4)
}

// TestSnapshotChains checks VMDK snapshot chains as qemu-img makes them
// (qemu-img create -b parent.vmdk -F vmdk, the child naming its parent by
// parentFileNameHint and its CID by parentCID) for every sparse subformat
// of parent and child: the map equals qemu-img map's, layer by layer, and
// a conversion to raw passes qemu-img compare with the chain. The disk is
// 3 GiB, so twoGbMaxExtentSparse splits, and writes cross the split.
func TestSnapshotChains(t *testing.T) {
	formattest.RequireQemu(t)
	subs := []string{"monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"}
	for _, ps := range subs {
		for _, cs := range subs {
			if testing.Short() && ps != "monolithicSparse" {
				continue // -short: the children of one parent
			}
			t.Run(ps+"/"+cs, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				parent, child := filepath.Join(dir, "parent.vmdk"), filepath.Join(dir, "child.vmdk")
				formattest.Create(t, parent, "vmdk", "3G", "-o", "subformat="+ps)
				// In increasing order: a stream is written front to back.
				formattest.QemuIO(t, "vmdk", parent, "write -P 0x11 0 1M", "write -P 0x12 2047M 2M", "write -P 0x13 3071M 1M")
				formattest.Create(t, child, "vmdk", "3G", "-o", "subformat="+cs, "-b", "parent.vmdk", "-F", "vmdk")
				// Half a grain: qemu fills the rest from the parent (a
				// stream takes whole grains only).
				last := "write -P 0x23 3071M 512"
				if cs == "streamOptimized" {
					last = "write -P 0x23 3071M 64k"
				}
				formattest.QemuIO(t, "vmdk", child, "write -P 0x21 512k 1M", "write -P 0x22 2048M 64k", last)
				img := open(t, child, format.Policy{})
				if info := img.Info(); info.BackingFile != "parent.vmdk" || info.Backing == nil {
					t.Errorf("backing %q, %v", info.BackingFile, info.Backing)
				}
				if ours, theirs := formattest.MapRuns(t, img), formattest.QemuMapRuns(t, child); fmt.Sprint(ours) != fmt.Sprint(theirs) {
					t.Errorf("map\ndiskimg  %v\nqemu-img %v", ours, theirs)
				}
				out := filepath.Join(dir, "out.raw")
				toRaw(t, img, out)
				if msg, err := exec.Command("qemu-img", "compare", "-f", "vmdk", "-F", "raw", child, out).CombinedOutput(); err != nil {
					t.Errorf("qemu-img compare: %v: %s", err, msg)
				}
			})
		}
	}
}

// TestSnapshotCID: a parent written after its child was made has a new
// CID, no longer the child's parentCID. As qemu, the chain still opens and
// maps; reading what the parent holds fails, naming the parentCID.
func TestSnapshotCID(t *testing.T) {
	parent, child := snapshot(t, "-o", "subformat=monolithicSparse")
	formattest.QemuIO(t, "vmdk", child, "write -P 0x21 4M 64k")
	formattest.QemuIO(t, "vmdk", parent, "write -P 0x12 6M 64k") // a new CID
	img := open(t, child, format.Policy{})
	if ours, theirs := formattest.MapRuns(t, img), formattest.QemuMapRuns(t, child); fmt.Sprint(ours) != fmt.Sprint(theirs) {
		t.Errorf("map\ndiskimg  %v\nqemu-img %v", ours, theirs)
	}
	buf := make([]byte, 64<<10)
	if _, err := img.ReadAt(buf, 4<<20); err != nil || buf[0] != 0x21 {
		t.Errorf("the child's own data: %x, %v", buf[0], err)
	}
	if _, err := img.ReadAt(buf, 0); err == nil || !strings.Contains(err.Error(), "parentCID") {
		t.Errorf("the parent's data: %v, want a parentCID error", err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", child, filepath.Join(filepath.Dir(child), "q.raw")).CombinedOutput(); err == nil {
		t.Errorf("qemu-img convert read the changed parent: %s", out)
	}
}

// snapshot makes an 8 MiB parent.vmdk holding 1 MiB of 0x11 and a child
// over it (child.vmdk, made with the extra create arguments args).
func snapshot(t *testing.T, args ...string) (parent, child string) {
	dir := formattest.QemuDir(t)
	parent, child = filepath.Join(dir, "parent.vmdk"), filepath.Join(dir, "child.vmdk")
	formattest.Create(t, parent, "vmdk", "8M")
	formattest.QemuIO(t, "vmdk", parent, "write -P 0x11 0 1M")
	formattest.Create(t, child, "vmdk", "8M", append(args, "-b", "parent.vmdk", "-F", "vmdk")...)
	return parent, child
}

// toRaw writes img's guest bytes to a sparse raw file at path.
func toRaw(t *testing.T, img format.Image, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(img.Size()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	err = format.Walk(img, 0, func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		for off := e.Start; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil {
				return err
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotParentNames: a child's parentFileNameHint goes through the
// path policy; a hint that leads nowhere (VMware on Windows stores
// absolute Windows paths) can be replaced by a parent given with
// --parent, which must have the child's parentCID.
func TestSnapshotParentNames(t *testing.T) {
	// A descriptor file, whose text may change length.
	parent, child := snapshot(t, "-o", "subformat=twoGbMaxExtentSparse")
	dir := filepath.Dir(child)
	desc := formattest.ReadFile(t, child)
	other := filepath.Join(dir, "other.vmdk")
	formattest.Create(t, other, "vmdk", "8M")
	for _, c := range []struct {
		hint    string
		parents []string
		want    string // an error, or "" to open
	}{
		{`C:\Users\me\Documents\Virtual Machines\Win\parent.vmdk`, nil, "absolute Windows path"},
		{`C:\Users\me\Documents\Virtual Machines\Win\parent.vmdk`, []string{other, parent}, ""},
		{`C:\Users\me\Documents\Virtual Machines\Win\parent.vmdk`, []string{other}, "parentCID"},
		{"/elsewhere/parent.vmdk", nil, "absolute path"},
		{"../parent.vmdk", nil, `".."`},
		{"gone.vmdk", nil, "--parent"},
		{"child.vmdk", nil, "loops"},
	} {
		patched := bytes.Replace(desc, []byte(`parentFileNameHint="parent.vmdk"`), []byte(`parentFileNameHint="`+c.hint+`"`), 1)
		if bytes.Equal(patched, desc) {
			t.Fatal("no parentFileNameHint to patch in the child's descriptor")
		}
		formattest.WriteFile(t, child, patched)
		img, err := format.Open(child, "", format.Policy{Parents: c.parents})
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %v: %v, want %q", c.hint, c.parents, err, c.want)
			}
			if err == nil {
				img.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %v: %v", c.hint, c.parents, err)
			continue
		}
		buf := make([]byte, 512)
		if _, err := img.ReadAt(buf, 0); err != nil || buf[0] != 0x11 || img.Info().BackingFile != parent {
			t.Errorf("%s %v: read %x, %v; backing %q", c.hint, c.parents, buf[0], err, img.Info().BackingFile)
		}
		img.Close()
	}
}
