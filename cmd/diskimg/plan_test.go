package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
	"github.com/diskimg/diskimg/limits"
)

// The sizes the Huawei import and export paths turn on. The disks hold a
// small bootable Linux in their first MiBs and nothing after.
var boundarySizes = []struct {
	name string
	size int64
}{
	{"127G", 127 << 30}, {"128G", 128 << 30}, {"128G+1", 128<<30 + 1}, {"1T", 1 << 40}, {"1T+1", 1<<40 + 1},
}

func planJSON(t *testing.T, args ...string) (limits.Decision, int) {
	t.Helper()
	out, stderr, code := runCLI(t, append([]string{"plan", "--output=json"}, args...)...)
	var d limits.Decision
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("plan %v: exit %d, %v: %s%s", args, code, err, out, stderr)
	}
	return d, code
}

// sparseRaw makes a raw file of n bytes that holds no data.
func sparseRaw(t *testing.T, dir, name string, n int64) string {
	t.Helper()
	path := filepath.Join(dir, name)
	formattest.MakeRaw(t, path, n, formattest.Empty)
	return path
}

// TestPlanHuaweiBoundaries drives `plan --cloud huawei-ims` over sparse
// images made at the sizes where the path changes, in several formats, for
// import and export.
func TestPlanHuaweiBoundaries(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	type want struct{ path, format string }
	for i, b := range boundarySizes {
		raw := bootableRaw(t, dir, fmt.Sprintf("disk%d.raw", i), b.size)
		qcow := filepath.Join(dir, fmt.Sprintf("disk%d.qcow2", i))
		formattest.Convert(t, raw, qcow, "qcow2")
		vhdx := filepath.Join(dir, fmt.Sprintf("disk%d.vhdx", i))
		formattest.Convert(t, raw, vhdx, "vhdx")
		for _, tc := range []struct {
			args []string
			want want
		}{
			// RAW uploaded as it is: the file's size decides the path.
			{[]string{"--upload-format", "raw", raw}, [...]want{{"normal", "raw"}, {"normal", "raw"}, {"fast", "raw"}, {"fast", "raw"}, {"refused", "raw"}}[i]},
			// A mostly empty RAW converted to qcow2 fits the normal path up to the 1 TB system disk limit.
			{[]string{raw}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"refused", "qcow2"}}[i]},
			// A mostly empty qcow2 goes as it is; over 1 TB the system disk limit refuses it.
			{[]string{qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"refused", "qcow2"}}[i]},
			// A vhdx's 32 MiB blocks are mostly holes, which a qcow2 leaves
			// out: smaller converted, until the qcow2's tables for 1 TB
			// outgrow the vhdx.
			{[]string{vhdx}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "vhdx"}, {"refused", "vhdx"}}[i]},
			// A data disk may be up to 2048 GB.
			{[]string{"--disk", "data", qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}, {"normal", "qcow2"}}[i]},
			// Export: the image's size decides; over 128 GB only fast export (ZVHD2), over 1 TB refused.
			{[]string{"--direction", "export", qcow}, [...]want{{"normal", "qcow2"}, {"normal", "qcow2"}, {"fast", "zvhd2"}, {"fast", "zvhd2"}, {"refused", ""}}[i]},
		} {
			name := b.name + " " + strings.Join(tc.args[:len(tc.args)-1], " ") + " " + filepath.Ext(tc.args[len(tc.args)-1])
			t.Run(name, func(t *testing.T) {
				d, code := planJSON(t, append([]string{"--cloud", "huawei-ims"}, tc.args...)...)
				if d.Path != tc.want.path || d.UploadFormat != tc.want.format {
					t.Errorf("path %q, upload %q; want %q, %q\nfindings: %+v", d.Path, d.UploadFormat, tc.want.path, tc.want.format, d.Findings)
				}
				wantCode := 0
				if tc.want.path == limits.Refused {
					wantCode = exitRefused
				}
				if code != wantCode {
					t.Errorf("exit %d, want %d", code, wantCode)
				}
			})
		}
	}
}

