package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// The bench harness runs os.Executable() as diskimg; in tests that is the
// test binary, which then acts as the CLI when this variable is set.
const asCLI = "DISKIMG_TEST_AS_CLI"

func init() {
	if os.Getenv(asCLI) == "1" {
		os.Exit(run(os.Args, os.Stdout, os.Stderr))
	}
}

func runBenchCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runCLI(t, append([]string{"bench"}, args...)...)
}

// benchProcess runs `diskimg bench args` as a process of its own, whose
// children (the harness runs itself as diskimg) act as the CLI too, with
// extra environment env; it returns stdout, stderr and the exit code.
func benchProcess(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := cliCommand(append([]string{"bench"}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	return runCaptured(t, cmd)
}

func TestBenchErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--output=xml"}, `"xml" is not human or json`},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--runs", "-1"}, "runs must be 1 to 100"},
		{[]string{"--tiny", "--formats", "qcow2,bogus", "--dir", t.TempDir()}, `unknown format "bogus"`},
	} {
		_, stderr, code := runBenchCLI(t, tc.args...)
		if code != 1 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("bench %v: exit %d, stderr %q; want 1 and %q", tc.args, code, stderr, tc.msg)
		}
	}
}

func TestBenchTinyJSON(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	out, stderr, code := benchProcess(t, nil, "--tiny", "--quick", "--runs", "1", "--formats", "qcow2", "--output", "json", "--dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		Cases []struct {
			Corpus, Input, Output string
			Ratio                 float64
		}
		Targets []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// Three corpora in four cases each, and the preallocated qcow2 to
	// qcow2 and raw.
	if len(rep.Cases) != 14 || len(rep.Targets) != 6 {
		t.Fatalf("%d cases and %d targets, want 14 and 6: %s", len(rep.Cases), len(rep.Targets), out)
	}
	for _, c := range rep.Cases {
		if c.Ratio <= 0 {
			t.Errorf("%s %s->%s: no ratio", c.Corpus, c.Input, c.Output)
		}
	}
	if !strings.Contains(stderr, "corpus random") {
		t.Errorf("no progress on stderr: %q", stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("work directory left behind: %v", entries)
	}
}

// TestBenchSparsifyJSON runs `bench --sparsify` on a tiny disk, with a
// stand-in for virt-sparsify first on PATH.
func TestBenchSparsifyJSON(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	extWithDeleted(t, t.TempDir()) // skips without e2fsprogs
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "virt-sparsify"), []byte("#!/bin/sh\nexec qemu-img convert -f raw -O qcow2 \"$6\" \"$7\"\n"), 0o755)
	out, stderr, code := benchProcess(t, []string{"PATH=" + bin + ":" + os.Getenv("PATH")}, "--sparsify", "--tiny", "--runs", "1", "--output", "json", "--dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		Ratio   float64
		Targets []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Ratio <= 0 || len(rep.Targets) != 2 {
		t.Fatalf("%v: %s", err, out)
	}
}
