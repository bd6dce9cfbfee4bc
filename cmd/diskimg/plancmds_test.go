package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/limits"
)

// cliOnPath puts a "diskimg" on PATH that runs the test binary as the
// CLI, so commands can be run as printed.
func cliOnPath(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\n%s=1 exec %q \"$@\"\n", asCLI, os.Args[0])
	if err := os.WriteFile(filepath.Join(dir, "diskimg"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// shell runs a command line as a user would, in dir.
func shell(t *testing.T, dir, line string) (string, error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPlanCommandsRun runs every command each profile's plan prints, as
// printed, on a raw disk named disk.raw, a qcow2 overlay whose backing
// file is outside its directory, fixed and dynamic VHDs and a VHDX, named
// from the working directory and from its parent: each must succeed.
func TestPlanCommandsRun(t *testing.T) {
	formattest.RequireQemu(t)
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("tar is needed for the GCP package command")
	}
	cliOnPath(t)
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
					before := listDir(t, dir)
					defer removeNew(t, dir, before)
					line := fmt.Sprintf("diskimg plan --output=json --cloud %s %s %s", cloud, strings.Join(flags, " "), name)
					out, err := shell(t, cwd, line)
					var d limits.Decision
					if jerr := json.Unmarshal([]byte(out), &d); jerr != nil {
						t.Fatalf("%s: %v, %v: %s", line, err, jerr, out)
					}
					for _, c := range d.Commands {
						if strings.HasPrefix(c, "java ") {
							t.Logf("not run (Huawei's tool): %s", c)
							continue
						}
						if out, err := shell(t, cwd, c); err != nil {
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
	for _, n := range listDir(t, dir) {
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
	if got := listDir(t, out); len(got) != 1 || got[0] != "dynamic-azure.vhd" {
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
