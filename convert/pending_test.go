package convert

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// withNamedTemp runs fn with O_TMPFILE off, as on a filesystem without it.
func withNamedTemp(t *testing.T, fn func()) {
	defer func(v bool) { noTmpfile = v }(noTmpfile)
	noTmpfile = true
	fn()
}

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
		if out.pf.tmp != "" {
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
			if strings.Contains(n, tempMarker) {
				t.Errorf("temporary name %s left", n)
			}
		}
	}
}

// TestStaleTempRemoved: without O_TMPFILE the output has a hidden locked
// name; another run leaves it alone while its writer lives and removes it
// once the writer is gone (its lock released without clean-up, as by
// SIGKILL).
func TestStaleTempRemoved(t *testing.T) {
	withNamedTemp(t, func() {
		dir := t.TempDir()
		a, err := CreateOutput(filepath.Join(dir, "a.img"), OutputOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if a.pf.tmp == "" || !staleName.MatchString(filepath.Base(a.pf.tmp)) {
			t.Fatalf("temporary name %q", a.pf.tmp)
		}
		// Someone else's file that merely looks like ours, and one that
		// is not a regular file, are kept.
		os.Mkdir(filepath.Join(dir, ".x.diskimg-0123456789ab"), 0o700)
		os.WriteFile(filepath.Join(dir, ".y.diskimg-123"), nil, 0o600)
		b, err := CreateOutput(filepath.Join(dir, "b.img"), OutputOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(a.pf.tmp); err != nil {
			t.Fatalf("a live writer's file removed: %v", err)
		}
		// a's process dies: its descriptor closes, the name stays.
		a.f.Close()
		b.Abort()
		c, err := CreateOutput(filepath.Join(dir, "c.img"), OutputOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Abort()
		if _, err := os.Stat(a.pf.tmp); err == nil {
			t.Error("a dead writer's temporary file was not removed")
		}
		for _, keep := range []string{".x.diskimg-0123456789ab", ".y.diskimg-123"} {
			if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
				t.Errorf("%s removed", keep)
			}
		}
		// The fallback commits and discards as before.
		c.Target.Write([]byte("c"))
		if err := c.Commit(); err != nil {
			t.Fatal(err)
		}
		if got := formattest.ListDir(t, dir); !slices.Equal(got, []string{".x.diskimg-0123456789ab", ".y.diskimg-123", "c.img"}) {
			t.Errorf("directory %v", got)
		}
	})
}

// TestOutputMessagesNameThePath: errors name the path the user gave,
// never a temporary or /proc name.
func TestOutputMessagesNameThePath(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		dst := filepath.Join(dir, "x.img")
		run := func() {
			out, err := CreateOutput(dst, OutputOptions{})
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(dst, []byte("theirs"), 0o600)
			err = out.Commit()
			if err == nil || !strings.Contains(err.Error(), dst) || strings.Contains(err.Error(), tempMarker) || strings.Contains(err.Error(), "/proc/") {
				t.Errorf("named=%v: commit over a new file: %v", named, err)
			}
			_, err = CreateOutput(filepath.Join(dir, "missing", "y.img"), OutputOptions{})
			if err == nil || !strings.Contains(err.Error(), "missing/y.img") || strings.Contains(err.Error(), tempMarker) {
				t.Errorf("named=%v: create in a missing directory: %v", named, err)
			}
		}
		if named {
			withNamedTemp(t, run)
		} else {
			run()
		}
		if got := formattest.ListDir(t, dir); !slices.Equal(got, []string{"x.img"}) {
			t.Errorf("directory %v", got)
		}
	}
}

// TestKilledNamedTempRemoved: a writer SIGKILLed on a filesystem without
// O_TMPFILE leaves its hidden name; the next run into the directory
// removes it.
func TestKilledNamedTempRemoved(t *testing.T) {
	if dir := os.Getenv("DISKIMG_TEST_KILLED_WRITER"); dir != "" {
		// The child: write, say so, and wait to be killed.
		noTmpfile = true
		out, err := CreateOutput(filepath.Join(dir, "x.img"), OutputOptions{})
		if err != nil {
			os.Exit(1)
		}
		out.Target.Write([]byte("partial"))
		os.Stdout.WriteString("ready\n")
		select {}
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledNamedTempRemoved$")
	cmd.Env = append(os.Environ(), "DISKIMG_TEST_KILLED_WRITER="+dir)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	cmd.Process.Kill()
	cmd.Wait()
	if line != "ready\n" {
		t.Fatalf("child said %q", line)
	}
	left := formattest.ListDir(t, dir)
	if len(left) != 1 || !staleName.MatchString(left[0]) {
		t.Fatalf("after the kill: %v, want one temporary file", left)
	}
	out, err := CreateOutput(filepath.Join(dir, "y.img"), OutputOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out.Abort()
	if got := formattest.ListDir(t, dir); len(got) != 0 {
		t.Errorf("the next run left %v", got)
	}
}
