package main

import (
	"bytes"
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
				t.Chdir(dir)
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
	t.Parallel()
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
		if testing.Short() {
			t.Skip("-short: the small preallocated images above cover the holes")
		}
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
		ml, ma := formattest.FileSizes(t, mine)
		ql, qa := formattest.FileSizes(t, qemus)
		for _, s := range [][2]int64{{ml, ql}, {ma, qa}} {
			if a, b := s[0], s[1]; a > b+b/10+256<<10 {
				t.Errorf("-> %s: %d bytes, qemu-img's %d (length %d/%d, allocated %d/%d)", f, a, b, ml, ql, ma, qa)
			}
		}
		os.Remove(mine)
		os.Remove(qemus)
	}
}

// TestMapSubclustersMatchQemu: qcow2 images with extended L2 entries,
// written at subcluster granularity by qemu-io (data, zeros kept
// allocated, zeros unmapped, discards), alone and over a backing file,
// map exactly as `qemu-img map --output=json` maps them: unallocated and
// zero subclusters of a cluster that has a host offset are listed with
// it. Standard clusters written as zeros keep theirs too. Data over holes
// in the host file (qemu-img's "zero" data, issue 17's part) is compared
// as data.
func TestMapSubclustersMatchQemu(t *testing.T) {
	formattest.RequireQemu(t)
	writes := []string{
		"write -P 0x11 0 2k", "write -P 0x12 8k 4k", "write -z 64k 2k", "write -P 0x13 130k 2k",
		"write -z 200k 64k", "write -P 0x14 1M 128k", "write -z 1032k 8k", "write -z -u 1048k 16k",
		"discard 1100k 32k", "write -P 0x15 3M 1k", "write -P 0x16 3075k 1k", "write -z 3076k 1k",
	}
	for _, v := range []struct{ name, opts string }{
		{"16k", "extended_l2=on,cluster_size=16k"},
		{"64k", "extended_l2=on,cluster_size=64k"},
		{"2M", "extended_l2=on,cluster_size=2M"},
		{"standard", "cluster_size=64k"},
	} {
		for _, backing := range []bool{false, true} {
			name := v.name
			if backing {
				name += "-over-backing"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				img := filepath.Join(dir, "img.qcow2")
				args := []string{"-o", v.opts}
				if backing {
					formattest.Generate(t, dir, "base", "qcow2", 4<<20, formattest.Sparse)
					args = append(args, "-b", "base.qcow2", "-F", "qcow2")
				}
				formattest.Create(t, img, "qcow2", "4M", args...)
				cmd := []string{"-f", "qcow2"}
				for _, w := range writes {
					cmd = append(cmd, "-c", w)
				}
				if out, err := exec.Command("qemu-io", append(cmd, img)...).CombinedOutput(); err != nil {
					t.Fatalf("qemu-io: %v: %s", err, out)
				}
				wd, _ := os.Getwd()
				if err := os.Chdir(dir); err != nil {
					t.Fatal(err)
				}
				defer os.Chdir(wd)
				out, stderr, code := runCLI(t, "map", "--output=json", "img.qcow2")
				if code != 0 {
					t.Fatalf("map: exit %d: %s", code, stderr)
				}
				want := string(formattest.Qemu(t, "map", "--output=json", "img.qcow2"))
				if a, b := dataOverHoles(t, out), dataOverHoles(t, want); !reflect.DeepEqual(a, b) {
					t.Errorf("map differs:\ndiskimg:\n%s\nqemu-img:\n%s", out, want)
				}
				formattest.Check(t, img, formattest.Options{})
			})
		}
	}
}

// dataOverHoles decodes map JSON and counts data that reads as zeros
// (qemu-img's "zero" and "data" both set: holes in the host file) as
// plain data, merging entries again as qemu-img merges them.
func dataOverHoles(t *testing.T, js string) []formattest.MapEntry {
	var in, out []formattest.MapEntry
	if err := json.Unmarshal([]byte(js), &in); err != nil {
		t.Fatalf("map JSON %q: %v", js, err)
	}
	for _, e := range in {
		if e.Data {
			e.Zero = false
		}
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.Depth == e.Depth && p.Present == e.Present && p.Zero == e.Zero && p.Data == e.Data &&
				(p.Offset == nil) == (e.Offset == nil) && (p.Offset == nil || *p.Offset+p.Length == *e.Offset) {
				p.Length += e.Length
				continue
			}
		}
		out = append(out, e)
	}
	return out
}

