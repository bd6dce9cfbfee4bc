package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/inspect/inspecttest"
)

func TestConvertRefusals(t *testing.T) {
	dir := t.TempDir()
	src := rawSource(t, dir, 1<<20)
	exists := filepath.Join(dir, "exists.raw")
	os.WriteFile(exists, []byte("keep me"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown output format", []string{"-O", "nope", src, filepath.Join(dir, "a")}, `unknown output format "nope"`},
		{"unknown option", []string{"-O", "raw", "-o", "bogus=1", src, filepath.Join(dir, "b")}, "bogus"},
		{"compression unsupported", []string{"-O", "raw", "-c", src, filepath.Join(dir, "c")}, "compress"},
		{"bad -S", []string{"-O", "raw", "-S", "1000", src, filepath.Join(dir, "d")}, "invalid sparse size 1000"},
		{"existing output", []string{"-O", "raw", src, exists}, "already exists"},
		{"same file", []string{"-O", "raw", "--force", src, src}, "same file"},
		{"missing source", []string{"-O", "raw", filepath.Join(dir, "nope.raw"), filepath.Join(dir, "e")}, "no such file"},
		{"shrink", []string{"-O", "raw", "--resize", "4K", src, filepath.Join(dir, "f")}, "only grows"},
		{"bad checksum", []string{"-O", "raw", "--checksum", "md5", src, filepath.Join(dir, "g")}, "md5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, append([]string{"convert"}, tc.args...)...)
			if code != 1 || !strings.Contains(stderr, tc.msg) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, tc.msg)
			}
			if got := formattest.ListDir(t, dir); strings.Join(got, " ") != "exists.raw src.raw" {
				t.Errorf("directory holds %v after a refused convert", got)
			}
			if data, _ := os.ReadFile(exists); string(data) != "keep me" {
				t.Error("existing output was touched")
			}
		})
	}
}

func TestConvertCompareMeasure(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := rawSource(t, dir, 9<<20+1536)
	dst := filepath.Join(dir, "dst.raw")
	out, stderr, code := runCLI(t, "convert", "-O", "raw", "--checksum", "sha256", "--verify", src, dst)
	if code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "  "+dst) || len(strings.Fields(out)[0]) != 64 {
		t.Errorf("checksum line %q", out)
	}
	formattest.Qemu(t, "compare", "-f", "raw", "-F", "raw", src, dst)

	if out, _, code := runCLI(t, "compare", src, dst); code != 0 || out != "Images are identical.\n" {
		t.Errorf("compare identical: exit %d, %q", code, out)
	}
	// Change one byte: exit 1 with qemu-img's message and offset.
	f, _ := os.OpenFile(dst, os.O_WRONLY, 0)
	f.WriteAt([]byte{0xff}, 5<<20+10)
	f.Close()
	want := string(formattest.QemuCompareOutput(t, src, dst))
	if out, _, code := runCLI(t, "compare", src, dst); code != 1 || out != want {
		t.Errorf("compare different: exit %d, %q; qemu-img says %q", code, out, want)
	}
	if _, _, code := runCLI(t, "compare", src, filepath.Join(dir, "nope")); code != 2 {
		t.Errorf("compare error: exit %d, want 2", code)
	}

	out, _, code = runCLI(t, "measure", "--output=json", "-O", "raw", src)
	qm := formattest.Qemu(t, "measure", "--output=json", "-f", "raw", "-O", "raw", src)
	if code != 0 || compactJSON(t, out) != compactJSON(t, string(qm)) {
		t.Errorf("measure: %s; qemu-img: %s", out, qm)
	}
}

// TestConvertToStdout streams to standard output through a pipe and gets
// the same bytes as the file output.
func TestConvertToStdout(t *testing.T) {
	dir := t.TempDir()
	src := rawSource(t, dir, 3<<20+512)
	var stderr string
	var code int
	got := formattest.Piped(t, func(w *os.File) error {
		old := os.Stdout
		os.Stdout = w
		defer func() { os.Stdout = old }()
		_, stderr, code = runCLI(t, "convert", "-O", "raw", src, "-")
		return nil
	})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want, _ := os.ReadFile(src)
	if string(got) != string(want) {
		t.Errorf("stdout stream differs from the source (%d vs %d bytes)", len(got), len(want))
	}
}

