package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
)

// testDir is a directory on one kind of filesystem.
type testDir struct{ fs, path string }

// crashDirs returns the test's temporary directory and, as root, a tmpfs
// and loop-mounted ext4 and xfs filesystems of size bytes made in it
// (skipped, with the reason logged, where mkfs or mount fails).
func crashDirs(t *testing.T, size int64) []testDir {
	dirs := []testDir{{"tempdir", t.TempDir()}}
	if os.Geteuid() != 0 {
		t.Logf("not root: no tmpfs, ext4 and xfs mounts (only the temp dir, %s)", fsType(dirs[0].path))
		return dirs
	}
	base := t.TempDir()
	for _, fs := range []string{"tmpfs", "ext4", "xfs"} {
		mnt := filepath.Join(base, fs)
		os.Mkdir(mnt, 0o755)
		var err error
		if fs == "tmpfs" {
			err = sh("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "diskimg-test", mnt)
		} else {
			img := filepath.Join(base, fs+".img")
			if err = os.WriteFile(img, nil, 0o600); err == nil {
				err = os.Truncate(img, max(size, 320<<20)) // xfs's smallest
			}
			if err == nil {
				force := map[string]string{"ext4": "-F", "xfs": "-f"}[fs]
				err = sh("mkfs."+fs, "-q", force, img)
			}
			if err == nil {
				err = sh("mount", "-o", "loop", img, mnt)
			}
		}
		if err != nil {
			t.Logf("no %s here: %v", fs, err)
			continue
		}
		t.Cleanup(func() {
			if sh("umount", mnt) != nil {
				sh("umount", "-l", mnt)
			}
		})
		dirs = append(dirs, testDir{fs, mnt})
	}
	return dirs
}

// smallFS mounts an ext4 filesystem of size bytes in the test's temp dir
// (root only; skips the test otherwise).
func smallFS(t *testing.T, size int64) string {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small filesystem (loop device)")
	}
	base := t.TempDir()
	img, mnt := filepath.Join(base, "small.img"), filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, size)
	if err := sh("mkfs.ext4", "-q", "-F", img); err != nil {
		t.Skipf("mkfs.ext4: %v", err)
	}
	if err := sh("mount", "-o", "loop", img, mnt); err != nil {
		t.Skipf("cannot mount a loop device here: %v", err)
	}
	t.Cleanup(func() {
		if sh("umount", mnt) != nil {
			sh("umount", "-l", mnt)
		}
	})
	return mnt
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fsType(dir string) string {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return "?"
	}
	switch st.Type {
	case 0xef53:
		return "ext4"
	case 0x01021994:
		return "tmpfs"
	case 0x58465342:
		return "xfs"
	}
	return fmt.Sprintf("fs 0x%x", st.Type)
}

// dirState is every entry of a directory, hidden ones too, with the
// digest of each regular file.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			m[e.Name()] = e.Type().String()
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		m[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return m
}

func stateDiff(before, after map[string]string) string {
	var d []string
	for n, s := range after {
		if b, ok := before[n]; !ok {
			d = append(d, "new "+n)
		} else if b != s {
			d = append(d, "changed "+n)
		}
	}
	for n := range before {
		if _, ok := after[n]; !ok {
			d = append(d, "gone "+n)
		}
	}
	sort.Strings(d)
	return strings.Join(d, ", ")
}

// randomFile writes n random bytes to path.
func randomFile(t *testing.T, path string, n int64, seed int64) {
	t.Helper()
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ioDone is how far a process has got: the bytes it has read and written
// (rchar + wchar of /proc/PID/io), -1 once it is gone.
func ioDone(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		if k == "rchar" || k == "wchar" {
			x, _ := strconv.ParseInt(v, 10, 64)
			n += x
		}
	}
	return n
}

