package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// qemuCreatable are the formats qemu-img makes that diskimg reads, with
// the variants the CLI parity test tries.
var qemuCreatable = map[string][][]string{
	"raw":       {nil},
	"qcow2":     {nil, {"-o", "cluster_size=4096"}, {"-c"}},
	"vmdk":      {nil, {"-o", "subformat=streamOptimized"}},
	"vpc":       {nil, {"-o", "subformat=fixed"}},
	"vhdx":      {nil},
	"qed":       {nil},
	"vdi":       {nil, {"-o", "static=on"}},
	"qcow":      {nil},
	"parallels": {nil, {"-o", "cluster_size=4k"}},
}

// TestInfoAndMapMatchQemu runs `diskimg info --output=json` and `diskimg
// map --output=json` on images qemu-img made, for every registered format,
// and compares them with qemu-img's own output.
func TestInfoAndMapMatchQemu(t *testing.T) {
	formattest.RequireQemu(t)
	for _, f := range format.Formats() {
		variants, ok := qemuCreatable[f.Name]
		if !ok {
			continue
		}
		for i, v := range variants {
			t.Run(f.Name+"/"+strings.Join(v, ""), func(t *testing.T) {
				dir := t.TempDir()
				path := formattest.Generate(t, dir, "disk", f.Name, 9<<20+3*512, formattest.Sparse, v...)
				_ = i
				// Run both tools on the same relative name from the image's directory.
				inDir(t, dir)
				name := filepath.Base(path)
				ours := infoJSON(t, name)
				// qemu-img is told the format: it probes a fixed VHD as raw.
				theirs := formattest.QemuInfo(t, name, "-f", f.Name)
				if !reflect.DeepEqual(ours, theirs) {
					t.Errorf("info differs:\ndiskimg  %v\nqemu-img %v", ours, theirs)
				}

				out, stderr, code := runCLI(t, "map", "--output=json", name)
				if code != 0 {
					t.Fatalf("map: exit %d: %s", code, stderr)
				}
				want := string(formattest.Qemu(t, "map", "--output=json", "-f", f.Name, name))
				// qemu-img has no block status for VHDX and maps it all as
				// data; diskimg reports the real allocation.
				if f.Name != "vhdx" && out != want {
					t.Errorf("map differs:\ndiskimg:\n%s\nqemu-img:\n%s", out, want)
				}
			})
		}
	}
}

