package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// The sparsify case: an ext4 disk holding deleted files, made sparse by
// `diskimg convert --sparsify` and by virt-sparsify (libguestfs), both to
// qcow2. virt-sparsify boots an appliance VM; where KVM is unusable,
// LIBGUESTFS_BACKEND_SETTINGS=force_tcg in the environment makes it
// emulate.

// SparsifyReport is the outcome of RunSparsify.
type SparsifyReport struct {
	Date string `json:"date"`
	CPUs int    `json:"cpus"`
	// Load is /proc/loadavg before and after the timed runs.
	LoadBefore string `json:"load-before,omitempty"`
	LoadAfter  string `json:"load-after,omitempty"`
	Size       int64  `json:"size"`    // virtual size of the disk
	Kept       int64  `json:"kept"`    // bytes of files left in the ext4
	Deleted    int64  `json:"deleted"` // bytes of files deleted from it
	// Plain is the size of `qemu-img convert -O qcow2` of the disk: what
	// sparsifying saves from.
	Plain        int64             `json:"plain-qcow2-bytes,omitempty"`
	Diskimg      *SparsifyResult   `json:"diskimg"`
	VirtSparsify *SparsifyResult   `json:"virt-sparsify"`
	Ratio        float64           `json:"ratio,omitempty"` // virt-sparsify's time over diskimg's
	Targets      []Target          `json:"targets"`
	Notes        []string          `json:"notes,omitempty"`
	Settings     map[string]string `json:"settings,omitempty"` // libguestfs environment used
}

// SparsifyResult is one tool's timing and output size.
type SparsifyResult struct {
	Result
	OutputBytes int64  `json:"output-bytes,omitempty"`
	Skipped     string `json:"skipped,omitempty"`
}

// Sparsify case sizes: the disk and the bytes deleted from its ext4 (the
// kept files are an eighth of the deleted ones).
const (
	sparsifyFullDisk, sparsifyFullDeleted   = 4 * gib, 3 * gib
	sparsifyQuickDisk, sparsifyQuickDeleted = 1 * gib, 768 * mib
	sparsifyTinyDisk, sparsifyTinyDeleted   = 96 * mib, 48 * mib

	sparsifySizeTarget  = 1.01 // output no larger than virt-sparsify's + 1%
	sparsifySpeedTarget = 20.0 // times faster than virt-sparsify
)

