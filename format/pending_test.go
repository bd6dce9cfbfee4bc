package format_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// withNamedTemp runs fn with O_TMPFILE off, as on a filesystem without it.
func withNamedTemp(t *testing.T, fn func()) {
	defer format.SetNoTmpfile(format.SetNoTmpfile(true))
	fn()
}

// abort closes and discards a pending file, as an aborted writer does.
func abort(p *format.PendingFile) {
	p.File.Close()
	p.Discard()
}

// TestStaleTempRemoved: without O_TMPFILE the output has a hidden locked
// name; another run leaves it alone while its writer lives and removes it
// once the writer is gone (its lock released without clean-up, as by
// SIGKILL).
func TestStaleTempRemoved(t *testing.T) {
	withNamedTemp(t, func() {
		dir := t.TempDir()
		a, err := format.CreatePending(filepath.Join(dir, "a.img"), "a.img", 0)
		if err != nil {
			t.Fatal(err)
		}
		if !format.StaleName.MatchString(filepath.Base(a.Path())) {
			t.Fatalf("temporary name %q", a.Path())
		}
		// Someone else's file that merely looks like ours, and one that
		// is not a regular file, are kept.
		os.Mkdir(filepath.Join(dir, ".x.diskimg-0123456789ab"), 0o700)
		os.WriteFile(filepath.Join(dir, ".y.diskimg-123"), nil, 0o600)
		b, err := format.CreatePending(filepath.Join(dir, "b.img"), "b.img", 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(a.Path()); err != nil {
			t.Fatalf("a live writer's file removed: %v", err)
		}
		// a's process dies: its descriptor closes, the name stays.
		a.File.Close()
		abort(b)
		c, err := format.CreatePending(filepath.Join(dir, "c.img"), "c.img", 0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.File.Close()
		if _, err := os.Stat(a.Path()); err == nil {
			t.Error("a dead writer's temporary file was not removed")
		}
		for _, keep := range []string{".x.diskimg-0123456789ab", ".y.diskimg-123"} {
			if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
				t.Errorf("%s removed", keep)
			}
		}
		// The fallback commits and discards as before.
		c.File.Write([]byte("c"))
		if err := c.Commit(false, true); err != nil {
			t.Fatal(err)
		}
		if got := formattest.ListDir(t, dir); !slices.Equal(got, []string{".x.diskimg-0123456789ab", ".y.diskimg-123", "c.img"}) {
			t.Errorf("directory %v", got)
		}
	})
}

// TestPendingMessagesNameThePath: errors name the path the user gave,
// never a temporary or /proc name.
func TestPendingMessagesNameThePath(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		dst := filepath.Join(dir, "x.img")
		run := func() {
			out, err := format.CreatePending(dst, dst, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer abort(out)
			os.WriteFile(dst, []byte("theirs"), 0o600)
			err = out.Commit(false, true)
			if err == nil || !strings.Contains(err.Error(), dst) || strings.Contains(err.Error(), ".diskimg-") || strings.Contains(err.Error(), "/proc/") {
				t.Errorf("named=%v: commit over a new file: %v", named, err)
			}
			y := filepath.Join(dir, "missing", "y.img")
			_, err = format.CreatePending(y, y, 0)
			if err == nil || !strings.Contains(err.Error(), "missing/y.img") || strings.Contains(err.Error(), ".diskimg-") {
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
		format.SetNoTmpfile(true)
		out, err := format.CreatePending(filepath.Join(dir, "x.img"), "x.img", 0)
		if err != nil {
			os.Exit(1)
		}
		out.File.Write([]byte("partial"))
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
	if len(left) != 1 || !format.StaleName.MatchString(left[0]) {
		t.Fatalf("after the kill: %v, want one temporary file", left)
	}
	out, err := format.CreatePending(filepath.Join(dir, "y.img"), "y.img", 0)
	if err != nil {
		t.Fatal(err)
	}
	abort(out)
	if got := formattest.ListDir(t, dir); len(got) != 0 {
		t.Errorf("the next run left %v", got)
	}
}

// TestAnonymousFile: the file has no name in its directory, with
// O_TMPFILE and without, and reads back what was written.
func TestAnonymousFile(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		run := func() {
			f, err := format.AnonymousFile(dir, "spool")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := formattest.ListDir(t, dir); len(got) != 0 {
				t.Errorf("named=%v: directory %v", named, got)
			}
			buf := make([]byte, 5)
			if _, err := f.WriteAt([]byte("hello"), 1<<20); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(buf, 1<<20); err != nil || string(buf) != "hello" {
				t.Errorf("named=%v: read %q, %v", named, buf, err)
			}
		}
		if named {
			withNamedTemp(t, run)
		} else {
			run()
		}
	}
}
