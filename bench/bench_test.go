package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
	"github.com/diskimg/diskimg/format/remote/remotetest"

	_ "github.com/diskimg/diskimg/format/all"
)

// diskimgBin is a diskimg binary built for these tests, in a temp dir
// TestMain removes; binMu guards it for parallel tests.
var (
	binMu      sync.Mutex
	diskimgBin string
)

func TestMain(m *testing.M) {
	if os.Getenv("DISKIMG_BENCH_HELPER") == "1" {
		os.Exit(helper())
	}
	code := remotetest.Run(m)
	if diskimgBin != "" {
		os.RemoveAll(filepath.Dir(diskimgBin))
	}
	os.Exit(code)
}

// buildDiskimg builds cmd/diskimg once per test binary.
func buildDiskimg(t *testing.T) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if diskimgBin != "" {
		return diskimgBin
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	dir, err := os.MkdirTemp("", "diskimg-bench-bin-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "diskimg")
	out, err := exec.Command(goBin, "build", "-o", bin, "github.com/diskimg/diskimg/cmd/diskimg").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("building diskimg: %v\n%s", err, out)
	}
	diskimgBin = bin
	return bin
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{9, 9, 1, 1, 5}, 5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its argument in place")
	}
}

func TestSummarize(t *testing.T) {
	r := summarize([]sample{{seconds: 2, maxRSS: 100}, {seconds: 1, maxRSS: 300}, {seconds: 4, maxRSS: 200}}, 1e9)
	if r.Seconds != 2 || r.MBps != 500 || r.MaxRSS != 300 || len(r.Runs) != 3 || r.AtLeast {
		t.Errorf("summarize = %+v; want median 2s, 500 MB/s, peak 300 KiB, 3 runs", r)
	}
	// A run stopped at the time limit makes the median a lower bound.
	if r := summarize([]sample{{seconds: 12, capped: true}}, 1e9); !r.AtLeast || r.Seconds != 12 {
		t.Errorf("summarize of a stopped run = %+v", r)
	}
}

func TestHuman(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1 << 20: "1 MiB", 1536 << 20: "1.5 GiB", 1 << 40: "1 TiB"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}

// sampleReport is a hand-made report that meets some targets and misses
// others.
func sampleReport() *Report {
	r := &Report{Date: "2026-11-23T00:00:00Z", CPUs: 2, OS: "linux/amd64", Runs: 3, CacheMode: "warm", RSSMethod: "test"}
	res := func(s float64, rss int64) *Result { return &Result{Seconds: s, MBps: 1000 / s, MaxRSS: rss} }
	r.Cases = []*Case{
		{Corpus: "dense", Input: "raw", Output: "raw", Size: 1e9, Diskimg: res(1, 20<<10), Qemu: res(1.5, 30<<10), Ratio: 1.5},
		{Corpus: "random", Input: "qcow2", Output: "vpc", Size: 1e9, Diskimg: res(2, 300<<10), Qemu: res(1, 30<<10), Ratio: 0.5},
		{Corpus: "random", Input: "raw", Output: "qcow2 -c", Compressed: true, Size: 1e9, Diskimg: res(1, 20<<10), Qemu: res(3, 30<<10), Ratio: 3},
		{Corpus: "random", Input: "raw", Output: "vmdk stream", Compressed: true, Size: 1e9, Skipped: "no writer"},
		{Corpus: "random", Input: "raw", Output: "zvhd2", Size: 1e9, Diskimg: res(1, 20<<10), QemuNote: "qemu-img cannot write zvhd2"},
		{Corpus: "empty", Input: "vmdk", Output: "raw", Size: 1 << 40, Diskimg: res(0.2, 20<<10), Qemu: res(20, 30<<10), Ratio: 100},
	}
	r.References = []*Reference{
		{Corpus: "dense", Tool: "cat", Size: 1e9, Result: &Result{Seconds: 0.5, MBps: 2000, MaxRSS: 1 << 10}},
		{Corpus: "empty", Tool: "cat", Size: 1 << 40, Skipped: "would read 1 TiB of holes"},
	}
	r.Targets = evaluate(r)
	return r
}

func TestEvaluate(t *testing.T) {
	got := map[string]Target{}
	for _, tg := range sampleReport().Targets {
		got[tg.Name] = tg
	}
	for name, want := range map[string]struct {
		met      bool
		measured string
		misses   int
	}{
		"diskimg >= 1.0x qemu-img, uncompressed outputs": {false, "lowest 0.50x over 3 cases", 1},
		"diskimg >= 2x qemu-img, compressed outputs":     {true, "lowest 3.00x over 1 cases", 0},
		"empty 1 TiB in < 0.1 s, every input format":     {false, "slowest 0.200s over 1 cases", 1},
		"dense raw->raw >= 70% of cat":                   {false, "50% (1000 of 2000 MB/s)", 0},
		"diskimg peak RSS < 256 MiB":                     {false, "largest 300 MiB", 1},
	} {
		tg, ok := got[name]
		if !ok {
			t.Errorf("no target %q", name)
			continue
		}
		if tg.Met != want.met || tg.Measured != want.measured || len(tg.Misses) != want.misses {
			t.Errorf("%s: met %v, %q, misses %v; want %v, %q, %d misses", name, tg.Met, tg.Measured, tg.Misses, want.met, want.measured, want.misses)
		}
	}
}