// RunSparsify times the sparsify case. c.Sizes == TinySizes makes a tiny
// disk (for tests); c.Quick a 1 GiB one; otherwise 4 GiB with 3 GiB of
// deleted files.
func RunSparsify(ctx context.Context, c Config) (rep *SparsifyReport, err error) {
	if c.Diskimg == "" {
		return nil, errors.New("bench: no diskimg binary given")
	}
	if c.Runs < 1 || c.Runs > 100 {
		return nil, fmt.Errorf("bench: runs must be 1 to 100, not %d", c.Runs)
	}
	size, deleted := int64(sparsifyFullDisk), int64(sparsifyFullDeleted)
	switch {
	case c.Sizes == TinySizes:
		size, deleted = sparsifyTinyDisk, sparsifyTinyDeleted
	case c.Quick:
		size, deleted = sparsifyQuickDisk, sparsifyQuickDeleted
	}
	logw := c.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(f string, a ...any) { fmt.Fprintf(logw, f+"\n", a...) }
	if t := missingTool("mkfs.ext4", "debugfs"); t != "" {
		return nil, fmt.Errorf("bench: %s not installed (e2fsprogs)", t)
	}
	parent := c.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	work, err := os.MkdirTemp(parent, "diskimg-bench-sparsify-")
	if err != nil {
		return nil, fmt.Errorf("bench: work directory: %w", err)
	}
	defer func() {
		if err != nil || !c.Keep {
			if rerr := os.RemoveAll(work); rerr != nil && err == nil {
				err = rerr
			}
		}
		if err != nil && noSpace(err) {
			err = fmt.Errorf("bench: %s is full (%v); the work directory was removed, use --dir for a bigger disk", parent, err)
		}
	}()
	rep = &SparsifyReport{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), Size: size, Deleted: deleted, Kept: deleted / 8,
		Settings: map[string]string{}}
	for _, k := range []string{"LIBGUESTFS_BACKEND", "LIBGUESTFS_BACKEND_SETTINGS"} {
		if v := os.Getenv(k); v != "" {
			rep.Settings[k] = v
		}
	}
	env := os.Environ()
	disk := filepath.Join(work, "deleted.raw")
	start := time.Now()
	if err := makeDeleted(ctx, env, work, disk, size, rep.Kept, deleted); err != nil {
		return nil, fmt.Errorf("bench: making the disk: %w", err)
	}
	logf("sparsify: %s ext4 disk with %s kept and %s deleted, made in %s", human(size), human(rep.Kept), human(deleted), time.Since(start).Round(time.Millisecond))

	h := &harness{c: c, env: env, work: work, logf: logf}
	if qemu, err := exec.LookPath("qemu-img"); err == nil {
		plain := filepath.Join(work, "plain.qcow2")
		if err := run(ctx, env, qemu, "convert", "-f", "raw", "-O", "qcow2", disk, plain); err != nil {
			return nil, err
		}
		rep.Plain, _ = allocated(plain)
		os.Remove(plain)
	}
	rep.LoadBefore = loadAvg()
	rep.Diskimg = h.timeSparsify(ctx, disk, size, c.Diskimg, "convert", "--sparsify", "-f", "raw", "-O", "qcow2", disk)
	vs := c.VirtSparsify
	if vs == "" {
		vs, _ = exec.LookPath("virt-sparsify")
	}
	if vs == "" {
		rep.VirtSparsify = &SparsifyResult{Skipped: "virt-sparsify not installed (libguestfs-tools)"}
	} else {
		rep.VirtSparsify = h.timeSparsify(ctx, disk, size, vs, "--quiet", "--format", "raw", "--convert", "qcow2", disk)
	}
	rep.LoadAfter = loadAvg()
	if strings.Contains(rep.VirtSparsify.Error, "guestfs_launch failed") && rep.Settings["LIBGUESTFS_BACKEND_SETTINGS"] == "" {
		rep.Notes = append(rep.Notes, "virt-sparsify's appliance did not start; where KVM is unusable, LIBGUESTFS_BACKEND_SETTINGS=force_tcg makes it emulate")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, v := rep.Diskimg, rep.VirtSparsify
	if d.Error == "" && v.Error == "" && v.Skipped == "" && d.Seconds > 0 {
		rep.Ratio = v.Seconds / d.Seconds
	}
	rep.Targets = rep.evaluate()
	return rep, nil
}

