package inspect

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// requireTool skips t when a tool is missing; under CI=true it fails, so
// CI cannot pass without the tools installed.
func requireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			os.Setenv("PATH", os.Getenv("PATH")+":"+dir)
			return
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true (install %s)", name, pkg)
	}
	t.Skipf("%s not installed (install %s)", name, pkg)
}

// run runs a tool on files the test made and returns its output.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String()
}

// sparseFile makes a sparse file of size bytes.
func sparseFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// place copies the non-zero 64 KiB blocks of src into dst at off, so the
// disk stays sparse.
func place(t testing.TB, dst, src string, off int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	for pos := int64(0); ; pos += int64(len(buf)) {
		n, err := in.ReadAt(buf, pos)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, err := out.WriteAt(buf[:n], off+pos); err != nil {
				t.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
}

// blkid returns blkid's low-level probe of a file the test made.
func blkid(t testing.TB, path string) map[string]string {
	t.Helper()
	requireTool(t, "blkid", "util-linux")
	m := map[string]string{}
	for _, l := range strings.Split(run(t, "blkid", "-p", "-o", "export", path), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// inspectFile opens path with the format registry and inspects it.
func inspectFile(t testing.TB, path string) *Report {
	t.Helper()
	img, err := format.Open(path, "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	r, err := Inspect(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// inspectBytes inspects an in-memory raw disk.
func inspectBytes(t testing.TB, data []byte) *Report {
	t.Helper()
	img, err := format.NewOpener(format.Policy{Untrusted: true}).OpenImage(&formattest.MemFile{Data: data, Path: "mem.img"}, "raw")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func hasFinding(r *Report, sub string) bool {
	for _, f := range r.Findings {
		if strings.Contains(f.Message, sub) {
			return true
		}
	}
	return false
}

func openMem(data []byte) (format.Image, error) {
	return format.NewOpener(format.Policy{Untrusted: true}).OpenImage(&formattest.MemFile{Data: data, Path: "mem.img"}, "raw")
}

func lookupFormat(name string) (*format.Format, error) { return format.Lookup(name) }