// runUntil runs the CLI with args and SIGKILLs it once it has read and
// written at least at bytes (never when at < 0). It returns whether the
// kill ended it, and the bytes it had moved when last seen.
func runUntil(t *testing.T, at int64, args ...string) (bool, int64) {
	t.Helper()
	cmd := cliCommand(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var last int64
	for {
		select {
		case <-exited:
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			return ws.Signaled() && ws.Signal() == syscall.SIGKILL, last
		default:
		}
		if n := ioDone(cmd.Process.Pid); n >= 0 {
			last = n
			if at >= 0 && n >= at {
				cmd.Process.Kill()
				<-exited
				return true, last
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// crashCases are the conversions killed: new files and replacements,
// compressed and not, with and without --verify.
var crashCases = [][]string{
	{"-O", "qcow2"},
	{"-O", "raw", "--force"},
	{"-O", "vpc", "--verify"},
	{"-O", "vhdx", "--force", "--verify"},
	{"-O", "vmdk", "-o", "subformat=streamOptimized"},
	{"-O", "qcow2", "-c", "--force", "--verify"},
}

// TestKillLeavesNothing SIGKILLs conversions at points spread over their
// run, by the bytes they have read and written (into new files and, with
// --force, over an existing one; some compressed, some with --verify), on
// each filesystem crashDirs gives. The directory must hold exactly what
// it held before, the old destination byte for byte; a kill that lands
// after the output was named finds it complete and equal to the source.
func TestKillLeavesNothing(t *testing.T) {
	points := 24
	if testing.Short() {
		points = 6
	}
	src := filepath.Join(t.TempDir(), "src.raw")
	randomFile(t, src, 24<<20, 1)
	for _, d := range crashDirs(t, 256<<20) {
		t.Run(d.fs, func(t *testing.T) {
			old := filepath.Join(d.path, "old.img")
			randomFile(t, old, 3<<20, 2)
			before := dirState(t, d.path)
			dstOf := func(c []string) string {
				if slices.Contains(c, "--force") {
					return old
				}
				return filepath.Join(d.path, "new."+c[1])
			}
			restore := func(dst string) {
				if dst == old {
					randomFile(t, old, 3<<20, 2)
				} else {
					os.Remove(dst)
				}
			}
			// A whole run of each case says how much I/O it does.
			total := make([]int64, len(crashCases))
			for i, c := range crashCases {
				dst := dstOf(c)
				_, total[i] = runUntil(t, -1, append(append([]string{"convert", "-q"}, c...), src, dst)...)
				if !sameImage(t, src, dst, c[1]) {
					t.Fatalf("%v: a whole run gives a wrong output", c)
				}
				restore(dst)
			}
			asBefore, afterCommit, finished := 0, 0, 0
			for i := range points {
				k := i % len(crashCases)
				c, dst := crashCases[k], dstOf(crashCases[k])
				at := int64(float64(total[k]) * (float64(i) + 0.5) / float64(points))
				killed, _ := runUntil(t, at, append(append([]string{"convert", "-q"}, c...), src, dst)...)
				if !killed {
					finished++
					restore(dst)
					continue
				}
				diff := stateDiff(before, dirState(t, d.path))
				switch {
				case diff == "":
					asBefore++
				case (diff == "new "+filepath.Base(dst) || diff == "changed "+filepath.Base(dst)) && sameImage(t, src, dst, c[1]):
					afterCommit++ // killed after the commit: the output is whole
					restore(dst)
				default:
					t.Errorf("killed at %d of %d bytes of I/O (%v): %s", at, total[k], c, diff)
					restore(dst)
				}
			}
			t.Logf("%s (%s): %d conversions SIGKILLed at points spread over their I/O: directory exactly as before after %d, the output complete (killed after its commit) after %d; %d finished before their point",
				d.fs, fsType(d.path), asBefore+afterCommit, asBefore, afterCommit, finished)
			if asBefore < points*3/4 {
				t.Errorf("only %d of %d kill points landed during a conversion", asBefore, points)
			}
		})
	}
}

// sameImage reports whether the image at path reads as the raw file src.
func sameImage(t *testing.T, src, path, fmtName string) bool {
	t.Helper()
	a, err := format.Open(src, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := format.Open(path, fmtName, format.Policy{})
	if err != nil {
		t.Logf("%s: %v", path, err)
		return false
	}
	defer b.Close()
	same, _, err := convert.Compare(context.Background(), a, b)
	return err == nil && same
}

// TestDiskFullLeavesNothing fills a small filesystem: the conversion
// fails saying the disk is full, naming the output, and leaves the
// directory (and its free space) as it was.
func TestDiskFullLeavesNothing(t *testing.T) {
	mnt := smallFS(t, 24<<20)
	src := filepath.Join(t.TempDir(), "src.raw")
	randomFile(t, src, 40<<20, 3)
	old := filepath.Join(mnt, "old.img")
	randomFile(t, old, 1<<20, 4)
	before := dirState(t, mnt)
	var st syscall.Statfs_t
	syscall.Statfs(mnt, &st)
	free := st.Bavail
	for _, f := range []string{"raw", "qcow2", "vhdx"} {
		for _, force := range []bool{false, true} {
			dst := filepath.Join(mnt, "new."+f)
			args := []string{"convert", "-O", f, src, dst}
			if force {
				dst = old
				args = []string{"convert", "-O", f, "--force", src, dst}
			}
			_, stderr, code := runCLI(t, args...)
			if code == 0 || !strings.Contains(stderr, "no space left on device") || !strings.Contains(stderr, dst) || strings.Contains(stderr, ".diskimg-") {
				t.Errorf("%v: exit %d, stderr %q: want a disk-full error naming %s", args, code, stderr, dst)
			}
			if diff := stateDiff(before, dirState(t, mnt)); diff != "" {
				t.Errorf("%v left: %s", args, diff)
			}
			syscall.Statfs(mnt, &st)
			if st.Bavail < free {
				t.Errorf("%v: %d blocks free after, %d before", args, st.Bavail, free)
			}
		}
	}
}
