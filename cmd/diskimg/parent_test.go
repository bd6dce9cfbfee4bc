package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParentFlag runs the commands on a differencing VDI, which names its
// parent by UUID only: without --parent they fail naming the UUID, info
// shows it; with --parent they read the chain, and a wrong parent fails.
func TestParentFlag(t *testing.T) {
	base, err := os.ReadFile("../../testdata/vdi/data.vdi")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	child := bytes.Clone(base)
	binary.LittleEndian.PutUint32(child[0x4c:], 4)           // differencing
	copy(child[0x188:0x198], "child's own uuid")             // uuidCreate
	copy(child[0x1a8:0x1b8], base[0x188:0x198])              // uuidLinkage: the parent's uuidCreate
	binary.LittleEndian.PutUint32(child[0x200:], 0xffffffff) // block 0: the parent's
	other := bytes.Clone(base)
	copy(other[0x188:0x198], "another disk....")
	for name, b := range map[string][]byte{"base.vdi": base, "child.vdi": child, "other.vdi": other} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	const uuid = "{75fc7ebf-2672-4d0a-b17a-952f9b63700b}" // data.vdi's, as VirtualBox shows it
	if _, stderr, code := runCLI(t, "map", p("child.vdi")); code != 1 || !strings.Contains(stderr, uuid) || !strings.Contains(stderr, "--parent") {
		t.Errorf("map without --parent: exit %d, %q", code, stderr)
	}
	out, stderr, code := runCLI(t, "info", p("child.vdi"))
	if code != 0 || !strings.Contains(out, "parent uuid: "+uuid) {
		t.Errorf("info without --parent: exit %d, %q, %q", code, out, stderr)
	}
	out, stderr, code = runCLI(t, "info", "--parent", p("base.vdi"), p("child.vdi"))
	if code != 0 || !strings.Contains(out, "backing file: "+p("base.vdi")) || !strings.Contains(out, "allocated size: 1.5 KiB") {
		t.Errorf("info --parent: exit %d, %q, %q", code, out, stderr)
	}
	if out, stderr, code := runCLI(t, "compare", "--parent", p("base.vdi"), p("child.vdi"), p("base.vdi")); code != 0 {
		t.Errorf("compare --parent: exit %d, %q, %q", code, out, stderr)
	}
	out, stderr, code = runCLI(t, "plan", "--cloud", "openstack", "--parent", p("base.vdi"), p("child.vdi"))
	if !strings.Contains(out, "--parent "+p("base.vdi")) {
		t.Errorf("plan --parent: exit %d: its commands do not repeat --parent:\n%s%s", code, out, stderr)
	}
	if _, stderr, code := runCLI(t, "convert", "--parent", p("other.vdi"), p("child.vdi"), p("out.raw")); code != 1 || !strings.Contains(stderr, "has UUID") {
		t.Errorf("convert with the wrong parent: exit %d, %q", code, stderr)
	}
}
