package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/inspect/inspecttest"
	"github.com/diskimg/diskimg/limits"
)

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
			if err := os.WriteFile(p, []byte("just some text, not a disk: 40 bytes..\n"), 0o644); err != nil {
				t.Fatal(err)
			}
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