func TestTableAndJSON(t *testing.T) {
	r := sampleReport()
	var tab bytes.Buffer
	if err := r.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	s := tab.String()
	for _, want := range []string{
		"median of 3 runs", "1.50x", "0.50x", "3.00x", "skipped: no writer",
		"qemu-img cannot write zvhd2", "skipped: would read 1 TiB of holes",
		"MISS  diskimg >= 1.0x", "met   diskimg >= 2x", "random qcow2->vpc 0.50x",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	// One line per case, with its columns aligned under the header.
	lines := strings.Split(s, "\n")
	var header, first string
	rows := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "corpus ") {
			header, first = l, lines[i+1]
		}
		if strings.HasPrefix(l, "dense ") || strings.HasPrefix(l, "random ") || strings.HasPrefix(l, "empty ") {
			rows++
		}
	}
	if rows != len(r.Cases) {
		t.Errorf("table has %d case rows, want %d", rows, len(r.Cases))
	}
	if i := strings.Index(header, "ratio"); i < 0 || !strings.HasPrefix(first[i:], "1.50x") {
		t.Errorf("ratio column misaligned:\n%s", s)
	}

	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Cases []struct {
			Corpus, Input, Output string
			Ratio                 float64
			Diskimg               *struct {
				Seconds float64 `json:"seconds"`
				MBps    float64 `json:"mb-per-s"`
				RSS     int64   `json:"peak-rss-kib"`
			}
			Skipped string
		}
		Targets []struct {
			Name string
			Met  bool
		}
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Cases) != 6 || back.Cases[0].Ratio != 1.5 || back.Cases[0].Diskimg.MBps != 1000 || back.Cases[0].Diskimg.RSS != 20<<10 || back.Cases[3].Skipped != "no writer" {
		t.Errorf("JSON round trip: %+v", back.Cases)
	}
	if len(back.Targets) != 6 {
		t.Errorf("JSON has %d targets, want 6", len(back.Targets))
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Runs: 1}, "no diskimg binary"},
		{Config{Diskimg: "/bin/true", Runs: 0}, "runs must be 1 to 100"},
		{Config{Diskimg: "/bin/true", Runs: 1, Formats: []string{"nope"}, Sizes: TinySizes, Dir: t.TempDir()}, `unknown format "nope"`},
		{Config{Diskimg: "/bin/true", Runs: 1, Sizes: Sizes{RandomDisk: 1 << 50, RandomData: 1 << 49}, Dir: t.TempDir()}, "the corpus needs about"},
	} {
		_, err := Run(context.Background(), tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) = %v, want an error with %q", tc.c, err, tc.want)
		}
	}
}

// tinyConfig is a run of a few seconds: 16 MiB disks, an empty 1 TiB
// one and a 1 GiB preallocated qcow2, raw and qcow2 only.
func tinyConfig(t *testing.T, dir string) Config {
	return Config{Diskimg: buildDiskimg(t), Dir: dir, Runs: 2, Quick: true, Sizes: TinySizes, Formats: []string{"qcow2"}}
}