// infoJSON runs `info --output=json` with args and returns its keys
// without diskimg's own allocated-size, which it must have.
func infoJSON(t *testing.T, args ...string) map[string]any {
	t.Helper()
	out, stderr, code := runCLI(t, append([]string{"info", "--output=json"}, args...)...)
	if code != 0 {
		t.Fatalf("info: exit %d: %s", code, stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["allocated-size"]; !ok {
		t.Error("info has no allocated-size")
	}
	delete(m, "allocated-size")
	return m
}

// TestInfoBackingNotOpened: info shows a backing file it does not open,
// missing or outside the image's directory, as qemu-img info does (same
// JSON); --backing-chain opens the chain under the policy and fails on a
// missing or outside file, and with --allow-backing-outside matches
// qemu-img's chain.
func TestInfoBackingNotOpened(t *testing.T) {
	formattest.RequireQemu(t)
	for _, f := range []string{"qcow2", "qcow", "qed", "vmdk"} {
		t.Run(f, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "img")
			base := filepath.Join(root, "other", "base."+f)
			for _, d := range []string{dir, filepath.Dir(base)} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			formattest.Create(t, base, f, "1M")
			cases := []struct {
				name, backing string
				exists        bool
			}{
				{"missing", "base." + f, false},
				{"dotdot", "../other/base." + f, true},
				{"absolute", base, true},
				{"absolute-missing", "/nonexistent/base." + f, false},
			}
			wd, _ := os.Getwd()
			defer os.Chdir(wd)
			for _, c := range cases {
				if f == "vmdk" && !c.exists {
					continue // qemu-img cannot make a VMDK over a missing parent
				}
				top := "top-" + c.name + "." + f
				formattest.Create(t, filepath.Join(dir, top), f, "2M", "-u", "-b", c.backing, "-F", f)
				if err := os.Chdir(dir); err != nil {
					t.Fatal(err)
				}
				out, stderr, code := runCLI(t, "info", "--output=json", top)
				if code != 0 {
					t.Fatalf("%s: info: exit %d: %s", c.name, code, stderr)
				}
				var ours map[string]any
				if err := json.Unmarshal([]byte(out), &ours); err != nil {
					t.Fatal(err)
				}
				delete(ours, "allocated-size")
				if theirs := formattest.QemuInfo(t, top); !reflect.DeepEqual(ours, theirs) {
					t.Errorf("%s: info differs:\ndiskimg  %v\nqemu-img %v", c.name, ours, theirs)
				}
				if _, stderr, code := runCLI(t, "info", "--backing-chain", top); code != 1 || !strings.Contains(stderr, c.backing) {
					t.Errorf("%s: info --backing-chain: exit %d, %q; want 1 and the backing file's name", c.name, code, stderr)
				}
				for _, cmd := range []string{"map", "convert"} {
					args := []string{cmd, top}
					if cmd == "convert" {
						args = append(args, filepath.Join(root, "out.raw"))
					}
					if _, stderr, code := runCLI(t, args...); code != 1 || !strings.Contains(stderr, c.backing) {
						t.Errorf("%s: %s: exit %d, %q; want it to fail at open", c.name, cmd, code, stderr)
					}
				}
				if !c.exists {
					continue
				}
				out, stderr, code = runCLI(t, "info", "--output=json", "--backing-chain", "--allow-backing-outside", top)
				if code != 0 {
					t.Fatalf("%s: info --backing-chain --allow-backing-outside: exit %d: %s", c.name, code, stderr)
				}
				var chain []map[string]any
				if err := json.Unmarshal([]byte(out), &chain); err != nil {
					t.Fatal(err)
				}
				var theirs []map[string]any
				if err := json.Unmarshal(formattest.Qemu(t, "info", "--output=json", "--backing-chain", top), &theirs); err != nil {
					t.Fatal(err)
				}
				for _, r := range chain {
					delete(r, "allocated-size")
				}
				if !reflect.DeepEqual(chain, theirs) {
					t.Errorf("%s: chain differs:\ndiskimg  %v\nqemu-img %v", c.name, chain, theirs)
				}
			}
		})
	}
}

// holeImage is an image whose allocated storage is mostly holes in its
// host file, as qemu-img creates it.
type holeImage struct {
	name, format, size string
	opts               string
	// qemuMapsAllData: qemu-img has no block status for the format.
	qemuMapsAllData bool
}

var holeImages = []holeImage{
	{name: "metadata.qcow2", format: "qcow2", size: "8G", opts: "preallocation=metadata"},
	{name: "falloc.qcow2", format: "qcow2", size: "1G", opts: "preallocation=falloc"},
	{name: "fixed.vhd", format: "vpc", size: "8G", opts: "subformat=fixed"},
	{name: "fixed.vhdx", format: "vhdx", size: "8G", opts: "subformat=fixed", qemuMapsAllData: true},
	{name: "flat.vmdk", format: "vmdk", size: "8G", opts: "subformat=monolithicFlat"},
	{name: "split.vmdk", format: "vmdk", size: "8G", opts: "subformat=twoGbMaxExtentFlat"},
	{name: "static.vdi", format: "vdi", size: "8G", opts: "static=on"},
}

// holeWrites are the data qemu-io writes into each image: three runs.
var holeWrites = [][2]int64{{0, 64 << 10}, {100 << 20, 1 << 20}, {700<<20 + 4096, 100 << 10}}

