// Package inspecttest builds guest disks for the tests of inspect and of
// the commands that use it: Linux and Windows system disks with the mkfs
// tools, sgdisk/sfdisk, mtools and GRUB's boot code, and registry hives
// and PE files written here. Everything is made in the test's temporary
// directory with fixed identifiers, so reports can be golden files.
package inspecttest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
)

const MiB = 1 << 20

// RequireTool skips t when a tool is missing; under CI=true it fails, so
// CI cannot pass without the tools installed.
func RequireTool(t testing.TB, name, pkg string) {
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

// RequireTools is RequireTool for each tool, named with its package.
func RequireTools(t testing.TB, tools map[string]string) {
	t.Helper()
	for name, pkg := range tools {
		RequireTool(t, name, pkg)
	}
}

// Run runs a tool on files the test made and returns its output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return RunStdin(t, "", name, args...)
}

// RunStdin runs a tool with stdin as its input.
func RunStdin(t testing.TB, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String()
}

// SparseFile makes a sparse file of size bytes.
func SparseFile(t testing.TB, path string, size int64) {
	t.Helper()
	err := os.WriteFile(path, nil, 0o644)
	if err == nil {
		err = os.Truncate(path, size)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Place copies the non-zero 64 KiB blocks of src into dst at off, so the
// disk stays sparse.
func Place(t testing.TB, dst, src string, off int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	buf := make([]byte, 64<<10)
	for pos := int64(0); ; pos += int64(len(buf)) {
		n, err := in.ReadAt(buf, pos)
		writeNonZero(t, dst, buf[:n], off+pos, len(buf))
		if err != nil {
			break
		}
	}
}

// writeNonZero writes the unit-byte pieces of b that are not all zero
// into the file at path, from off, leaving holes for the rest.
func writeNonZero(t testing.TB, path string, b []byte, off int64, unit int) {
	t.Helper()
	var f *os.File
	for i := 0; i < len(b); i += unit {
		p := b[i:min(i+unit, len(b))]
		if format.IsZero(p) {
			continue
		}
		if f == nil {
			var err error
			if f, err = os.OpenFile(path, os.O_WRONLY, 0); err != nil {
				t.Fatal(err)
			}
			defer f.Close()
		}
		if _, err := f.WriteAt(p, off+int64(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// WriteAt writes b into the file at off.
func WriteAt(t testing.TB, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
