package convert

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// TestNoNameUntilCommit: while an output is written its directory shows
// nothing new (O_TMPFILE), a replaced file stays whole until Commit, and
// reading back before Commit sees what was written.
func TestNoNameUntilCommit(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "old.img")
	os.WriteFile(old, []byte("old contents"), 0o600)
	for _, force := range []bool{false, true} {
		dst := filepath.Join(dir, "new.img")
		if force {
			dst = old
		}
		before := formattest.ListDir(t, dir)
		out, err := CreateOutput(dst, OutputOptions{Force: force})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out.pf.Path(), "/proc/") {
			t.Skipf("%s has no O_TMPFILE", dir)
		}
		out.Target.Write([]byte("new contents"))
		if got := formattest.ListDir(t, dir); !slices.Equal(got, before) {
			t.Errorf("force=%v: directory %v while writing, want %v", force, got, before)
		}
		f, err := out.ReadBack()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 12)
		if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "new contents" || f.Name() != dst {
			t.Errorf("read back %q (%v) named %q", buf, err, f.Name())
		}
		f.(*readBack).Close()
		if b, _ := os.ReadFile(old); string(b) != "old contents" {
			t.Errorf("force=%v: old file %q before Commit", force, b)
		}
		if err := out.Commit(); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(dst); string(b) != "new contents" {
			t.Errorf("force=%v: %q after Commit", force, b)
		}
		if force {
			if fi, _ := os.Stat(old); fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600 kept", fi.Mode().Perm())
			}
		}
		for _, n := range formattest.ListDir(t, dir) {
			if strings.Contains(n, ".diskimg-") {
				t.Errorf("temporary name %s left", n)
			}
		}
	}
}

// TestRedirectedTo: standard output redirected to a regular file is named,
// wherever the file is (/dev/shm too); a device or a pipe is not.
func TestRedirectedTo(t *testing.T) {
	dirs := []string{t.TempDir()}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dirs = append(dirs, "/dev/shm")
	}
	for _, dir := range dirs {
		f, err := os.CreateTemp(dir, "redirect-*.vmdk")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if got := redirectedTo(f); got != f.Name() {
			t.Errorf("redirectedTo(%s) = %q", f.Name(), got)
		}
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, f := range []*os.File{null, w} {
		if got := redirectedTo(f); got != "" {
			t.Errorf("redirectedTo(%s) = %q, want none", f.Name(), got)
		}
	}
}