// TestHolesUnderBlocks converts images whose blocks are allocated but
// whose host files are holes there: diskimg reports those ranges as
// zeros (allocated-size counts only the data, map equals qemu-img's),
// converts them to images no larger than qemu-img's and equal to them,
// and plans them for the normal import path.
func TestHolesUnderBlocks(t *testing.T) {
	formattest.RequireQemu(t)
	images := holeImages
	if testing.Short() {
		images = images[:3]
	}
	for _, h := range images {
		t.Run(h.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, h.name)
			formattest.Qemu(t, "create", "-q", "-f", h.format, "-o", h.opts, path, h.size)
			var data int64
			args := []string{"-f", h.format}
			for _, w := range holeWrites {
				args = append(args, "-c", fmt.Sprintf("write -P 0x55 %d %d", w[0], w[1]))
				data += w[1]
			}
			if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
				t.Fatalf("qemu-io: %v\n%s", err, out)
			}
			checkHoleImage(t, h, path, data, int64(len(holeWrites)))
		})
	}
	t.Run("empty-256G.qcow2", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "empty.qcow2")
		h := holeImage{name: "empty.qcow2", format: "qcow2", size: "256G", opts: "preallocation=metadata"}
		formattest.Qemu(t, "create", "-q", "-f", h.format, "-o", h.opts, path, h.size)
		checkHoleImage(t, h, path, 0, 0)
	})
}

func checkHoleImage(t *testing.T, h holeImage, path string, data, runs int64) {
	t.Helper()
	dir := filepath.Dir(path)
	// First what reads no guest data: a falloc'd file's unwritten
	// extents read as data to SEEK_DATA once a read cached them, as
	// qemu-img convert's reads do.
	out, stderr, code := runCLI(t, "info", "--output=json", path)
	if code != 0 {
		t.Fatalf("info: exit %d: %s", code, stderr)
	}
	var info struct {
		Allocated   int64 `json:"allocated-size"`
		ClusterSize int64 `json:"cluster-size"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if limit := data + runs*max(info.ClusterSize, 64<<10); info.Allocated > limit || info.Allocated < data {
		t.Errorf("allocated-size %d; data %d, at most %d", info.Allocated, data, limit)
	}

	ours, stderr, code := runCLI(t, "map", "--output=json", path)
	if code != 0 {
		t.Fatalf("map: exit %d: %s", code, stderr)
	}
	theirs := string(formattest.Qemu(t, "map", "--output=json", "-f", h.format, path))
	if h.qemuMapsAllData {
		if !strings.Contains(ours, `"zero": true, "data": true`) {
			t.Errorf("map shows no holes under blocks:\n%s", ours)
		}
	} else if ours != theirs {
		t.Errorf("map:\n%s\nqemu-img map:\n%s", ours, theirs)
	} else if human, _, _ := runCLI(t, "map", path); human != string(formattest.Qemu(t, "map", "-f", h.format, path)) {
		t.Errorf("human map:\n%s", human)
	}

	d, code := planJSON(t, "--cloud", "huawei-ims", "--disk", "data", path)
	if code != 0 || d.Path != "normal" {
		t.Errorf("plan: exit %d, path %q, upload %s of %d bytes", code, d.Path, d.UploadFormat, d.UploadSize)
	}

	for _, f := range []string{"qcow2", "raw"} {
		mine, qemus := filepath.Join(dir, "ours."+f), filepath.Join(dir, "qemu."+f)
		mustConvert(t, "-O", f, path, mine)
		formattest.Qemu(t, "convert", "-f", h.format, "-O", f, path, qemus)
		if out, code := qemuImg(t, "compare", "-f", f, "-F", f, mine, qemus); code != 0 {
			t.Errorf("-> %s: qemu-img compare: exit %d: %s", f, code, out)
		}
		ml, ma := fileSizes(t, mine)
		ql, qa := fileSizes(t, qemus)
		for _, s := range [][2]int64{{ml, ql}, {ma, qa}} {
			if a, b := s[0], s[1]; a > b+b/10+256<<10 {
				t.Errorf("-> %s: %d bytes, qemu-img's %d (length %d/%d, allocated %d/%d)", f, a, b, ml, ql, ma, qa)
			}
		}
		os.Remove(mine)
		os.Remove(qemus)
	}
}
