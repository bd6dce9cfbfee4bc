package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

	"golang.org/x/sys/unix"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// cliCommand runs the test binary as diskimg (see asCLI) with args.
func cliCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asCLI+"=1")
	return cmd
}

// TestInterruptExitCodes signals a running conversion: SIGINT exits 130
// and SIGTERM 143, as shells expect; the progress bar stays where it
// stopped (binary units, not 100%); a file output leaves nothing behind.
func TestInterruptExitCodes(t *testing.T) {
	dir := t.TempDir()
	src := sparseRaw(t, dir, "big.raw", 4<<30)
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 130}, {syscall.SIGTERM, 143}} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			// To a pipe the test reads slowly: the conversion is still
			// running when the signal comes.
			cmd := cliCommand("convert", "-p", "-O", "raw", src, "-")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(stdout, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // the bar draws at most every 100 ms
			cmd.Process.Signal(tc.sig)
			n, _ := io.Copy(io.Discard, stdout)
			cmd.Wait()
			if got := cmd.ProcessState.ExitCode(); got != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", got, tc.code, stderr.String())
			}
			if 1<<20+n >= 4<<30 {
				t.Error("the conversion ran to its end")
			}
			e := stderr.String()
			if !strings.Contains(e, "interrupted") || strings.Contains(e, "100%") || !strings.Contains(e, "GiB") || strings.Contains(e, " GB") {
				t.Errorf("stderr %q: want the bar where it stopped, in binary units, and the interruption", e)
			}
		})
	}
	t.Run("file output", func(t *testing.T) {
		out := t.TempDir()
		cmd := cliCommand("convert", "-O", "qcow2", "-", filepath.Join(out, "x.qcow2"))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stdin.Write(make([]byte, 1<<20)) // spooled next to the output
		time.Sleep(200 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGTERM)
		// The input ends only later: the signal is handled first however
		// loaded the machine, and the conversion must not commit after it.
		time.Sleep(300 * time.Millisecond)
		stdin.Close()
		cmd.Wait()
		if got := cmd.ProcessState.ExitCode(); got != 143 {
			t.Errorf("exit %d, want 143", got)
		}
		if ents, _ := os.ReadDir(out); len(ents) != 0 {
			t.Errorf("an interrupted conversion left %v", ents)
		}
	})
}

// openPTY opens a pseudo-terminal and returns its terminal side.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestTerminalRefused: an image is never written to a terminal, and a
// terminal is not read as an image.
func TestTerminalRefused(t *testing.T) {
	tty := openPTY(t)
	src := filepath.Join(t.TempDir(), "src.raw")
	formattest.MakeRaw(t, src, 1<<20, formattest.Sparse)
	oldOut, oldIn := os.Stdout, os.Stdin
	defer func() { os.Stdout, os.Stdin = oldOut, oldIn }()
	os.Stdout, os.Stdin = tty, tty
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"convert", "-O", "qcow2", src, "-"}, "standard output is a terminal"},
		{[]string{"convert", src, "-"}, "standard output is a terminal"},
		{[]string{"info", "-"}, "standard input is a terminal"},
		{[]string{"convert", "-", filepath.Join(t.TempDir(), "x")}, "standard input is a terminal"},
	} {
		_, stderr, code := runCLI(t, tc.args...)
		if code != 1 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d, %q; want %q", tc.args, code, stderr, tc.msg)
		}
	}
}

// TestStdinInfoInspectPlan: info, inspect and plan read "-" as convert
// does, from a pipe and from a redirected file, and say what they say of
// the file.
func TestStdinInfoInspectPlan(t *testing.T) {
	const demo = "../../testdata/demo.qcow2"
	for _, redirect := range []bool{false, true} {
		name := map[bool]string{false: "pipe", true: "redirect"}[redirect]
		t.Run(name, func(t *testing.T) {
			var out, stderr string
			var code int
			withStdin(t, demo, redirect, func() { out, stderr, code = runCLI(t, "info", "--output=json", "-") })
			want, _, _ := runCLI(t, "info", "--output=json", demo)
			if code != 0 || !sameInfo(t, out, want) {
				t.Errorf("info -: exit %d: %s%s\nwant %s", code, out, stderr, want)
			}
			withStdin(t, demo, redirect, func() { out, stderr, code = runCLI(t, "inspect", "-") })
			if want, _, _ := runCLI(t, "inspect", demo); code != 0 || out != want {
				t.Errorf("inspect -: exit %d: %s%s\nwant %s", code, out, stderr, want)
			}
			withStdin(t, demo, redirect, func() { out, stderr, code = runCLI(t, "plan", "--cloud", "aws", "--output=json", "-") })
			wantPlan, _, _ := runCLI(t, "plan", "--cloud", "aws", "--output=json", demo)
			var got, exp map[string]any
			json.Unmarshal([]byte(out), &got)
			json.Unmarshal([]byte(wantPlan), &exp)
			if code != exitRefused && code != 0 || got == nil || fmt.Sprint(got["findings"]) != fmt.Sprint(exp["findings"]) || got["path"] != exp["path"] {
				t.Errorf("plan -: exit %d: %s%s\nwant %s", code, out, stderr, wantPlan)
			}
			if cmds := fmt.Sprint(got["commands"]); !strings.Contains(cmds, " - image.vmdk") {
				t.Errorf("plan -: commands %s, want them to read - and write image.vmdk", cmds)
			}
		})
	}
}

// sameInfo compares info JSON of a file and of standard input, whose name
// and host size differ.
func sameInfo(t *testing.T, a, b string) bool {
	var x, y map[string]any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	for _, k := range []string{"filename", "actual-size"} {
		delete(x, k)
		delete(y, k)
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

// TestInspectRowsTrimmed: no line of inspect's table ends with spaces.
func TestInspectRowsTrimmed(t *testing.T) {
	out, _, code := runCLI(t, "inspect", "../../testdata/demo.qcow2")
	if code != 0 || !strings.Contains(out, "#  START") {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimRight(l, " ") != l {
			t.Errorf("trailing spaces: %q", l)
		}
	}
}

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
	formattest.WriteFile(t, path, b)
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
	t.Parallel()
	points, dirs := 6, []testDir{{"tempdir", t.TempDir()}}
	if !testing.Short() { // and the mounted filesystems
		points, dirs = 24, crashDirs(t, 256<<20)
	}
	src := filepath.Join(t.TempDir(), "src.raw")
	randomFile(t, src, 24<<20, 1)
	for _, d := range dirs {
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
