package format_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// mapRun is a run of the map as qemu-img map --output=json shows it,
// without host offsets.
type mapRun struct {
	Start, Length       int64
	Depth               int
	Present, Zero, Data bool
}

func appendRun(list []mapRun, r mapRun) []mapRun {
	if n := len(list); n > 0 {
		p := &list[n-1]
		if p.Depth == r.Depth && p.Present == r.Present && p.Zero == r.Zero && p.Data == r.Data {
			p.Length += r.Length
			return list
		}
	}
	return append(list, r)
}

// TestChainMatchesQemu compares the map of a two-layer chain, whose top
// is longer than its backing file, with qemu-img map for every format
// with backing files qemu-img creates: the layer and depth of every run,
// unallocated ranges included, and zeros past the backing file's end.
func TestChainMatchesQemu(t *testing.T) {
	formattest.RequireQemu(t)
	for _, f := range []string{"qcow2", "qcow", "qed", "vmdk"} {
		t.Run(f, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			base, top := filepath.Join(dir, "base."+f), filepath.Join(dir, "top."+f)
			formattest.Create(t, base, f, "4M")
			qemuIO(t, f, base, "write -P 1 0 64k", "write -P 2 1M 64k")
			formattest.Create(t, top, f, "6M", "-b", "base."+f, "-F", f)
			qemuIO(t, f, top, "write -P 3 32k 64k", "write -P 4 5M 64k")
			img := formattest.Open(t, top, f)
			var ours, theirs []mapRun
			err := format.Walk(img, 0, func(e format.Extent) error {
				ours = appendRun(ours, mapRun{e.Start, e.Length, e.Depth, e.Status != format.Unallocated, e.Status != format.Data, e.Status == format.Data})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range formattest.QemuMap(t, top, "-f", f) {
				theirs = appendRun(theirs, mapRun{e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data})
			}
			if fmt.Sprint(ours) != fmt.Sprint(theirs) {
				t.Errorf("map\ndiskimg  %v\nqemu-img %v", ours, theirs)
			}
		})
	}
}

// qemuIO runs qemu-io commands on an image the test made.
func qemuIO(t *testing.T, fmtName, path string, cmds ...string) {
	t.Helper()
	args := []string{"-f", fmtName}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, path)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
}
