package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// listDir returns the names in dir, to prove a failed convert left nothing.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestConvertRefusals(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 1<<20, formattest.Sparse)
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
			if got := listDir(t, dir); strings.Join(got, " ") != "exists.raw src.raw" {
				t.Errorf("directory holds %v after a refused convert", got)
			}
			if data, _ := os.ReadFile(exists); string(data) != "keep me" {
				t.Error("existing output was touched")
			}
		})
	}
}

func TestConvertCompareMeasure(t *testing.T) {
	formattest.RequireQemu(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 9<<20+1536, formattest.Sparse)
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
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 3<<20+512, formattest.Sparse)
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
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 1<<20, formattest.Sparse)
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
	formattest.RequireQemu(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, src, 5<<20+512, formattest.Sparse)
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