// TestPlanGolden golden-tests plan's text output for each profile on the
// bundled demo image.
func TestPlanGolden(t *testing.T) {
	for _, cloud := range limits.Profiles() {
		t.Run(cloud, func(t *testing.T) {
			out, stderr, code := runCLI(t, "plan", "--cloud", cloud, "../../testdata/demo.qcow2")
			if code != 0 && code != exitRefused {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			golden(t, "plan-"+cloud+".txt", out)
		})
	}
}

// TestCloudConvertHuawei runs the Huawei path end to end: plan, convert to
// ZVHD2, verify, and re-plan the output.
func TestCloudConvertHuawei(t *testing.T) {
	dir := t.TempDir()
	src := bootableRaw(t, dir, "vm.raw", 200<<30)
	f, _ := os.OpenFile(src, os.O_WRONLY, 0)
	f.WriteAt([]byte("some data at 5 GiB"), 5<<30)
	f.WriteAt([]byte("and at 150 GiB"), 150<<30)
	f.Close()
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	stdout, stderr, code := runCLI(t, "convert", "--cloud", "huawei-ims", "--upload-format", "zvhd2", src, out)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "vm.zvhd2: zvhd2") || !strings.Contains(stdout, "verified") {
		t.Errorf("stdout %q", stdout)
	}
	if _, _, code := runCLI(t, "compare", src, filepath.Join(out, "vm.zvhd2")); code != 0 {
		t.Errorf("compare with the source: exit %d", code)
	}
	// Refused images write nothing.
	big := sparseRaw(t, dir, "huge.raw", 1<<40+1<<20)
	_, _, code = runCLI(t, "convert", "--cloud", "huawei-ims", big, out)
	if code != exitRefused {
		t.Errorf("convert --cloud of a 1 TiB+ system disk: exit %d, want %d", code, exitRefused)
	}
	if got := formattest.ListDir(t, out); len(got) != 1 {
		t.Errorf("output directory holds %v", got)
	}
}

// TestPlanHuaweiFastZVHD2 plans an image whose data is over 128 GiB: the
// fast path with ZVHD2. Every cluster of the qcow2 maps to one cluster of
// data, so it holds 200 GiB of data in a sparse file of that size
// allocating a few MiB; holding no OS, it goes as a data disk.
func TestPlanHuaweiFastZVHD2(t *testing.T) {
	path := filepath.Join(formattest.QemuDir(t), "big.qcow2")
	sharedClusterQcow2(t, path, "200G")
	d, code := planJSON(t, "--cloud", "huawei-ims", "--disk", "data", path)
	if code != 0 || d.Path != "fast" || d.UploadFormat != "zvhd2" || d.Conversion == nil || d.Conversion.Format != "zvhd2" {
		t.Errorf("exit %d, decision %+v", code, d)
	}
	d, _ = planJSON(t, "--cloud", "huawei-ims", "--disk", "data", "--upload-format", "raw", path)
	if d.Path != "fast" || d.UploadFormat != "raw" || !strings.Contains(strings.Join(d.Commands, "\n"), "CreateMF.jar") {
		t.Errorf("raw upload: %+v", d)
	}
}

// sharedClusterQcow2 makes a qcow2 of the given size with 2 MiB clusters
// in which every cluster is allocated and maps to the same host cluster,
// full of data: all of the disk is data, in a file allocating a few
// clusters.
// (qemu-img check would count the shared cluster's references as wrong.)
func sharedClusterQcow2(t *testing.T, path, size string) {
	t.Helper()
	const cs = 2 << 20
	formattest.Create(t, path, "qcow2", size, "-o", "preallocation=metadata,cluster_size=2M")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	be := binary.BigEndian
	var h [48]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		t.Fatal(err)
	}
	clusters := (int64(be.Uint64(h[24:])) + cs - 1) / cs
	var l1 [8]byte
	if _, err := f.ReadAt(l1[:], int64(be.Uint64(h[40:]))); err != nil {
		t.Fatal(err)
	}
	l2Off := int64(be.Uint64(l1[:]) &^ (1 << 63))
	l2 := make([]byte, clusters*8)
	if _, err := f.ReadAt(l2, l2Off); err != nil || clusters > cs/8 {
		t.Fatalf("L2 table at %d: %v (%d clusters)", l2Off, err, clusters)
	}
	first := be.Uint64(l2)
	for i := int64(1); i < clusters; i++ {
		be.PutUint64(l2[i*8:], first)
	}
	host := int64(first &^ (1 << 63))
	if _, err := f.WriteAt(l2, l2Off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x55}, cs), host); err != nil {
		t.Fatal(err)
	}
}