// TestVMDKExtentName checks that a VMDK's descriptor names its own file,
// as qemu-img's does, also when streamed into a redirected standard output.
func TestVMDKExtentName(t *testing.T) {
	dir := t.TempDir()
	src := rawSource(t, dir, 1<<20)
	for _, sub := range []string{"monolithicSparse", "streamOptimized"} {
		dst := filepath.Join(dir, sub+"-disk.vmdk")
		if _, stderr, code := runCLI(t, "convert", "-O", "vmdk", "-o", "subformat="+sub, src, dst); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		redirected := filepath.Join(dir, sub+"-stdout.vmdk")
		f, err := os.Create(redirected)
		if err != nil {
			t.Fatal(err)
		}
		old := os.Stdout
		os.Stdout = f
		_, stderr, code := runCLI(t, "convert", "-O", "vmdk", "-o", "subformat="+sub, src, "-")
		os.Stdout = old
		f.Close()
		if code != 0 {
			t.Fatalf("stdout: exit %d: %s", code, stderr)
		}
		for _, p := range []string{dst, redirected} {
			data, _ := os.ReadFile(p)
			want := fmt.Sprintf(" SPARSE %q\n", filepath.Base(p))
			if !strings.Contains(string(data[:min(len(data), 4096)]), want) {
				t.Errorf("%s: descriptor lacks the extent line %q", filepath.Base(p), want)
			}
		}
	}
}

// withStdin runs fn with standard input reading from a pipe fed with the
// file at path, or, when redirect is set, from the file itself.
func withStdin(t *testing.T, path string, redirect bool, fn func()) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdin
	defer func() { os.Stdin = old }()
	if redirect {
		os.Stdin = f
		fn()
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() { io.Copy(w, f); w.Close() }()
	os.Stdin = r
	fn()
}

// TestConvertFromStdin reads images from standard input, through a pipe
// (spooled to an unlinked file) and redirected from a file (used in
// place), and checks the output against the input with qemu-img.
func TestConvertFromStdin(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := rawSource(t, dir, 5<<20+512)
	inputs := map[string]string{"raw": src}
	for name, args := range map[string][]string{
		"qcow2": {"qcow2"}, "vpc": {"vpc"}, "vhdx": {"vhdx"},
		"vmdk-stream": {"vmdk", "-o", "subformat=streamOptimized"},
	} {
		p := filepath.Join(dir, "src-"+name)
		formattest.Convert(t, src, p, args[0], args[1:]...)
		inputs[name] = p
	}
	outDir := t.TempDir()
	for name, in := range inputs {
		for _, redirect := range []bool{false, true} {
			out := filepath.Join(outDir, fmt.Sprintf("%s-%v.qcow2", name, redirect))
			var stderr string
			var code int
			withStdin(t, in, redirect, func() { _, stderr, code = runCLI(t, "convert", "-O", "qcow2", "-", out) })
			if code != 0 {
				t.Fatalf("%s (redirect %v): exit %d: %s", name, redirect, code, stderr)
			}
			if cmp := formattest.QemuCompareOutput(t, in, out); !strings.Contains(string(cmp), "identical") {
				t.Errorf("%s (redirect %v): %s", name, redirect, cmp)
			}
		}
	}
	if ents, _ := os.ReadDir(outDir); len(ents) != 2*len(inputs) {
		t.Errorf("output directory holds %d files, want %d (a spool file left behind?)", len(ents), 2*len(inputs))
	}

	// A stream names no other file: a backing file is refused.
	child := filepath.Join(dir, "child.qcow2")
	formattest.Qemu(t, "create", "-f", "qcow2", "-b", "src.raw", "-F", "raw", child)
	var stderr string
	var code int
	withStdin(t, child, false, func() { _, stderr, code = runCLI(t, "convert", "-O", "raw", "-", filepath.Join(outDir, "child.raw")) })
	if code != 1 || !strings.Contains(stderr, "standard input") || !strings.Contains(stderr, "src.raw") {
		t.Errorf("backing file through stdin: exit %d, %q", code, stderr)
	}
	// A redirected file is still a source: it cannot be the output.
	withStdin(t, inputs["qcow2"], true, func() { _, stderr, code = runCLI(t, "convert", "-O", "qcow2", "--force", "-", inputs["qcow2"]) })
	if code != 1 || !strings.Contains(stderr, "same file as input (standard input)") {
		t.Errorf("output = redirected input: exit %d, %q", code, stderr)
	}
}

