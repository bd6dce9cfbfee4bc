package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sample is one timed run of a child process.
type sample struct {
	seconds float64
	maxRSS  int64 // KiB
	capped  bool  // stopped at the time limit: seconds is a lower bound
}

// A child's rusage Maxrss starts at its parent's peak RSS: the kernel
// carries the forked address space's high-water mark across exec. So the
// harness's own footprint would be every tool's floor. GNU time, a small
// process, forks the tool itself and reports the tool's own peak; without
// it the harness resets its high-water mark before each child
// (clear_refs 5) after returning its free memory, and the floor is its
// current RSS.
const (
	gnuTime   = "/usr/bin/time"
	rssMarker = "diskimg-bench-maxrss-kib="
)

var (
	timeOnce sync.Once
	timeOK   bool
)

// haveGNUTime reports whether gnuTime is GNU time with -f %M.
func haveGNUTime() bool {
	timeOnce.Do(func() {
		out, err := exec.Command(gnuTime, "-f", rssMarker+"%M", "true").CombinedOutput()
		timeOK = err == nil && strings.Contains(string(out), rssMarker)
	})
	return timeOK
}

// RSSMethod says how peak RSS is measured, for the report.
func RSSMethod() string {
	if haveGNUTime() {
		return "child's own peak, via GNU time"
	}
	return "child's rusage; floor is the harness's RSS"
}

// timeCmd runs name with args as a child and returns its wall time and
// peak RSS. stdout, when not nil, receives the child's standard output
// (cat's copy); its standard error is kept for the error message.
func timeCmd(ctx context.Context, env []string, stdout io.Writer, name string, args ...string) (sample, error) {
	return timeCmdWatch(ctx, env, stdout, nil, name, args...)
}

// timeCmdWatch is timeCmd with watch, when not nil, running while the
// child does, given the child's process group; it returns when stop is
// closed.
func timeCmdWatch(ctx context.Context, env []string, stdout io.Writer, watch func(pgid int, stop <-chan struct{}), name string, args ...string) (sample, error) {
	argv := append([]string{name}, args...)
	wrapped := haveGNUTime()
	if wrapped {
		argv = append([]string{gnuTime, "-f", rssMarker + "%M"}, argv...)
	} else {
		debug.FreeOSMemory()
		os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // best effort
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	// The child leads its own process group, so that cancelling also
	// kills what it started (the tool under GNU time).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout = stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		stop, watched := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(watched)
			if watch != nil {
				watch(cmd.Process.Pid, stop)
			}
		}()
		err = cmd.Wait()
		close(stop)
		<-watched
	}
	elapsed := time.Since(start)
	var s sample
	msg := stderr.String()
	if wrapped {
		// GNU time's line is the last one; it may follow the tool's
		// errors and "Command exited with non-zero status N".
		if i := strings.LastIndex(msg, rssMarker); i >= 0 {
			s.maxRSS, _ = strconv.ParseInt(strings.TrimSpace(msg[i+len(rssMarker):]), 10, 64)
			msg = msg[:i]
		}
		if i := strings.LastIndex(msg, "Command exited with non-zero status"); i >= 0 {
			msg = msg[:i]
		}
	} else if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			s.maxRSS = int64(ru.Maxrss) // KiB on Linux
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return sample{}, ctx.Err()
		}
		msg = strings.TrimSpace(msg)
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		if msg == "" {
			msg = err.Error()
		}
		return sample{}, &childError{cmd: filepath.Base(name) + " " + args[0], msg: msg}
	}
	s.seconds = elapsed.Seconds()
	return s, nil
}

// childError is a child process that failed; msg is the first line of its
// standard error.
type childError struct {
	cmd string
	msg string
}

func (e *childError) Error() string { return e.cmd + ": " + e.msg }

// noSpace reports whether err is, or a child died of, a full disk.
func noSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var ce *childError
	if errors.As(err, &ce) {
		m := strings.ToLower(ce.msg)
		return strings.Contains(m, "no space left") || strings.Contains(m, "disk quota exceeded")
	}
	return false
}

// run runs a setup command (corpus generation), failing with its standard
// error.
func run(ctx context.Context, env []string, name string, args ...string) error {
	_, err := timeCmd(ctx, env, nil, name, args...)
	return err
}

// warm reads the data regions of the files into the page cache, skipping
// holes (SEEK_DATA/SEEK_HOLE), so a 1 TiB sparse file costs nothing. Each
// tool then starts from the same cache state: the whole input cached.
func warm(paths ...string) error {
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = readData(f, buf)
		f.Close()
		if err != nil {
			return fmt.Errorf("warming %s: %w", p, err)
		}
	}
	return nil
}

const (
	seekData = 3 // lseek SEEK_DATA: next offset holding data
	seekHole = 4 // lseek SEEK_HOLE: next hole (or EOF)
)

func readData(f *os.File, buf []byte) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	for off := int64(0); off < size; {
		d, err := f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				return nil // no data after off
			}
			// No SEEK_DATA support: read everything.
			d = off
		}
		h, err := f.Seek(d, seekHole)
		if err != nil {
			h = size
		}
		for d < h {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), h-d)], d)
			d += int64(n)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
		off = h
	}
	return nil
}

// dropCaches empties the page cache (root only): every tool then reads
// its input from the disk.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// allocated returns the bytes of path that hold data, by SEEK_DATA.
func allocated(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var n int64
	for off := int64(0); off < fi.Size(); {
		d, err := f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			return fi.Size(), nil
		}
		h, err := f.Seek(d, seekHole)
		if err != nil {
			h = fi.Size()
		}
		n += h - d
		off = h
	}
	return n, nil
}
