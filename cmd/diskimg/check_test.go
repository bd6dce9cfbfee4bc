package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format/formattest"
)

func TestCheckCommandMatchesQemu(t *testing.T) {
	dir := formattest.QemuDir(t)
	clean := formattest.Generate(t, dir, "clean", "qcow2", 5<<20, formattest.Sparse)
	compressed := formattest.Generate(t, dir, "compressed", "qcow2", 5<<20, formattest.Dense, "-c")
	data := formattest.ReadFile(t, clean)
	be := binary.BigEndian
	cs := int64(1) << be.Uint32(data[20:])
	reft := int64(be.Uint64(data[48:]))
	refblock := int64(be.Uint64(data[reft:]))
	l1 := int64(be.Uint64(data[40:]))
	l2 := int64(be.Uint64(data[l1:]) & 0x00fffffffffffe00)
	host := int64(be.Uint64(data[l2:]) & 0x00fffffffffffe00)
	patched := func(name string, patch func(d []byte)) string {
		d := append([]byte(nil), data...)
		patch(d)
		p := filepath.Join(dir, name)
		formattest.WriteFile(t, p, d)
		return p
	}
	leak := patched("leak.qcow2", func(d []byte) {
		be.PutUint16(d[refblock+2*(host/cs):], 2)
		be.PutUint64(d[l2:], be.Uint64(d[l2:])&^(1<<63))
	})
	corrupt := patched("corrupt.qcow2", func(d []byte) { be.PutUint16(d[refblock+2*(host/cs):], 0) })
	both := patched("both.qcow2", func(d []byte) {
		be.PutUint16(d[refblock+2*(l2/cs):], 0)
		be.PutUint16(d[refblock+2*(host/cs):], 2)
	})
	for _, c := range []struct {
		path string
		code int
	}{{clean, 0}, {compressed, 0}, {leak, 3}, {corrupt, 2}, {both, 2}} {
		for _, mode := range []string{"human", "json"} {
			t.Run(filepath.Base(c.path)+"-"+mode, func(t *testing.T) {
				want, wantCode := qemuImg(t, "check", "-f", "qcow2", "--output="+mode, c.path)
				got, stderr, code := runCLI(t, "check", "-f", "qcow2", "--output="+mode, c.path)
				if code != wantCode || code != c.code {
					t.Errorf("exit code %d, qemu-img %d, want %d (stderr %q)", code, wantCode, c.code, stderr)
				}
				if got != want {
					t.Errorf("output differs from qemu-img's:\n--- got\n%s\n--- qemu-img\n%s", got, want)
				}
				if c.code != 0 && !strings.Contains(stderr, "refcount=") {
					t.Errorf("stderr %q does not list the problems", stderr)
				}
			})
		}
	}

	t.Run("unsupported", func(t *testing.T) {
		raw := filepath.Join(dir, "plain.raw")
		os.WriteFile(raw, make([]byte, 1<<20), 0o644)
		_, wantCode := qemuImg(t, "check", "-f", "raw", raw)
		_, stderr, code := runCLI(t, "check", raw)
		if code != 63 || wantCode != 63 || !strings.Contains(stderr, "This image format does not support checks") {
			t.Errorf("exit %d (qemu-img %d), stderr %q", code, wantCode, stderr)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, _, code := runCLI(t, "check", filepath.Join(dir, "nope.qcow2")); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
	})
}

func TestCheckUntrusted(t *testing.T) {
	root := formattest.QemuDir(t)
	dir := filepath.Join(root, "images")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(root, "bait.raw"), make([]byte, 1<<20), 0o644)
	over := filepath.Join(dir, "overlay.qcow2")
	formattest.Create(t, over, "qcow2", "1M", "-u", "-b", "../bait.raw", "-F", "raw")
	for _, mode := range []string{"human", "json"} {
		out, stderr, code := runCLI(t, "check", "--untrusted", "--output="+mode, over)
		if code != 0 {
			t.Errorf("%s: exit %d: %s", mode, code, stderr)
		}
		if !strings.Contains(out, `../bait.raw`) || !strings.Contains(out, "untrusted mode opens no other file") {
			t.Errorf("%s: findings do not report the backing file:\n%s", mode, out)
		}
	}
	// A raw disk with a qcow2 header at the start of its partition.
	d := make([]byte, 2<<20)
	d[446+4] = 0x83
	binary.LittleEndian.PutUint32(d[446+8:], 2048)
	d[510], d[511] = 0x55, 0xaa
	copy(d[1<<20:], "QFI\xfb\x00\x00\x00\x03")
	disk := filepath.Join(dir, "disk.raw")
	os.WriteFile(disk, d, 0o644)
	out, _, code := runCLI(t, "check", "--untrusted", disk)
	if code != 63 || !strings.Contains(out, "partition at byte 1048576 starts with a qcow2 header") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

// malformedDir fills dir with small images of every format, truncated and
// byte-patched copies of them, and images that refer to the bait outside
// dir. It returns the files.
func malformedDir(t *testing.T, dir, bait string) []string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src.raw")
	formattest.MakeRaw(t, src, 3<<20, formattest.Sparse)
	var bases []string
	for _, v := range []struct {
		name, fmt string
		args      []string
	}{
		{"a.qcow2", "qcow2", nil},
		{"z.qcow2", "qcow2", []string{"-c", "-o", "cluster_size=4k"}},
		{"a.qcow", "qcow", nil},
		{"a.vmdk", "vmdk", nil},
		{"s.vmdk", "vmdk", []string{"-o", "subformat=streamOptimized"}},
		{"d.vhd", "vpc", nil},
		{"f.vhd", "vpc", []string{"-o", "subformat=fixed"}},
		{"a.vhdx", "vhdx", nil},
		{"a.qed", "qed", nil},
		{"a.vdi", "vdi", nil},
	} {
		p := filepath.Join(t.TempDir(), v.name)
		formattest.Convert(t, src, p, v.fmt, v.args...)
		bases = append(bases, p)
	}
	for _, sub := range []string{"zvhd", "zvhd2", "inspect"} {
		seeds, _ := filepath.Glob(filepath.Join("..", "..", "testdata", sub, "*"))
		for _, s := range seeds {
			if fi, err := os.Stat(s); err == nil && fi.Mode().IsRegular() && fi.Size() <= 1<<20 && !strings.HasSuffix(s, ".json") && !strings.HasSuffix(s, ".txt") {
				bases = append(bases, s)
			}
		}
	}
	var files []string
	write := func(name string, d []byte) {
		p := filepath.Join(dir, name)
		formattest.WriteFile(t, p, d)
		files = append(files, p)
	}
	for _, b := range bases {
		d := formattest.ReadFile(t, b)
		name := filepath.Base(b)
		n := int64(len(d))
		for _, cut := range []int64{16, 600, n / 3, n - 1} {
			if cut > 0 && cut < n {
				write(fmt.Sprintf("%s.cut%d", name, cut), d[:cut])
			}
		}
		for _, off := range []int64{4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 64, 72, 100, 512 + 8, 512 + 16, 512 + 28, 512 + 32,
			1536, 65536 + 8, 3 * 65536, 3*65536 + 16, 3*65536 + 32, n - 512 + 48, n - 512 + 64} {
			if off < 0 || off+8 > n {
				continue
			}
			p := append([]byte(nil), d...)
			copy(p[off:], "\xff\xff\xff\xff\xff\xff\xff\x7f")
			write(fmt.Sprintf("%s.ff%d", name, off), p)
		}
	}
	// References to the bait outside the directory.
	for _, ref := range []string{"../" + filepath.Base(bait), bait, "link.raw"} {
		name := fmt.Sprintf("backing%d.qcow2", len(files))
		formattest.Create(t, filepath.Join(dir, name), "qcow2", "1M", "-u", "-b", ref, "-F", "raw")
		files = append(files, filepath.Join(dir, name))
	}
	if err := os.Symlink(bait, filepath.Join(dir, "link.raw")); err != nil {
		t.Fatal(err)
	}
	desc := "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
		"RW 2048 FLAT \"" + bait + "\" 0\n\n#DDB\nddb.adapterType = \"ide\"\n"
	write("extent-abs.vmdk", []byte(desc))
	write("extent-dotdot.vmdk", []byte(strings.Replace(desc, bait, "../"+filepath.Base(bait), 1)))
	write("extent-link.vmdk", []byte(strings.Replace(desc, bait, "link.raw", 1)))
	return files
}

