package format_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

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
			formattest.QemuIO(t, f, base, "write -P 1 0 64k", "write -P 2 1M 64k")
			formattest.Create(t, top, f, "6M", "-b", "base."+f, "-F", f)
			formattest.QemuIO(t, f, top, "write -P 3 32k 64k", "write -P 4 5M 64k")
			img := formattest.Open(t, top, f)
			ours, theirs := formattest.MapRuns(t, img), formattest.QemuMapRuns(t, top, "-f", f)
			if fmt.Sprint(ours) != fmt.Sprint(theirs) {
				t.Errorf("map\ndiskimg  %v\nqemu-img %v", ours, theirs)
			}
		})
	}
}
