package convert

// The injected-fault suite: every writer, and the reader of every format,
// through a file that fails at a chosen offset (EIO, ENOSPC, a short read)
// or at fsync. Every run must end in a clear error, without a panic, and
// leave nothing in the output's directory.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/diskimg/diskimg/format"
	_ "github.com/diskimg/diskimg/format/all"
	"github.com/diskimg/diskimg/format/formattest"
)

// faultKind is what goes wrong.
type faultKind string

const (
	faultEIO      faultKind = "EIO"       // the read or write fails
	faultENOSPC   faultKind = "ENOSPC"    // the write stops short: disk full
	faultShortEOF faultKind = "short-EOF" // the read stops short with io.EOF: the file shrank
	faultShortNil faultKind = "short-nil" // the read stops short with no error (a broken filesystem)
	faultSync     faultKind = "fsync"     // fsync fails
)

// fault fails the first read or write that touches byte at.
type fault struct {
	kind faultKind
	at   int64
}

func (f fault) String() string { return fmt.Sprintf("%s@%d", f.kind, f.at) }

// ioLog records the offsets of the reads or writes a clean run makes, so
// faults are placed where I/O really happens.
type ioLog struct {
	mu   sync.Mutex
	offs map[int64]bool
}

func (l *ioLog) add(off int64, n int) {
	if l == nil || n == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.offs == nil {
		l.offs = map[int64]bool{}
	}
	l.offs[off] = true
	l.offs[off+int64(n)-1] = true
}

// spread picks up to n of the logged offsets, evenly over their order.
func (l *ioLog) spread(n int) []int64 {
	var all []int64
	for o := range l.offs {
		all = append(all, o)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) <= n {
		return all
	}
	var out []int64
	for i := range n {
		out = append(out, all[i*(len(all)-1)/(n-1)])
	}
	return out
}

// hits returns how many bytes of [off, off+n) come before the fault, and
// whether the range reaches it.
func (f *fault) hits(off int64, n int) (int, bool) {
	if f == nil || f.at < off || f.at >= off+int64(n) {
		return n, false
	}
	return int(f.at - off), true
}

// faultTarget is an output file that records its writes or fails one.
type faultTarget struct {
	formattest.WatchedTarget
	fault *fault // nil: record only
	log   *ioLog
}

func newFaultTarget(rt format.RandomTarget, f *fault, log *ioLog) *faultTarget {
	w := &faultTarget{fault: f, log: log}
	w.RandomTarget, w.OnWrite = rt, w.write
	return w
}

func (w *faultTarget) Name() string {
	n, _ := w.RandomTarget.(interface{ Name() string })
	return n.Name()
}

func (w *faultTarget) Fd() uintptr { return w.RandomTarget.(interface{ Fd() uintptr }).Fd() }

func (w *faultTarget) ReadAt(p []byte, off int64) (int, error) {
	return w.RandomTarget.(io.ReaderAt).ReadAt(p, off)
}

func (w *faultTarget) write(p []byte, off int64) (int, error) {
	n, hit := w.fault.hits(off, len(p))
	if !hit {
		w.log.add(off, len(p))
		return w.RandomTarget.WriteAt(p, off)
	}
	errno := syscall.EIO
	if w.fault.kind == faultENOSPC {
		var err error
		if n, err = w.RandomTarget.WriteAt(p[:n], off); err != nil {
			return n, err
		}
		errno = syscall.ENOSPC
	} else {
		n = 0
	}
	return n, &os.PathError{Op: "write", Path: w.Name(), Err: errno}
}

// faultFile is a source file that records its reads or fails one.
type faultFile struct {
	format.File
	fault *fault
	log   *ioLog
}

func (r *faultFile) ReadAt(p []byte, off int64) (int, error) {
	n, hit := r.fault.hits(off, len(p))
	if !hit {
		r.log.add(off, len(p))
		return r.File.ReadAt(p, off)
	}
	m, err := r.File.ReadAt(p[:n], off)
	if err != nil {
		return m, err
	}
	switch r.fault.kind {
	case faultShortEOF:
		return m, io.EOF
	case faultShortNil:
		return m, nil
	}
	return m, &os.PathError{Op: "read", Path: r.Name(), Err: syscall.EIO}
}