// snapshotDisk makes a qcow2 image over a backing file with three
// internal snapshots, data written between them by qemu-io (compressed
// and zero clusters too), the last taken after the disk grew; it returns
// the image's directory and name.
func snapshotDisk(t *testing.T, opts string) (dir, name string) {
	t.Helper()
	dir = t.TempDir()
	formattest.Generate(t, dir, "base", "qcow2", 6<<20, formattest.Sparse)
	path := filepath.Join(dir, "disk.qcow2")
	formattest.Create(t, path, "qcow2", "6M", "-o", opts, "-b", "base.qcow2", "-F", "qcow2")
	io := func(cmds ...string) {
		args := []string{"-f", "qcow2"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
	}
	io("write -P 0x11 0 1M", "write -P 0x12 5M 70000")
	formattest.Qemu(t, "snapshot", "-c", "first", path)
	io("write -P 0x21 512k 1M", "write -z 5M 64k", "write -c -P 0x22 2M 64k")
	formattest.Qemu(t, "snapshot", "-c", "second, with a comma", path)
	io("discard 0 512k", "write -P 0x31 3M 4k")
	formattest.Qemu(t, "resize", "-f", "qcow2", path, "20M")
	io("write -P 0x32 19M 100k")
	formattest.Qemu(t, "snapshot", "-c", "2", path) // a name that is another's id
	io("write -P 0x41 1M 1M")
	return dir, "disk.qcow2"
}

// TestSnapshotInfoMatchesQemu: info lists the snapshots as qemu-img info
// does, in JSON and in its table.
func TestSnapshotInfoMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	dir, name := snapshotDisk(t, "cluster_size=64k")
	t.Chdir(dir)
	ours := infoJSON(t, name)
	if theirs := formattest.QemuInfo(t, name); !reflect.DeepEqual(ours, theirs) {
		t.Errorf("info differs:\ndiskimg  %v\nqemu-img %v", ours, theirs)
	}
	out, _, _ := runCLI(t, "info", "--output=json", name)
	if !strings.HasPrefix(out, "{\n    \"snapshots\": [\n        {\n            \"icount\": 0,\n            \"vm-clock-nsec\": 0,\n            \"name\": \"first\",") {
		t.Errorf("snapshots not first, or not in qemu-img's key order:\n%s", out)
	}
	out, _, code := runCLI(t, "info", name)
	want := string(formattest.Qemu(t, "info", name))
	var kept []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if !strings.HasPrefix(l, "allocated size: ") {
			kept = append(kept, l)
		}
	}
	if got := strings.Join(kept, ""); code != 0 || got != want {
		t.Errorf("human info differs:\ndiskimg:\n%s\nqemu-img:\n%s", got, want)
	}
}

// TestConvertSnapshotMatchesQemu: convert -l, in each of qemu-img's
// forms, writes what qemu-img convert -l writes (qemu-img compare), to
// qcow2 and raw; measure -l measures the snapshot.
func TestConvertSnapshotMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	for _, opts := range []string{"cluster_size=64k", "extended_l2=on"} {
		t.Run(opts, func(t *testing.T) {
			dir, name := snapshotDisk(t, opts)
			t.Chdir(dir)
			for i, sel := range []string{
				"1", "first", "2", "snapshot.id=2", "snapshot.name=2", "snapshot.name=second,, with a comma",
				"snapshot.id=3,snapshot.name=2", "snapshot.id=1,snapshot.name=first",
			} {
				ref := filepath.Join(dir, "ref.raw")
				formattest.Qemu(t, "convert", "-O", "raw", "-l", sel, name, ref)
				for _, fmtName := range []string{"raw", "qcow2"} {
					out := filepath.Join(dir, "out."+fmtName)
					if _, stderr, code := runCLI(t, "convert", "-q", "-O", fmtName, "-l", sel, name, out); code != 0 {
						t.Fatalf("convert -l %q: exit %d: %s", sel, code, stderr)
					}
					if cmp := formattest.QemuCompareOutput(t, ref, out); !bytes.Contains(cmp, []byte("Images are identical")) {
						t.Errorf("convert -O %s -l %q: qemu-img compare: %s", fmtName, sel, cmp)
					}
					os.Remove(out)
				}
				if i == 0 {
					ours, _, _ := runCLI(t, "measure", "-O", "qcow2", "-l", sel, name)
					theirs := string(formattest.Qemu(t, "measure", "-O", "qcow2", "-l", sel, name))
					if !strings.HasPrefix(theirs, ours) {
						t.Errorf("measure -l %q: diskimg %q, qemu-img %q", sel, ours, theirs)
					}
				}
				os.Remove(ref)
			}
			for _, c := range []struct{ sel, want string }{
				{"4", `no snapshot with id or name "4"`},
				{"snapshot.id=1,snapshot.name=2", `no snapshot with id "1" and name "2"`},
				{"snapshot.tag=1", `invalid parameter "snapshot.tag"`},
				{"snapshot.id", `no snapshot with id "on"`}, // qemu's bare key is "on"
			} {
				out := filepath.Join(dir, "bad.raw")
				if _, stderr, code := runCLI(t, "convert", "-l", c.sel, name, out); code != 1 || !strings.Contains(stderr, c.want) {
					t.Errorf("convert -l %q: exit %d, %q; want exit 1 naming %q", c.sel, code, stderr, c.want)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("convert -l %q wrote %s", c.sel, out)
				}
			}
		})
	}
	// A format without internal snapshots says so.
	dir := t.TempDir()
	path := formattest.Generate(t, dir, "d", "vdi", 1<<20, formattest.Sparse)
	if _, stderr, code := runCLI(t, "convert", "-l", "1", path, filepath.Join(dir, "o.raw")); code != 1 || !strings.Contains(stderr, "internal snapshots of vdi images are not supported") {
		t.Errorf("convert -l of a vdi: exit %d, %q", code, stderr)
	}
}