// timeSparsify runs bin with args and the output path last, Runs times
// unless a run is slow (virt-sparsify boots a VM), and records the median
// time, MB/s of the disk's size bytes and the output's size.
func (h *harness) timeSparsify(ctx context.Context, src string, size int64, bin string, args ...string) *SparsifyResult {
	out := filepath.Join(h.work, "out.qcow2")
	defer os.Remove(out)
	var samples []sample
	res := &SparsifyResult{}
	for range h.c.Runs {
		if h.slow(samples) {
			break
		}
		if err := h.prepare(src, out); err != nil {
			res.Error = err.Error()
			return res
		}
		s, err := timeCmd(ctx, h.env, nil, bin, append(args, out)...)
		if err == nil {
			err = durable(&s, out)
		}
		if err != nil {
			res.Error = err.Error()
			h.logf("sparsify: %s failed: %v", filepath.Base(bin), err)
			return res
		}
		samples = append(samples, s)
		res.OutputBytes, _ = allocated(out)
		h.logf("sparsify: %s %s, output %s", filepath.Base(bin), secs(s.seconds), human(res.OutputBytes))
	}
	res.Result = *summarize(samples, size)
	return res
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func (r *SparsifyReport) evaluate() []Target {
	d, v := r.Diskimg, r.VirtSparsify
	size := Target{Name: fmt.Sprintf("output no larger than virt-sparsify's + %.0f%%", (sparsifySizeTarget-1)*100)}
	speed := Target{Name: fmt.Sprintf("at least %.0fx faster than virt-sparsify", sparsifySpeedTarget)}
	if d.Error != "" || v.Error != "" || v.Skipped != "" {
		why := "no comparison: " + d.Error + v.Error + v.Skipped
		size.Measured, speed.Measured = why, why
		return []Target{size, speed}
	}
	size.Met = float64(d.OutputBytes) <= float64(v.OutputBytes)*sparsifySizeTarget
	size.Measured = fmt.Sprintf("%s against %s (%.3fx)", human(d.OutputBytes), human(v.OutputBytes), float64(d.OutputBytes)/float64(max(v.OutputBytes, 1)))
	speed.Met = r.Ratio >= sparsifySpeedTarget
	speed.Measured = fmt.Sprintf("%s against %s (%.1fx)", secs(d.Seconds), secs(v.Seconds), r.Ratio)
	return []Target{size, speed}
}

// WriteTable writes the sparsify report for people.
func (r *SparsifyReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "%s, %d CPUs; load %s before, %s after\n", r.Date, r.CPUs, r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(w, "ext4 disk of %s: %s of files kept, %s deleted; qemu-img convert -O qcow2 without sparsifying: %s\n\n",
		human(r.Size), human(r.Kept), human(r.Deleted), human(r.Plain))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "tool\ttime\toutput\tRSS\t")
	for _, t := range []struct {
		name string
		r    *SparsifyResult
	}{{"diskimg convert --sparsify", r.Diskimg}, {"virt-sparsify", r.VirtSparsify}} {
		switch {
		case t.r.Skipped != "":
			fmt.Fprintf(tw, "%s\tskipped: %s\t\t\t\n", t.name, t.r.Skipped)
		case t.r.Error != "":
			fmt.Fprintf(tw, "%s\tfailed: %s\t\t\t\n", t.name, t.r.Error)
		default:
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", t.name, secs(t.r.Seconds), human(t.r.OutputBytes), human(t.r.MaxRSS<<10))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	notes := slices.Clone(r.Notes)
	for k, v := range r.Settings {
		notes = append(notes, k+"="+v)
	}
	writeTargets(w, r.Targets, notes)
	return nil
}

// makeDeleted makes a GPT-less ext4 disk of size bytes: kept bytes of
// files stay, deleted bytes of random files are written and deleted
// (their blocks are free but still hold the data).
func makeDeleted(ctx context.Context, env []string, work, path string, size, kept, deleted int64) error {
	tree := filepath.Join(work, "tree")
	defer os.RemoveAll(tree)
	if err := makeTree(filepath.Join(tree, "kept"), kept); err != nil {
		return err
	}
	gone := filepath.Join(tree, "gone")
	if err := os.MkdirAll(gone, 0o755); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(uint64(deleted), 22))
	data := rand.NewChaCha8(seed("deleted"))
	var names []string
	for done, i := int64(0), 0; done < deleted; i++ {
		n := min(1*mib+rng.Int64N(63*mib), deleted-done)
		f, err := os.Create(filepath.Join(gone, "f"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		err = fill(f, data, 0, n)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		names = append(names, "rm /gone/f"+strconv.Itoa(i))
		done += n
	}
	if err := makeEmpty(path, size); err != nil {
		return err
	}
	if err := run(ctx, env, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", tree, path); err != nil {
		return err
	}
	script := filepath.Join(work, "rm.debugfs")
	if err := os.WriteFile(script, []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return run(ctx, env, "debugfs", "-w", "-f", script, path)
}
