package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// TestRunSparsifyTiny runs the sparsify case on a tiny disk against a
// stand-in for virt-sparsify that only converts (it leaves the deleted
// files in), so diskimg's output must be the smaller.
func TestRunSparsifyTiny(t *testing.T) {
	t.Parallel()
	formattest.RequireQemu(t)
	if missingTool("mkfs.ext4", "debugfs") != "" {
		t.Skip("e2fsprogs not installed")
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "virt-sparsify")
	// Called as: --quiet --format raw --convert qcow2 SRC DST.
	os.WriteFile(fake, []byte("#!/bin/sh\nexec qemu-img convert -f raw -O qcow2 \"$6\" \"$7\"\n"), 0o755)
	var log strings.Builder
	rep, err := RunSparsify(context.Background(), Config{Diskimg: buildDiskimg(t), VirtSparsify: fake, Dir: dir, Runs: 2, Sizes: TinySizes, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	d, v := rep.Diskimg, rep.VirtSparsify
	if d.Error != "" || v.Error != "" || len(d.Runs) != 2 || rep.Ratio <= 0 {
		t.Fatalf("diskimg %+v, stand-in %+v", d, v)
	}
	if d.OutputBytes == 0 || d.OutputBytes*4 > v.OutputBytes || rep.Plain < v.OutputBytes/2 {
		t.Errorf("outputs: diskimg %d, stand-in %d, plain %d bytes", d.OutputBytes, v.OutputBytes, rep.Plain)
	}
	if len(rep.Targets) != 2 || !rep.Targets[0].Met {
		t.Errorf("targets %+v", rep.Targets)
	}
	var out strings.Builder
	if err := rep.WriteTable(&out); err != nil || !strings.Contains(out.String(), "diskimg convert --sparsify") {
		t.Errorf("table: %v\n%s", err, out.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("work directory left behind: %v", entries)
	}
}