func (r *faultFile) Close() error { return format.CloseFile(r.File) }

// faultWriters are the output formats and subformats.
var faultWriters = []struct {
	name, fmt, opts string
	compress        bool
}{
	{"raw", "raw", "", false},
	{"qcow2", "qcow2", "", false},
	{"qcow2-c", "qcow2", "", true},
	{"vmdk", "vmdk", "", false},
	{"vmdk-stream", "vmdk", "subformat=streamOptimized", false},
	{"vpc", "vpc", "", false},
	{"vpc-fixed", "vpc", "subformat=fixed", false},
	{"vhdx", "vhdx", "", false},
	{"vhdx-fixed", "vhdx", "subformat=fixed,block_size=1M", false},
	{"zvhd2", "zvhd2", "", false},
	{"zvhd", "zvhd", "", false},
}

// faultRun converts src into a new file in dir through CreateOutput and
// Commit as the CLI does, the output's target wrapped by wrap, and
// returns the error (nil when the run succeeded). A panic is an error too.
func faultRun(src format.Image, dir, fmtName, opts string, compress bool, wrap func(format.RandomTarget) format.Target) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	w, err := format.LookupWriter(fmtName)
	if err != nil {
		return err
	}
	o := Options{Compress: compress, Workers: 2}
	if o.WriterOptions, err = format.ParseOptions(opts); err != nil {
		return err
	}
	out, err := CreateOutput(filepath.Join(dir, "out."+fmtName), OutputOptions{})
	if err != nil {
		return err
	}
	defer out.Abort()
	rt, _ := format.Seekable(out.Target)
	if _, err := Convert(context.Background(), src, w, wrap(rt), o); err != nil {
		return err
	}
	return out.Commit()
}

// faultOutcome checks a failed run: an error that says what failed, and
// an empty directory.
func faultOutcome(t *testing.T, dir string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("no error")
		return
	}
	msg := err.Error()
	if strings.Contains(msg, "panic") {
		t.Errorf("%v", err)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	if strings.Contains(msg, ".diskimg-") || strings.Contains(msg, "/proc/") {
		t.Errorf("error %q names a temporary file", msg)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left in the directory: %v", names)
	}
}

// faultCounts tallies the suite's runs for the log.
type faultCounts struct {
	mu          sync.Mutex
	runs, clear int
}

func (c *faultCounts) add(t *testing.T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs++
	if !t.Failed() {
		c.clear++
	}
}

// TestWriterFaults: every writer, failing at offsets spread over the
// writes a clean run makes (EIO and ENOSPC), and at fsync.
func TestWriterFaults(t *testing.T) {
	srcPath := filepath.Join(t.TempDir(), "src.raw")
	formattest.MakeRaw(t, srcPath, 6<<20+512, formattest.Sparse)
	src := formattest.Open(t, srcPath, "raw")
	points := 6
	if testing.Short() {
		points = 3
	}
	var counts faultCounts
	for _, wr := range faultWriters {
		t.Run(wr.name, func(t *testing.T) {
			// A clean run logs where the writer writes.
			var log ioLog
			dir := t.TempDir()
			err := faultRun(src, dir, wr.fmt, wr.opts, wr.compress, func(rt format.RandomTarget) format.Target {
				return newFaultTarget(rt, nil, &log)
			})
			if err != nil {
				t.Fatalf("clean run: %v", err)
			}
			os.Remove(filepath.Join(dir, "out."+wr.fmt))
			var faults []fault
			for _, at := range log.spread(points) {
				faults = append(faults, fault{faultEIO, at}, fault{faultENOSPC, at})
			}
			faults = append(faults, fault{kind: faultSync})
			for _, f := range faults {
				t.Run(f.String(), func(t *testing.T) {
					dir := t.TempDir()
					want := []string{"input/output error", filepath.Join(dir, "out."+wr.fmt)}
					if f.kind == faultENOSPC {
						want[0] = "no space left on device"
					}
					if f.kind == faultSync {
						defer func(s func(*os.File) error) { syncFile = s }(syncFile)
						syncFile = func(f *os.File) error {
							return &os.PathError{Op: "sync", Path: f.Name(), Err: syscall.EIO}
						}
					}
					err := faultRun(src, dir, wr.fmt, wr.opts, wr.compress, func(rt format.RandomTarget) format.Target {
						if f.kind == faultSync {
							return rt
						}
						return newFaultTarget(rt, &f, nil)
					})
					faultOutcome(t, dir, err, want...)
					counts.add(t)
				})
			}
		})
	}
	t.Logf("writer faults: %d runs over %d writers, %d ended in a clear error with nothing left", counts.runs, len(faultWriters), counts.clear)
}

