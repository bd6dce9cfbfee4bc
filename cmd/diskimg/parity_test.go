package main

import (
	"encoding/json"
	"os"
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
	"raw":   {nil},
	"qcow2": {nil, {"-o", "cluster_size=4096"}, {"-c"}},
	"vmdk":  {nil, {"-o", "subformat=streamOptimized"}},
	"vpc":   {nil, {"-o", "subformat=fixed"}},
	"vhdx":  {nil},
	"qed":   {nil},
	"vdi":   {nil, {"-o", "static=on"}},
	"qcow":  {nil},
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
				wd, _ := os.Getwd()
				if err := os.Chdir(dir); err != nil {
					t.Fatal(err)
				}
				defer os.Chdir(wd)
				name := filepath.Base(path)

				out, stderr, code := runCLI(t, "info", "--output=json", name)
				if code != 0 {
					t.Fatalf("info: exit %d: %s", code, stderr)
				}
				var ours map[string]any
				if err := json.Unmarshal([]byte(out), &ours); err != nil {
					t.Fatal(err)
				}
				// qemu-img is told the format: it probes a fixed VHD as raw.
				theirs := formattest.QemuInfo(t, name, "-f", f.Name)
				if _, ok := ours["allocated-size"]; !ok {
					t.Error("info has no allocated-size")
				}
				delete(ours, "allocated-size")
				if !reflect.DeepEqual(ours, theirs) {
					t.Errorf("info differs:\ndiskimg  %v\nqemu-img %v", ours, theirs)
				}

				out, stderr, code = runCLI(t, "map", "--output=json", name)
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