// cliPath returns a PATH whose "diskimg" runs the test binary as the
// command (see asCLI), for the shells a test starts.
func cliPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\n%s=1 exec %q \"$@\"\n", asCLI, os.Args[0])
	if err := os.WriteFile(filepath.Join(dir, "diskimg"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir + string(os.PathListSeparator) + os.Getenv("PATH")
}

// shell runs a command line as a user would, in dir, with PATH path.
func shell(dir, path, line string) (string, error) {
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+path)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPlanCommandsRun runs every command each profile's plan prints, as
// printed, on a raw disk named disk.raw, a qcow2 overlay whose backing
// file is outside its directory, fixed and dynamic VHDs and a VHDX, named
// from the working directory and from its parent: each must succeed.
func TestPlanCommandsRun(t *testing.T) {
	t.Parallel()
	formattest.RequireQemu(t)
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("tar is needed for the GCP package command")
	}
	path := cliPath(t)
	dir := planImages(t)
	root := filepath.Dir(dir)
	images := map[string][]string{
		"disk.raw": nil, "overlay.qcow2": {"--allow-backing-outside"},
		"fixed.vhd": nil, "dynamic.vhd": nil, "vm.vhdx": nil,
	}
	ran := 0
	for _, cloud := range limits.Profiles() {
		for img, flags := range images {
			for _, cwd := range []string{dir, root} {
				name := img
				if cwd == root {
					name = filepath.Join("imgs", img)
				}
				t.Run(cloud+"/"+name, func(t *testing.T) {
					before := formattest.ListDir(t, dir)
					defer removeNew(t, dir, before)
					line := fmt.Sprintf("diskimg plan --output=json --cloud %s %s %s", cloud, strings.Join(flags, " "), name)
					out, err := shell(cwd, path, line)
					var d limits.Decision
					if jerr := json.Unmarshal([]byte(out), &d); jerr != nil {
						t.Fatalf("%s: %v, %v: %s", line, err, jerr, out)
					}
					for _, c := range d.Commands {
						if strings.HasPrefix(c, "java ") {
							t.Logf("not run (Huawei's tool): %s", c)
							continue
						}
						if out, err := shell(cwd, path, c); err != nil {
							t.Errorf("%s\nprinted by %s\nfails: %v: %s", c, line, err, out)
						}
						ran++
					}
					if d.Conversion != nil && len(d.Commands) == 0 {
						t.Errorf("%s: a conversion without commands", line)
					}
				})
			}
		}
	}
	if ran < 40 {
		t.Errorf("only %d commands ran", ran)
	}
}

// planImages makes, in a new directory imgs, a raw disk.raw, fixed.vhd,
// dynamic.vhd, vm.vhdx and overlay.qcow2, whose backing file is outside
// imgs, all of one 21 MiB disk holding a little data.
func planImages(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "imgs")
	os.Mkdir(dir, 0o755)
	base := filepath.Join(t.TempDir(), "base.raw")
	formattest.MakeRaw(t, base, 21<<20+512, formattest.Sparse)
	formattest.Convert(t, base, filepath.Join(dir, "disk.raw"), "raw")
	formattest.Convert(t, base, filepath.Join(dir, "fixed.vhd"), "vpc", "-o", "subformat=fixed")
	formattest.Convert(t, base, filepath.Join(dir, "dynamic.vhd"), "vpc")
	formattest.Convert(t, base, filepath.Join(dir, "vm.vhdx"), "vhdx")
	formattest.Qemu(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", filepath.Join(dir, "overlay.qcow2"))
	return dir
}

