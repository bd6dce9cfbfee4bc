package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
