package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

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