// removeNew removes the files of dir not in before.
func removeNew(t *testing.T, dir string, before []string) {
	had := map[string]bool{}
	for _, n := range before {
		had[n] = true
	}
	for _, n := range formattest.ListDir(t, dir) {
		if !had[n] {
			os.Remove(filepath.Join(dir, n))
		}
	}
}

// TestPlanNames: a conversion never writes over the planned file, and the
// commands repeat what opening it needed.
func TestPlanNames(t *testing.T) {
	formattest.RequireQemu(t)
	dir := planImages(t)
	raw, vhd, overlay := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "dynamic.vhd"), filepath.Join(dir, "overlay.qcow2")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cloud", "gcp", raw}, "disk-gcp.raw"},
		{[]string{"--cloud", "openstack", "--allow-backing-outside", overlay}, "--allow-backing-outside -f qcow2 -O qcow2 " + overlay + " " + filepath.Join(dir, "overlay-openstack.qcow2")},
		{[]string{"--cloud", "azure", vhd}, filepath.Join(dir, "dynamic-azure.vhd")},
		{[]string{"--cloud", "openstack", "--no-backing", overlay}, "--no-backing -f qcow2"},
	} {
		d, _ := planJSON(t, tc.args...)
		if cmds := strings.Join(d.Commands, "\n"); !strings.Contains(cmds, tc.want) {
			t.Errorf("plan %v: commands\n%s\nwant %q", tc.args, cmds, tc.want)
		}
	}
	d, _ := planJSON(t, "--cloud", "gcp", raw)
	if p := limits.PackageCommand(d.Conversion, dir); !strings.Contains(p, "--transform") {
		t.Errorf("GCP package of disk-gcp.raw does not name it disk.raw: %s", p)
	}
}

// TestCloudConvertMakesOutdir: convert --cloud creates a missing OUTDIR,
// and leaves none behind when it writes nothing.
func TestCloudConvertMakesOutdir(t *testing.T) {
	formattest.RequireQemu(t)
	dir := planImages(t)
	vhd := filepath.Join(dir, "dynamic.vhd")
	out := filepath.Join(dir, "new", "azure")
	if stdout, stderr, code := runCLI(t, "convert", "--cloud", "azure", "--disk", "data", vhd, out); code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	if got := formattest.ListDir(t, out); len(got) != 1 || got[0] != "dynamic-azure.vhd" {
		t.Errorf("OUTDIR holds %v", got)
	}
	huge := sparseRaw(t, dir, "huge.raw", 1<<40+1<<20)
	refused := filepath.Join(dir, "refused", "out")
	if _, _, code := runCLI(t, "convert", "--cloud", "huawei-ims", huge, refused); code != exitRefused {
		t.Errorf("refused image: exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(dir, "refused")); err == nil {
		t.Error("a refused convert --cloud created OUTDIR")
	}
	// A conversion that fails removes the directories it made.
	bad := filepath.Join(dir, "bad", "out")
	if _, stderr, code := runCLI(t, "convert", "--cloud", "azure", "--disk", "data", "-m", "2000", vhd, bad); code != 1 || !strings.Contains(stderr, "workers") {
		t.Errorf("2000 workers: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); err == nil {
		t.Error("a failed convert --cloud left OUTDIR")
	}
}

// bootableRaw makes a raw system disk of size bytes: an MBR disk whose
// first MiBs hold GRUB's boot code and a Debian root with virtio drivers
// and cloud-init, and nothing after.
func bootableRaw(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	disk := inspecttest.LinuxDisk{Table: "mbr", BIOS: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true,
		Kernels: []inspecttest.Kernel{inspecttest.Debian12(true)}}}.Build(t, dir, name)
	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	return disk
}

// TestPlanBootGolden plans system disks that will or will not boot on
// each cloud; every profile's text output and exit code are golden, one
// file per disk.
func TestPlanBootGolden(t *testing.T) {
	t.Parallel()
	dc := inspecttest.Server2019("DC01")
	dc.ProductType = "LanmanNT"
	for _, tc := range []struct {
		name  string
		build func(t *testing.T, dir string) string
		// codes are the exit codes wanted, by profile (0 when missing).
		codes map[string]int
	}{
		{"bare-data-file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "vm.raw")
			formattest.WriteFile(t, p, []byte("just some text, not a disk: 40 bytes..\n"))
			return p
		}, map[string]int{"aws": exitRefused, "azure": exitRefused, "gcp": exitRefused, "huawei-ims": exitRefused, "openstack": exitRefused, "rackspace": exitRefused}},
		{"bios-linux", func(t *testing.T, dir string) string {
			return inspecttest.LinuxDisk{Table: "mbr", BIOS: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true,
				Kernels: []inspecttest.Kernel{inspecttest.Debian12(true)}}}.Build(t, dir, "vm.raw")
		}, nil},
		{"bios-linux-no-virtio", func(t *testing.T, dir string) string {
			return inspecttest.LinuxDisk{Table: "mbr", BIOS: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true,
				Kernels: []inspecttest.Kernel{inspecttest.Debian12(false)}}}.Build(t, dir, "vm.raw")
		}, nil},
		{"uefi-linux", func(t *testing.T, dir string) string {
			return inspecttest.LinuxDisk{Table: "gpt", UEFI: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true,
				Kernels: []inspecttest.Kernel{inspecttest.Debian12(true)}}}.Build(t, dir, "vm.raw")
		}, map[string]int{"rackspace": exitRefused}},
		{"windows-dc", func(t *testing.T, dir string) string {
			return inspecttest.WindowsDisk{Windows: dc, KernelVersion: [4]uint16{10, 0, 17763, 1}}.Build(t, dir, "vm.raw")
		}, map[string]int{"rackspace": exitRefused}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := tc.build(t, dir)
			var out strings.Builder
			for _, cloud := range limits.Profiles() {
				stdout, stderr, code := runCLI(t, "plan", "--cloud", cloud, img)
				if code != tc.codes[cloud] {
					t.Errorf("%s: exit %d, want %d: %s%s", cloud, code, tc.codes[cloud], stdout, stderr)
				}
				fmt.Fprintf(&out, "$ diskimg plan --cloud %s vm.raw\n%sexit %d\n\n", cloud, strings.NewReplacer(dir+"/", "", dir, ".").Replace(stdout), code)
			}
			golden(t, "plan-boot-"+tc.name+".txt", out.String())
		})
	}
}

