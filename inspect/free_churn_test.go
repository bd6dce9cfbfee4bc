package inspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// Churn tests: filesystems made at test time, filled with files and
// emptied again over several stages; at each stage the image is
// sparsified and the result must pass the filesystem's read-only check
// and hold every remaining file unchanged.

// fsOps drives one filesystem type on an image file.
type fsOps struct {
	// tools must be installed (name, Debian package).
	tools [][2]string
	mkfs  func(t *testing.T, img string)
	// update adds files and removes others; dir is a scratch directory.
	update func(t *testing.T, img, dir string, add map[string][]byte, remove []string)
	// files returns name → SHA-256 of every file, "dir" for directories.
	files func(t *testing.T, img, dir string) map[string]string
	fsck  func(t *testing.T, img string)
	// root says update and files need root (loop or FUSE mounts).
	root bool
}

// haveRoot reports whether loop and FUSE mounts can be made.
func haveRoot() bool {
	if os.Geteuid() != 0 {
		return false
	}
	_, err := os.Stat("/dev/loop-control")
	return err == nil
}

func needRoot(t *testing.T) {
	t.Helper()
	if !haveRoot() {
		t.Skip("needs root and loop devices to mount the filesystem")
	}
}

// mounted runs fn with img mounted at a fresh directory; args are the
// mount command without the source and target.
func mounted(t *testing.T, img string, ro bool, mount []string, fn func(dir string)) {
	t.Helper()
	dir := t.TempDir()
	src := img
	if mount[0] == "mount.exfat-fuse" {
		// exfat-fuse wants a block device.
		args := []string{"-f", "--show", img}
		if ro {
			args = []string{"-f", "--show", "-r", img}
		}
		src = strings.TrimSpace(run(t, "losetup", args...))
		defer run(t, "losetup", "-d", src)
	}
	args := append(append([]string(nil), mount[1:]...), src, dir)
	if ro {
		args = append([]string{"-o", "ro"}, args...)
	}
	run(t, mount[0], args...)
	defer func() {
		// A parallel test's child, between fork and exec, can hold a file
		// of this mount for a moment: busy is worth a retry.
		for try := 0; ; try++ {
			out, err := exec.Command("umount", dir).CombinedOutput()
			if err == nil {
				return
			}
			if try == 50 || !strings.Contains(string(out), "busy") {
				t.Fatalf("umount %s: %v\n%s", dir, err, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	fn(dir)
}

func mountOps(mount []string) fsOps {
	return fsOps{
		root: true,
		update: func(t *testing.T, img, _ string, add map[string][]byte, remove []string) {
			mounted(t, img, false, mount, func(dir string) {
				for _, n := range remove {
					if err := os.Remove(filepath.Join(dir, n)); err != nil {
						t.Fatal(err)
					}
				}
				for _, n := range sortedKeys(add) {
					p := filepath.Join(dir, n)
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					formattest.WriteFile(t, p, add[n])
				}
			})
		},
		files: func(t *testing.T, img, _ string) (m map[string]string) {
			mounted(t, img, true, mount, func(dir string) { m = treeSums(t, dir) })
			return m
		},
	}
}

// treeSums walks dir and returns the SHA-256 of every regular file.
func treeSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case rel == "." || rel == "lost+found" || strings.HasPrefix(rel, "lost+found/") || strings.HasPrefix(rel, "System Volume Information"):
		case e.IsDir():
			m[rel] = "dir"
		case e.Type().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			m[rel] = hex.EncodeToString(h.Sum(nil))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fsckOK runs a read-only check that must exit 0.
func fsckOK(name string, args ...string) func(t *testing.T, img string) {
	return func(t *testing.T, img string) {
		t.Helper()
		out, err := exec.Command(name, append(args, img)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s %s: %v\n%s", name, strings.Join(args, " "), img, err, out)
		}
	}
}

func mkfsCmd(name string, args ...string) func(t *testing.T, img string) {
	return func(t *testing.T, img string) { run(t, name, append(args, img)...) }
}

var extTools = [][2]string{{"mkfs.ext4", "e2fsprogs"}, {"e2fsck", "e2fsprogs"}, {"debugfs", "e2fsprogs"}}

// extOps works without root: files go in and out with debugfs.
func extOps(mkfs ...string) fsOps {
	o := fsOps{tools: extTools, mkfs: mkfsCmd(mkfs[0], append(mkfs[1:], "-q", "-F")...), fsck: fsckOK("e2fsck", "-fn")}
	if haveRoot() {
		m := mountOps([]string{"mount", "-o", "loop"})
		o.update, o.files = m.update, m.files
		return o
	}
	o.update = func(t *testing.T, img, dir string, add map[string][]byte, remove []string) {
		var cmds []string
		for _, n := range remove {
			cmds = append(cmds, "rm /"+n)
		}
		made := map[string]bool{}
		for i, n := range sortedKeys(add) {
			if d := filepath.Dir(n); d != "." && !made[d] {
				made[d] = true
				cmds = append(cmds, "mkdir /"+d)
			}
			p := filepath.Join(dir, strconv.Itoa(i))
			formattest.WriteFile(t, p, add[n])
			cmds = append(cmds, fmt.Sprintf("write %s /%s", p, n))
		}
		script := filepath.Join(dir, "cmds")
		os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644)
		run(t, "debugfs", "-w", "-f", script, img)
	}
	o.files = func(t *testing.T, img, dir string) map[string]string {
		out := filepath.Join(dir, "rdump")
		os.RemoveAll(out)
		os.MkdirAll(out, 0o755)
		run(t, "debugfs", "-R", "rdump / "+out, img)
		return treeSums(t, out)
	}
	return o
}

// vfatOps uses mtools, so needs no root.
func vfatOps(mkfs ...string) fsOps {
	os.Setenv("MTOOLS_SKIP_CHECK", "1")
	return fsOps{
		tools: [][2]string{{"mkfs.vfat", "dosfstools"}, {"fsck.vfat", "dosfstools"}, {"mcopy", "mtools"}},
		mkfs:  mkfsCmd(mkfs[0], mkfs[1:]...),
		fsck:  fsckOK("fsck.vfat", "-n"),
		update: func(t *testing.T, img, dir string, add map[string][]byte, remove []string) {
			if len(remove) > 0 {
				args := []string{"-i", img}
				for _, n := range remove {
					args = append(args, "::/"+n)
				}
				run(t, "mdel", args...)
			}
			src := filepath.Join(dir, "add")
			os.RemoveAll(src)
			for n, b := range add {
				p := filepath.Join(src, n)
				os.MkdirAll(filepath.Dir(p), 0o755)
				formattest.WriteFile(t, p, b)
			}
			entries, _ := os.ReadDir(src)
			args := []string{"-s", "-o", "-i", img}
			for _, e := range entries {
				args = append(args, filepath.Join(src, e.Name()))
			}
			if len(entries) > 0 {
				run(t, "mcopy", append(args, "::/")...)
			}
		},
		files: func(t *testing.T, img, dir string) map[string]string {
			out := filepath.Join(dir, "mcopy")
			os.RemoveAll(out)
			os.MkdirAll(out, 0o755)
			run(t, "mcopy", "-s", "-i", img, "::/", out)
			return treeSums(t, out)
		},
	}
}

// churn makes files and deletes some at each stage; the content depends
// only on the seed.
type churn struct {
	rng   *rand.Rand
	bytes *rand.ChaCha8
	live  map[string]int // name → size
	n     int
}

func newChurn(seed uint64) *churn {
	var s [32]byte
	copy(s[:], fmt.Sprint("churn", seed))
	return &churn{rng: rand.New(rand.NewPCG(seed, 22)), bytes: rand.NewChaCha8(s), live: map[string]int{}}
}

// stage adds about budget bytes of files of mixed sizes and removes about
// half of the files that existed before.
func (c *churn) stage(budget int64) (add map[string][]byte, remove []string) {
	for n := range c.live {
		if c.rng.IntN(2) == 0 {
			remove = append(remove, n)
		}
	}
	sort.Strings(remove)
	for _, n := range remove {
		delete(c.live, n)
	}
	add = map[string][]byte{}
	for done := int64(0); done < budget; {
		var size int
		switch r := c.rng.IntN(20); {
		case r < 13:
			size = 1 + c.rng.IntN(64<<10)
		case r < 19:
			size = 64<<10 + c.rng.IntN(1<<20)
		default:
			size = 1<<20 + c.rng.IntN(6<<20)
		}
		size = int(min(int64(size), budget-done+1))
		b := make([]byte, size)
		c.bytes.Read(b)
		name := fmt.Sprintf("d%d/f%04d", c.n%5, c.n)
		c.n++
		add[name] = b
		c.live[name] = size
		done += int64(size)
	}
	return add, remove
}

// sparsifyFile writes the sparsified raw image of src to dst (holes where
// it reads zeros) and returns the report.
func sparsifyFile(t *testing.T, src, dst string, opts SparsifyOptions) *SparsifyReport {
	t.Helper()
	img, err := format.Open(src, "raw", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	s, rep, err := Sparsify(img, opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	buf := make([]byte, 1<<20)
	err = format.Walk(s, 0, func(e format.Extent) error {
		if e.Status != format.Data {
			return nil
		}
		for off := e.Start; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := s.ReadAt(buf[:n], off); err != nil {
				return err
			}
			if _, err := out.WriteAt(buf[:n], off); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = out.Truncate(s.Size())
	}
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// garbageFile makes a file of size bytes of pseudo-random data: free
// space that mkfs does not clear then holds data, as on a used disk.
func garbageFile(t *testing.T, path string, size int64, seed byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{seed, 'g'})
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			t.Fatal(err)
		}
	}
}

func churnCases() map[string]struct {
	size int64
	ops  fsOps
} {
	type c = struct {
		size int64
		ops  fsOps
	}
	xfs := mountOps([]string{"mount", "-o", "loop,nouuid"})
	xfs.tools = [][2]string{{"mkfs.xfs", "xfsprogs"}, {"xfs_repair", "xfsprogs"}}
	xfs.mkfs, xfs.fsck = mkfsCmd("mkfs.xfs", "-q", "-f"), fsckOK("xfs_repair", "-n", "-f")
	ntfs := mountOps([]string{"ntfs-3g"})
	ntfs.tools = [][2]string{{"mkfs.ntfs", "ntfs-3g"}, {"ntfsfix", "ntfs-3g"}}
	ntfs.mkfs, ntfs.fsck = mkfsCmd("mkfs.ntfs", "-q", "-F", "-f"), fsckOK("ntfsfix", "-n")
	exfat := mountOps([]string{"mount.exfat-fuse"})
	exfat.tools = [][2]string{{"mkfs.exfat", "exfatprogs"}, {"fsck.exfat", "exfatprogs"}, {"mount.exfat-fuse", "exfat-fuse"}}
	exfat.mkfs, exfat.fsck = mkfsCmd("mkfs.exfat"), fsckOK("fsck.exfat", "-n")
	return map[string]c{
		"ext4":        {96 << 20, extOps("mkfs.ext4")},
		"ext4-4k":     {96 << 20, extOps("mkfs.ext4", "-b", "4096", "-O", "metadata_csum,64bit")},
		"ext4-noflex": {96 << 20, extOps("mkfs.ext4", "-O", "^flex_bg")},
		"ext4-metabg": {96 << 20, extOps("mkfs.ext4", "-O", "meta_bg,^resize_inode")},
		"ext3":        {64 << 20, extOps("mkfs.ext3")},
		"ext2":        {64 << 20, extOps("mkfs.ext2")},
		"xfs":         {320 << 20, xfs},
		"ntfs":        {96 << 20, ntfs},
		"fat32":       {96 << 20, vfatOps("mkfs.vfat", "-F", "32")},
		"fat16":       {48 << 20, vfatOps("mkfs.vfat", "-F", "16")},
		"fat12":       {8 << 20, vfatOps("mkfs.vfat", "-F", "12")},
		"exfat":       {96 << 20, exfat},
	}
}

func TestSparsifyChurn(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("churn tests make and fill filesystems: not in -short")
	}
	cases := churnCases()
	for _, name := range []string{"ext4", "ext4-4k", "ext4-noflex", "ext4-metabg", "ext3", "ext2", "xfs", "ntfs", "fat32", "fat16", "fat12", "exfat"} {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, tool := range tc.ops.tools {
				requireTool(t, tool[0], tool[1])
			}
			if tc.ops.root {
				needRoot(t)
			}
			dir := t.TempDir()
			img := filepath.Join(dir, "fs.img")
			garbageFile(t, img, tc.size, byte(len(name)))
			tc.ops.mkfs(t, img)
			c := newChurn(uint64(len(name)))
			for stage := 1; stage <= 3; stage++ {
				add, remove := c.stage(tc.size / 4)
				tc.ops.update(t, img, dir, add, remove)
				checkSparsified(t, fmt.Sprintf("stage %d", stage), tc.ops, img, dir, len(c.live))
			}
		})
	}
}

// checkSparsified sparsifies img and checks the copy: its fsck passes,
// every file reads the same, and free space holding data was left out.
func checkSparsified(t *testing.T, stage string, ops fsOps, img, dir string, live int) {
	t.Helper()
	out := filepath.Join(dir, "sparse.img")
	rep := sparsifyFile(t, img, out, SparsifyOptions{})
	if len(rep.Filesystems) != 1 || rep.Filesystems[0].Kept != "" {
		t.Fatalf("%s: %+v", stage, rep.Filesystems)
	}
	if rep.SavedBytes == 0 {
		t.Errorf("%s: nothing left out (%+v)", stage, rep.Filesystems[0])
	}
	ops.fsck(t, img)
	ops.fsck(t, out)
	want, got := ops.files(t, img, dir), ops.files(t, out, dir)
	files := 0
	for _, v := range want {
		if v != "dir" {
			files++
		}
	}
	if files != live {
		t.Fatalf("%s: the source holds %d files, the churn made %d", stage, files, live)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d entries after sparsifying, %d before", stage, len(got), len(want))
	}
	for n, h := range want {
		if got[n] != h {
			t.Fatalf("%s: %s differs after sparsifying", stage, n)
		}
	}
	t.Logf("%s: %d files; left out %d bytes, %d of them data", stage, files, rep.FreeBytes, rep.SavedBytes)
}

// sameBytes fails unless the two files hold the same bytes in [off, off+n).
func sameBytes(t *testing.T, a, b string, off, n int64) {
	t.Helper()
	ra, rb := readRange(t, a, off, n), readRange(t, b, off, n)
	if !bytes.Equal(ra, rb) {
		t.Fatalf("%s and %s differ in [%d, +%d)", a, b, off, n)
	}
}

func readRange(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}