// baitOpened reports whether some process holds the bait FIFO open for
// reading: opening its write end without blocking succeeds only then.
func baitOpened(bait string) bool {
	fd, err := syscall.Open(bait, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	syscall.Close(fd)
	return true
}

// TestMalformedDirectory runs every command on every file of a directory
// of malformed images: none may panic, take more than a few seconds, or
// open the bait outside the directory. The bait is a FIFO: a reader
// opening it blocks until the test sees it, whoever runs the test (root
// ignores permissions, so an unreadable file would prove nothing).
func TestMalformedDirectory(t *testing.T) {
	t.Parallel()
	root := formattest.QemuDir(t)
	dir := filepath.Join(root, "images")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bait := filepath.Join(root, "bait.raw")
	if err := syscall.Mkfifo(bait, 0o644); err != nil {
		t.Fatal(err)
	}
	files := malformedDir(t, dir, bait)
	out := t.TempDir()
	commands := [][]string{
		{"info"}, {"info", "--output=json", "--backing-chain"}, {"map", "--output=json"}, {"inspect"},
		{"check"}, {"check", "--untrusted", "--output=json"}, {"plan", "--cloud", "huawei-ims"},
		{"convert", "-O", "raw"}, {"compare"}, {"measure", "-O", "raw"},
	}
	runs := 0
	for i, f := range files {
		// -short keeps every reference to the bait and an eighth of the rest.
		if testing.Short() && i%8 != 0 && !strings.Contains(f, "backing") && !strings.Contains(f, "extent-") {
			continue
		}
		for _, cmd := range commands {
			args := append(append([]string(nil), cmd...), f)
			switch cmd[0] {
			case "convert":
				args = append(args, filepath.Join(out, "out.raw"))
			case "compare":
				args = append(args, f)
			}
			desc := strings.Join(append(cmd, filepath.Base(f)), " ")
			done := make(chan string, 1)
			cliMu.Lock() // as runCLI
			start := time.Now()
			go func() {
				var o, e bytes.Buffer
				defer func() {
					if r := recover(); r != nil {
						done <- fmt.Sprintf("panic: %v", r)
					}
				}()
				run(append([]string{"diskimg"}, args...), &o, &e)
				done <- e.String()
			}()
			select {
			case msg := <-done:
				if strings.HasPrefix(msg, "panic: ") {
					t.Errorf("%s: %s", desc, msg)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("%s took %v", desc, d)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("%s: no answer after 10s", desc)
			}
			cliMu.Unlock()
			if baitOpened(bait) {
				t.Errorf("%s opened the bait outside the image directory", desc)
			}
			os.Remove(filepath.Join(out, "out.raw"))
			runs++
		}
	}
	t.Logf("%d files, %d command runs", len(files), runs)
}

// TestCheckTruncatedVHDX: a truncated VHDX is refused by Open, yet check
// reports its corruptions with qemu-img's verdict, through CheckFile.
func TestCheckTruncatedVHDX(t *testing.T) {
	path := filepath.Join(formattest.QemuDir(t), "t.vhdx")
	formattest.Create(t, path, "vhdx", "64M")
	cmd := exec.Command("qemu-io", "-f", "vhdx", "-c", "write -P 7 0 4M", "-c", "write -P 8 40M 1M", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	if err := os.Truncate(path, 9<<20); err != nil {
		t.Fatal(err)
	}
	out, _, code := runCLI(t, "check", "--output=json", path)
	qemu := exec.Command("qemu-img", "check", "--output=json", path)
	want, _ := qemu.Output()
	if code != 2 || qemu.ProcessState.ExitCode() != 2 || compactJSON(t, out) != compactJSON(t, string(want)) {
		t.Errorf("diskimg exit %d %s; qemu-img exit %d %s", code, out, qemu.ProcessState.ExitCode(), want)
	}
}