// TestPlanBootMode: --boot-mode states how the image boots, when the
// user knows better than inspect or must choose for a hybrid image.
func TestPlanBootMode(t *testing.T) {
	t.Parallel()
	img := inspecttest.LinuxDisk{Table: "gpt", BIOS: true, UEFI: true, Linux: inspecttest.Linux{CloudInit: true, Grub: true,
		Kernels: []inspecttest.Kernel{inspecttest.Debian12(true)}}}.Build(t, t.TempDir(), "hybrid.raw")
	for _, tc := range []struct {
		args []string
		path string
		sev  limits.Severity
	}{
		{[]string{"--cloud", "aws"}, "normal", limits.Warning},
		{[]string{"--cloud", "aws", "--boot-mode", "uefi"}, "normal", limits.Info},
		{[]string{"--cloud", "rackspace"}, "normal", ""},
		{[]string{"--cloud", "rackspace", "--boot-mode", "uefi"}, limits.Refused, limits.Error},
	} {
		d, _ := planJSON(t, append(tc.args, img)...)
		var sev limits.Severity
		for _, f := range d.Findings {
			if strings.HasSuffix(f.Rule, ".boot-mode") {
				sev = f.Severity
			}
		}
		if d.Path != tc.path || sev != tc.sev {
			t.Errorf("%v: path %s, boot-mode finding %q; want %s, %q (%+v)", tc.args, d.Path, sev, tc.path, tc.sev, d.Findings)
		}
	}
	if _, stderr, code := runCLI(t, "plan", "--cloud", "aws", "--boot-mode", "efi", img); code != 1 || !strings.Contains(stderr, "--boot-mode") {
		t.Errorf("--boot-mode efi: exit %d %s", code, stderr)
	}
}