// extWithDeleted makes a 64 MiB ext4 image holding 16 files of 1 MiB of
// random data and deletes half of them: their blocks are free but still
// hold data.
func extWithDeleted(t *testing.T, dir string) string {
	t.Helper()
	inspecttest.RequireTools(t, map[string]string{"mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs"})
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
	inspecttest.Run(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", tree, img, "64M")
	inspecttest.Run(t, "debugfs", "-w", "-f", script, img)
	return img
}

// TestConvertSparsify converts an ext4 with deleted files: the output
// leaves their 8 MiB out, passes --verify (against the source with its
// free space read as zeros), qemu-img check and e2fsck, and holds the
// remaining files unchanged.
func TestConvertSparsify(t *testing.T) {
	dir := formattest.QemuDir(t)
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
	dir := formattest.QemuDir(t)
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

// qemuImg runs qemu-img on images the test made and returns its standard
// output and exit code (compare exits 1 for "different").
func qemuImg(t *testing.T, args ...string) (string, int) {
	t.Helper()
	formattest.RequireQemu(t)
	out, _, code := runCaptured(t, exec.Command("qemu-img", args...))
	return out, code
}

// runCaptured runs cmd and returns its standard output, its standard
// error and its exit code; only a failure to run it fails the test.
func runCaptured(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// fill writes a file of n bytes of b.
func fill(t *testing.T, path string, n int64, b byte) {
	t.Helper()
	formattest.WriteFile(t, path, bytes.Repeat([]byte{b}, int(n)))
}

// rawSource makes dir/src.raw, a sparse raw disk of size bytes holding a
// few runs of data.
func rawSource(t *testing.T, dir string, size int64) string {
	t.Helper()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, size, formattest.Sparse)
	return src
}

func mustConvert(t *testing.T, args ...string) {
	t.Helper()
	if out, stderr, code := runCLI(t, append([]string{"convert"}, args...)...); code != 0 {
		t.Fatalf("convert %v: exit %d: %s%s", args, code, out, stderr)
	}
}

// TestQuietAndAccepted: -q prints nothing (convert with -p, compare), -U
// and -W are accepted.
func TestQuietAndAccepted(t *testing.T) {
	dir := t.TempDir()
	src := rawSource(t, dir, 3<<20)
	out, stderr, code := runCLI(t, "convert", "-q", "-p", "-U", "-W", src, filepath.Join(dir, "a.raw"))
	if code != 0 || out != "" || stderr != "" {
		t.Errorf("convert -q -p -U -W: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	for _, args := range [][]string{{"-q", src, src}, {"-q", "-U", src, filepath.Join(dir, "a.raw")}} {
		if out, stderr, code := runCLI(t, append([]string{"compare"}, args...)...); code != 0 || out != "" || stderr != "" {
			t.Errorf("compare %v: exit %d, %q %q", args, code, out, stderr)
		}
	}
	fill(t, filepath.Join(dir, "b.raw"), 3<<20, 1)
	if out, _, code := runCLI(t, "compare", "-q", src, filepath.Join(dir, "b.raw")); code != 1 || out != "" {
		t.Errorf("compare -q of different images: exit %d, %q", code, out)
	}
	if _, stderr, code := runCLI(t, "info", "-U", src); code != 0 {
		t.Errorf("info -U: exit %d: %s", code, stderr)
	}
}

// TestCacheModes converts with every -t and -T mode: the same image each
// time; a bad mode is refused before any output exists.
func TestCacheModes(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := rawSource(t, dir, 9<<20+1536)
	for _, mode := range []string{"none", "writeback", "writethrough", "directsync", "unsafe"} {
		for _, f := range []string{"raw", "qcow2", "vpc"} {
			dst := filepath.Join(dir, mode+"."+f)
			mustConvert(t, "-t", mode, "-T", mode, "-O", f, src, dst)
			if out, _ := qemuImg(t, "compare", "-f", "raw", "-F", f, src, dst); !strings.Contains(out, "identical") {
				t.Errorf("-t %s -O %s: %s", mode, f, out)
			}
		}
		// -T on compare reads the same bytes.
		if out, _, code := runCLI(t, "compare", "-T", mode, src, filepath.Join(dir, mode+".qcow2")); code != 0 {
			t.Errorf("compare -T %s: exit %d, %s", mode, code, out)
		}
	}
	for _, args := range [][]string{{"-t", "fast"}, {"-T", "slow"}} {
		_, stderr, code := runCLI(t, append(append([]string{"convert"}, args...), src, filepath.Join(dir, "bad"))...)
		if code != 1 || !strings.Contains(stderr, "invalid cache mode") {
			t.Errorf("%v: exit %d, %q", args, code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); err == nil {
		t.Error("a refused cache mode left an output")
	}
}

// TestConvertInPlace: -n writes into an existing raw file as qemu-img
// convert -n does: byte for byte the same target, the same holes where
// the source has zeros (punched), the target's bytes past the image kept;
// with --target-is-zero the zero ranges are left alone.
func TestConvertInPlace(t *testing.T) {
	dir := formattest.QemuDir(t)
	src := formattest.Generate(t, dir, "src", "qcow2", 5<<20+700, formattest.Sparse)
	const target = 8 << 20
	for _, extra := range [][]string{nil, {"--target-is-zero"}} {
		name := strings.Join(append([]string{"n"}, extra...), " ")
		ours, theirs := filepath.Join(dir, "ours.raw"), filepath.Join(dir, "theirs.raw")
		fill(t, ours, target, 0xff)
		fill(t, theirs, target, 0xff)
		mustConvert(t, append(append([]string{"-n", "-O", "raw"}, extra...), src, ours)...)
		qemuImg(t, append(append([]string{"convert", "-n", "-O", "raw"}, extra...), src, theirs)...)
		a, _ := os.ReadFile(ours)
		b, _ := os.ReadFile(theirs)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: the target differs from qemu-img convert -n's", name)
		}
		if got, want := formattest.Qemu(t, "map", "--output=json", "-f", "raw", ours), formattest.Qemu(t, "map", "--output=json", "-f", "raw", theirs); !bytes.Equal(got, want) {
			t.Errorf("%s: map of the target:\n%s\nafter qemu-img convert -n:\n%s", name, got, want)
		}
		if !bytes.Equal(a[6<<20:], bytes.Repeat([]byte{0xff}, 2<<20)) {
			t.Errorf("%s: the target's bytes past the image changed", name)
		}
	}
	// With --verify only the part written is compared.
	fill(t, filepath.Join(dir, "v.raw"), target, 0x55)
	mustConvert(t, "-n", "--verify", src, filepath.Join(dir, "v.raw"))

	small := filepath.Join(dir, "small.raw")
	fill(t, small, 1<<20, 0)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-n", src, small}, "output file is smaller than input file"},
		{[]string{"-n", src, filepath.Join(dir, "missing.raw")}, "no such file"},
		{[]string{"-n", "-o", "preallocation=full", src, small}, "-o has no effect when skipping image creation"},
		{[]string{"--target-is-zero", src, filepath.Join(dir, "new.raw")}, "--target-is-zero requires use of -n"},
		{[]string{"-n", "-O", "qcow2", src, small}, "only raw targets"},
		{[]string{"-n", src, "-"}, "not standard output"},
	} {
		_, stderr, code := runCLI(t, append([]string{"convert"}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d, %q; want %q", tc.args, code, stderr, tc.msg)
		}
	}
	if data, _ := os.ReadFile(small); !bytes.Equal(data, make([]byte, 1<<20)) {
		t.Error("a refused -n touched the target")
	}
}

// TestConvertInPlaceBlockDevice writes into a loop device with -n, as into
// an LVM volume or an attached cloud volume: the device's bytes must be
// qemu-img convert -n's.
func TestConvertInPlaceBlockDevice(t *testing.T) {
	formattest.RequireQemu(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed (util-linux)")
	}
	dir := t.TempDir()
	src := formattest.Generate(t, dir, "src", "vhdx", 5<<20+700, formattest.Sparse)
	backing := filepath.Join(dir, "volume.img")
	fill(t, backing, 8<<20, 0xaa)
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("losetup cannot attach a loop device here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()

	read := func() []byte {
		b := formattest.ReadFile(t, dev)
		return b
	}
	reset := func() {
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(bytes.Repeat([]byte{0xaa}, 8<<20)); err != nil {
			t.Fatal(err)
		}
		f.Sync()
	}
	for _, extra := range [][]string{nil, {"-t", "none", "--verify"}, {"--target-is-zero"}} {
		name := strings.Join(extra, " ")
		reset()
		qemuImg(t, append([]string{"convert", "-n", "-O", "raw"}, append(filterQemu(extra), src, dev)...)...)
		want := read()
		reset()
		mustConvert(t, append(append([]string{"-n"}, extra...), src, dev)...)
		if !bytes.Equal(read(), want) {
			t.Errorf("-n %s: the device differs from qemu-img convert -n's", name)
		}
	}
}

// filterQemu drops the diskimg-only options from a convert argument list.
func filterQemu(args []string) []string {
	var out []string
	for _, a := range args {
		if a != "--verify" {
			out = append(out, a)
		}
	}
	return out
}

// TestCompareStrictAndSizes compares images of different sizes and
// allocations with and without -s, against qemu-img compare's output and
// exit code.
func TestCompareStrictAndSizes(t *testing.T) {
	dir := formattest.QemuDir(t)
	p := func(name string) string { return filepath.Join(dir, name) }
	formattest.MakeRaw(t, p("a.raw"), 4<<20, formattest.Sparse)
	// b: a's first 2 MiB; c: a, then 2 MiB of zeros; d: c with data in its tail.
	data, _ := os.ReadFile(p("a.raw"))
	os.WriteFile(p("b.raw"), data[:2<<20], 0o644)
	os.WriteFile(p("c.raw"), append(append([]byte{}, data...), make([]byte, 2<<20)...), 0o644)
	os.WriteFile(p("d.raw"), append(append([]byte{}, data...), bytes.Repeat([]byte{7}, 2<<20)...), 0o644)
	formattest.Convert(t, p("a.raw"), p("a.qcow2"), "qcow2")
	formattest.Convert(t, p("a.raw"), p("a-c.qcow2"), "qcow2", "-c")
	for _, pair := range [][2]string{
		{"a.raw", "a.raw"}, {"a.raw", "b.raw"}, {"b.raw", "a.raw"}, {"a.raw", "c.raw"}, {"c.raw", "a.raw"},
		{"a.raw", "d.raw"}, {"b.raw", "d.raw"}, {"a.raw", "a.qcow2"}, {"a.qcow2", "a-c.qcow2"},
	} {
		for _, strict := range []bool{false, true} {
			args := []string{"compare"}
			if strict {
				args = append(args, "-s")
			}
			args = append(args, p(pair[0]), p(pair[1]))
			want, wantCode := qemuImg(t, args...)
			got, stderr, code := runCLI(t, args...)
			if got != want || code != wantCode {
				t.Errorf("%v: exit %d, %q%s; qemu-img: exit %d, %q", args[:len(args)-2], code, got, stderr, wantCode, want)
			}
		}
	}
}

// TestOptionsHelp: -o help lists the output format's options, as
// qemu-img's does, and writes nothing.
func TestOptionsHelp(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"-O", "qcow2", "-o", "help"}, []string{"Supported qcow2 options:", "preallocation", "metadata", "cluster_size"}},
		{[]string{"-o", "help"}, []string{"Supported raw options:", "preallocation", "falloc"}},
		{[]string{"-O", "vpc", "-o", "?", "a", filepath.Join(dir, "x")}, []string{"subformat", "force_size"}},
	} {
		out, stderr, code := runCLI(t, append([]string{"convert"}, tc.args...)...)
		for _, w := range tc.want {
			if code != 0 || !strings.Contains(out, w) {
				t.Errorf("%v: exit %d, %q%s; want %q", tc.args, code, out, stderr, w)
			}
		}
	}
	if out, _, code := runCLI(t, "measure", "-O", "qcow2", "-o", "help"); code != 0 || !strings.Contains(out, "preallocation") {
		t.Errorf("measure -o help: exit %d, %q", code, out)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("-o help wrote %v", ents)
	}
}

// TestPreallocation converts with each -o preallocation= mode to raw and
// qcow2 and compares with qemu-img convert's output: the same map (qcow2:
// every cluster at the same offset), the same allocation class of the
// host file, the same measure; metadata for raw is refused, as by
// qemu-img.
func TestPreallocation(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	src := rawSource(t, dir, 9<<20+1536)
	for _, f := range []string{"raw", "qcow2"} {
		for _, mode := range []string{"off", "metadata", "falloc", "full"} {
			name := f + "-" + mode
			ours, theirs := filepath.Join(dir, name+".ours"), filepath.Join(dir, name+".qemu")
			opt := "preallocation=" + mode
			_, stderr, code := runCLI(t, "convert", "-O", f, "-o", opt, src, ours)
			if f == "raw" && mode == "metadata" {
				if code != 1 || !strings.Contains(stderr, "preallocation") {
					t.Errorf("%s: exit %d, %q; want it refused", name, code, stderr)
				}
				continue
			}
			if code != 0 {
				t.Fatalf("%s: exit %d: %s", name, code, stderr)
			}
			formattest.Qemu(t, "convert", "-f", "raw", "-O", f, "-o", opt, src, theirs)
			// Map before anything reads the files: ext4 reports the
			// unwritten extents of a falloc'd file as data once read.
			gotMap := formattest.Qemu(t, "map", "--output=json", "-f", f, ours)
			wantMap := formattest.Qemu(t, "map", "--output=json", "-f", f, theirs)
			if !bytes.Equal(gotMap, wantMap) {
				t.Errorf("%s: qemu-img map of ours:\n%s\nof qemu-img's:\n%s", name, gotMap, wantMap)
			}
			if out, _ := qemuImg(t, "compare", "-f", "raw", "-F", f, src, ours); !strings.Contains(out, "identical") {
				t.Errorf("%s: %s", name, out)
			}
			if f == "qcow2" {
				formattest.Qemu(t, "check", ours)
			}
			fi, _ := os.Stat(ours)
			qi, _ := os.Stat(theirs)
			if fi.Size() != qi.Size() {
				t.Errorf("%s: file of %d bytes, qemu-img's %d", name, fi.Size(), qi.Size())
			}
			// Whether the file is reserved whole (falloc, full) or only
			// where data is: allocated within 128 KiB of qemu-img's (or
			// less where it need not be reserved: diskimg leaves the
			// unused ends of its tables as holes).
			reserved := mode == "falloc" || mode == "full"
			if d := formattest.Allocated(t, ours) - formattest.Allocated(t, theirs); d > 128<<10 || reserved && d < -128<<10 {
				t.Errorf("%s: %d bytes allocated, qemu-img's %d", name, formattest.Allocated(t, ours), formattest.Allocated(t, theirs))
			}
			got, _, _ := runCLI(t, "measure", "-O", f, "-o", opt, "--output=json", src)
			want := formattest.Qemu(t, "measure", "--output=json", "-f", "raw", "-O", f, "-o", opt, src)
			if compactJSON(t, got) != compactJSON(t, string(want)) {
				t.Errorf("%s: measure %s, qemu-img %s", name, got, want)
			}
		}
	}
	if _, stderr, code := runCLI(t, "convert", "-O", "qcow2", "-c", "-o", "preallocation=metadata", src, filepath.Join(dir, "c.qcow2")); code != 1 || !strings.Contains(stderr, "compression") {
		t.Errorf("-c with preallocation: exit %d, %q", code, stderr)
	}
}

// TestMapCompressed: the human map of a compressed image lists its data
// as compressed (qemu-img prints nothing and fails).
func TestMapCompressed(t *testing.T) {
	dir := formattest.QemuDir(t)
	raw := filepath.Join(dir, "src.raw")
	formattest.WriteFile(t, raw, bytes.Repeat([]byte("compressible "), 200000))
	img := filepath.Join(dir, "c.qcow2")
	formattest.Convert(t, raw, img, "qcow2", "-c")
	out, stderr, code := runCLI(t, "map", img)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) < 2 {
		t.Fatalf("exit %d: %q %s", code, out, stderr)
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) != 4 || f[2] != "compressed" || f[3] != img {
			t.Errorf("line %q: want OFFSET LENGTH compressed FILE", l)
		}
	}
}
