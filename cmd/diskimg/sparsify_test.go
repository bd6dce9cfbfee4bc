package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// extWithDeleted makes a 64 MiB ext4 image holding 16 files of 1 MiB of
// random data and deletes half of them: their blocks are free but still
// hold data.
func extWithDeleted(t *testing.T, dir string) string {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true (install e2fsprogs)", tool)
			}
			t.Skipf("%s not installed (install e2fsprogs)", tool)
		}
	}
	tree := filepath.Join(dir, "tree")
	os.Mkdir(tree, 0o755)
	var rm []string
	for i := range 16 {
		b := make([]byte, 1<<20)
		rand.Read(b)
		name := string(rune('a'+i)) + ".bin"
		os.WriteFile(filepath.Join(tree, name), b, 0o644)
		if i%2 == 0 {
			rm = append(rm, "rm /"+name)
		}
	}
	img := filepath.Join(dir, "ext4.raw")
	script := filepath.Join(dir, "rm")
	os.WriteFile(script, []byte(strings.Join(rm, "\n")+"\n"), 0o644)
	for _, args := range [][]string{
		{"mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", tree, img, "64M"},
		{"debugfs", "-w", "-f", script, img},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", args[0], err, out)
		}
	}
	return img
}

// TestConvertSparsify converts an ext4 with deleted files: the output
// leaves their 8 MiB out, passes --verify (against the source with its
// free space read as zeros), qemu-img check and e2fsck, and holds the
// remaining files unchanged.
func TestConvertSparsify(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	src := extWithDeleted(t, dir)
	plain, sparse := filepath.Join(dir, "plain.qcow2"), filepath.Join(dir, "sparse.qcow2")
	if _, stderr, code := runCLI(t, "convert", "-O", "qcow2", src, plain); code != 0 {
		t.Fatal(stderr)
	}
	stdout, stderr, code := runCLI(t, "convert", "--sparsify", "--verify", "-O", "qcow2", src, sparse)
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "disk   ext4") || !strings.Contains(stderr, "of it held data") {
		t.Errorf("report on stderr: %q", stderr)
	}
	a, _ := os.Stat(plain)
	b, _ := os.Stat(sparse)
	if a.Size()-b.Size() < 7<<20 {
		t.Errorf("sparsified output is %d bytes, the plain one %d: the 8 MiB of deleted files are still there", b.Size(), a.Size())
	}
	formattest.Qemu(t, "check", sparse)
	back := filepath.Join(dir, "back.raw")
	formattest.Qemu(t, "convert", "-f", "qcow2", "-O", "raw", sparse, back)
	if out, err := exec.Command("e2fsck", "-fn", back).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	for _, name := range []string{"b.bin", "d.bin", "p.bin"} {
		x, _ := exec.Command("debugfs", "-R", "cat /"+name, src).Output()
		y, _ := exec.Command("debugfs", "-R", "cat /"+name, back).Output()
		if len(x) != 1<<20 || !bytes.Equal(x, y) {
			t.Errorf("%s differs after sparsifying (%d, %d bytes)", name, len(x), len(y))
		}
	}
	// A dirty filesystem is copied whole unless forced.
	if out, err := exec.Command("debugfs", "-w", "-R", "ssv state 0", src).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	_, stderr, code = runCLI(t, "convert", "--sparsify", "-O", "qcow2", src, filepath.Join(dir, "dirty.qcow2"))
	if code != 0 || !strings.Contains(stderr, "kept whole: dirty: not cleanly unmounted") {
		t.Errorf("dirty: exit %d, %q", code, stderr)
	}
	_, stderr, code = runCLI(t, "convert", "--sparsify=force", "--verify", "-O", "qcow2", src, filepath.Join(dir, "forced.qcow2"))
	if code != 0 || strings.Contains(stderr, "kept whole") {
		t.Errorf("forced: exit %d, %q", code, stderr)
	}
	if _, stderr, code := runCLI(t, "convert", "--sparsify=yes", "-O", "qcow2", src, filepath.Join(dir, "x.qcow2")); code != 1 || !strings.Contains(stderr, `"yes" is not force`) {
		t.Errorf("--sparsify=yes: exit %d, %q", code, stderr)
	}
}

// TestCloudConvertSparsify: with --sparsify a qcow2 that Huawei takes as
// it is gets converted, leaving the deleted files out.
func TestCloudConvertSparsify(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	raw := extWithDeleted(t, dir)
	src := filepath.Join(dir, "vm.qcow2")
	formattest.Qemu(t, "convert", "-f", "raw", "-O", "qcow2", raw, src)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	if stdout, _, code := runCLI(t, "convert", "--cloud", "huawei-ims", "--disk", "data", src, out); code != 0 || !strings.Contains(stdout, "as it is") {
		t.Fatalf("without --sparsify: exit %d, %q", code, stdout)
	}
	stdout, stderr, code := runCLI(t, "convert", "--cloud", "huawei-ims", "--disk", "data", "--sparsify", src, out)
	if code != 0 || !strings.Contains(stdout, "vm-sparse.qcow2: qcow2") || !strings.Contains(stdout, "verified") {
		t.Fatalf("exit %d: %s%s", code, stdout, stderr)
	}
	a, _ := os.Stat(src)
	b, _ := os.Stat(filepath.Join(out, "vm-sparse.qcow2"))
	if a.Size()-b.Size() < 7<<20 {
		t.Errorf("sparsified upload is %d bytes, the source %d", b.Size(), a.Size())
	}
}

// TestBenchSparsifyJSON runs `bench --sparsify` on a tiny disk, with a
// stand-in for virt-sparsify first on PATH.
func TestBenchSparsifyJSON(t *testing.T) {
	formattest.RequireQemu(t)
	extWithDeleted(t, t.TempDir()) // skips without e2fsprogs
	t.Setenv(asCLI, "1")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "virt-sparsify"), []byte("#!/bin/sh\nexec qemu-img convert -f raw -O qcow2 \"$6\" \"$7\"\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	out, stderr, code := runBenchCLI(t, "--sparsify", "--tiny", "--runs", "1", "--output", "json", "--dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		Ratio   float64
		Targets []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Ratio <= 0 || len(rep.Targets) != 2 {
		t.Fatalf("%v: %s", err, out)
	}
}