// TestReaderFaults: the reader of every format, failing at offsets spread
// over the reads a clean conversion makes: EIO, a short read with EOF and
// a short read with no error. Open or the conversion must fail with an
// error saying so, and the output directory stays empty.
func TestReaderFaults(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	formattest.MakeRaw(t, raw, 6<<20+512, formattest.Sparse)
	sources := map[string]string{"raw": raw}
	rawImg := formattest.Open(t, raw, "raw")
	for _, wr := range faultWriters {
		p := filepath.Join(dir, "src-"+wr.name)
		if err := faultRun(rawImg, dir, wr.fmt, wr.opts, wr.compress, func(rt format.RandomTarget) format.Target { return rt }); err != nil {
			t.Fatal(err)
		}
		os.Rename(filepath.Join(dir, "out."+wr.fmt), p)
		sources[wr.name] = p
	}
	if _, err := exec.LookPath("qemu-img"); err == nil || os.Getenv("CI") == "true" {
		// Formats only qemu-img writes.
		for _, f := range []string{"qcow", "qed", "vdi"} {
			p := filepath.Join(dir, "src-"+f)
			formattest.Convert(t, raw, p, f)
			sources[f] = p
		}
	}
	points := 6
	if testing.Short() {
		points = 3
	}
	names := make([]string, 0, len(sources))
	for n := range sources {
		names = append(names, n)
	}
	sort.Strings(names)
	var counts faultCounts
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			open := func(f *fault, log *ioLog) (format.Image, error) {
				osf, err := format.OpenFile(sources[name])
				if err != nil {
					t.Fatal(err)
				}
				ff := &faultFile{File: osf, fault: f, log: log}
				img, err := format.NewOpener(format.Policy{}).OpenImage(ff, formatOf(name))
				if err != nil {
					osf.Close()
				}
				return img, err
			}
			var log ioLog
			img, err := open(nil, &log)
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			err = faultRun(img, out, "raw", "", false, func(rt format.RandomTarget) format.Target { return rt })
			img.Close()
			if err != nil {
				t.Fatalf("clean run: %v", err)
			}
			os.Remove(filepath.Join(out, "out.raw"))
			for _, at := range log.spread(points) {
				for _, kind := range []faultKind{faultEIO, faultShortEOF, faultShortNil} {
					f := fault{kind, at}
					t.Run(f.String(), func(t *testing.T) {
						out := t.TempDir()
						img, err := open(&f, nil)
						if err == nil {
							err = faultRun(img, out, "raw", "", false, func(rt format.RandomTarget) format.Target { return rt })
							img.Close()
						}
						var want []string
						if kind == faultEIO {
							want = []string{"input/output error", fmt.Sprintf("offset %d", at)}
						}
						faultOutcome(t, out, err, want...)
						counts.add(t)
					})
				}
			}
		})
	}
	t.Logf("reader faults: %d runs over %d source formats, %d ended in a clear error with nothing left", counts.runs, len(names), counts.clear)
}

// formatOf is the format of a source named by faultWriters' names.
func formatOf(name string) string {
	for _, w := range faultWriters {
		if w.name == name {
			return w.fmt
		}
	}
	return name
}