func TestRunTiny(t *testing.T) {
	t.Parallel()
	dir := formattest.QemuDir(t)
	var log bytes.Buffer
	c := tinyConfig(t, dir)
	c.Log = &log
	rep, err := Run(context.Background(), c)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if rep.QemuVersion == "" || !strings.HasPrefix(rep.QemuVersion, "qemu-img version") {
		t.Errorf("qemu version %q", rep.QemuVersion)
	}
	want := map[string]bool{}
	for _, corpus := range []string{"random", "dense", "empty"} {
		for _, k := range []string{"raw raw", "raw qcow2", "raw qcow2 -c", "qcow2 raw"} {
			want[corpus+" "+k] = true
		}
	}
	// The preallocated qcow2 (not the fixed VHD: vpc is not in Formats).
	want["prealloc qcow2 qcow2"], want["prealloc qcow2 raw"] = true, true
	for _, c := range rep.Cases {
		key := c.Corpus + " " + c.Input + " " + c.Output
		if !want[key] {
			t.Errorf("unexpected case %s", key)
			continue
		}
		delete(want, key)
		if c.Diskimg == nil || c.Diskimg.Error != "" || c.Qemu == nil || c.Qemu.Error != "" {
			t.Errorf("%s: diskimg %+v, qemu-img %+v", key, c.Diskimg, c.Qemu)
			continue
		}
		if len(c.Diskimg.Runs) != 2 || len(c.Qemu.Runs) != 2 {
			t.Errorf("%s: %d and %d runs, want 2 each", key, len(c.Diskimg.Runs), len(c.Qemu.Runs))
		}
		if c.Ratio <= 0 || c.Diskimg.MBps <= 0 || c.Diskimg.MaxRSS < 1<<10 || c.Qemu.MaxRSS < 1<<10 {
			t.Errorf("%s: ratio %v, %v MB/s, RSS %d/%d KiB", key, c.Ratio, c.Diskimg.MBps, c.Diskimg.MaxRSS, c.Qemu.MaxRSS)
		}
		if got := c.Qemu.Seconds / c.Diskimg.Seconds; got != c.Ratio {
			t.Errorf("%s: ratio %v, times give %v", key, c.Ratio, got)
		}
	}
	for k := range want {
		t.Errorf("missing case %s", k)
	}
	refs := 0
	for _, r := range rep.References {
		if r.Result != nil && r.Result.Seconds > 0 {
			refs++
		}
	}
	if refs != 5 { // cat and cp of random and dense, cp of empty
		t.Errorf("%d references measured, want 5", refs)
	}
	var tab bytes.Buffer
	rep.WriteTable(&tab)
	if n := strings.Count(tab.String(), "x  "); n < 14 {
		t.Errorf("table has %d ratios, want 14:\n%s", n, tab.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("work directory left behind: %v", entries)
	}
}

// helper runs the harness in a child process, for tests that change its
// environment (PATH), and prints the table.
func helper() int {
	var c Config
	if err := json.Unmarshal([]byte(os.Getenv("DISKIMG_BENCH_CONFIG")), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	c.Sizes = TinySizes
	rep, err := Run(context.Background(), c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	rep.WriteTable(os.Stdout)
	return 0
}

var timeRE = regexp.MustCompile(`\s\d+\.\d{3}s\s`)

func TestNoQemu(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := tinyConfig(t, dir)
	c.Runs = 1
	cfg, _ := json.Marshal(c)
	empty := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DISKIMG_BENCH_HELPER=1", "DISKIMG_BENCH_CONFIG="+string(cfg), "PATH="+empty)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("harness without qemu-img: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "qemu-img not found: comparison unavailable") {
		t.Errorf("no unavailability note:\n%s", out)
	}
	rows := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && (f[0] == "random" || f[0] == "dense" || f[0] == "empty") {
			rows++
			if !timeRE.MatchString(l) || !strings.Contains(l, "unavailable") || !strings.Contains(l, "n/a") {
				t.Errorf("row without a diskimg time or with a comparison: %q", l)
			}
		}
	}
	if rows < 9 {
		t.Errorf("%d case rows, want at least 9:\n%s", rows, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("work directory left behind: %v", entries)
	}
}

// TestFullDisk fills a small tmpfs: the run fails with a clear error and
// leaves nothing behind.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=6m", "bench-test", dir).Run(); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	c := tinyConfig(t, dir)
	c.skipSpaceCheck = true
	_, err := Run(context.Background(), c)
	t.Logf("error: %v", err)
	if err == nil || !strings.Contains(err.Error(), "is full") || !strings.Contains(err.Error(), "work directory was removed") {
		t.Fatalf("Run on a full disk = %v, want a clear error", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("work directory left behind: %v", entries)
	}

	// Without skipping the check, the run refuses before writing.
	c.skipSpaceCheck = false
	if _, err := Run(context.Background(), c); err == nil || !strings.Contains(err.Error(), "the corpus needs about") {
		t.Errorf("space check: %v", err)
	}
}

// TestMakeOS checks the OS-like disk: a valid GPT, FAT32 in the first
// partition and ext4 in the second.
func TestMakeOS(t *testing.T) {
	t.Parallel()
	if tool := missingTool(osTools...); tool != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required under CI=true", tool)
		}
		t.Skipf("%s not installed", tool)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "os.raw")
	if err := makeOS(context.Background(), os.Environ(), img, dir, 160*mib, 8*mib); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Errorf("sgdisk -v: %v\n%s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fat := make([]byte, 8)
	f.ReadAt(fat, gptAlign+0x52) // FAT32 boot sector: file system type
	if string(fat) != "FAT32   " {
		t.Errorf("ESP type %q, want FAT32", fat)
	}
	magic := make([]byte, 2)
	f.ReadAt(magic, gptAlign+espSize+1024+0x38) // ext4 superblock s_magic
	if binary.LittleEndian.Uint16(magic) != 0xEF53 {
		t.Errorf("root partition magic %x, want ext4's ef53", magic)
	}
	n, err := allocated(img)
	if err != nil || n < 8*mib || n > 40*mib {
		t.Errorf("allocated %d bytes (%v); want the 8 MiB of files and some metadata", n, err)
	}
}

func TestMakeTreeDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := makeTree(a, 3*mib); err != nil {
		t.Fatal(err)
	}
	makeTree(b, 3*mib)
	var total int64
	filepath.Walk(a, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		total += fi.Size()
		rel, _ := filepath.Rel(a, p)
		x, _ := os.ReadFile(p)
		y, _ := os.ReadFile(filepath.Join(b, rel))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two runs", rel)
		}
		return nil
	})
	if total != 3*mib {
		t.Errorf("tree holds %d bytes, want %d", total, 3*mib)
	}
}
