// Package bench is the throughput harness behind `diskimg bench`: it
// generates a corpus of disks in a work directory, converts each with
// `diskimg convert` and with `qemu-img convert` as child processes,
// alternating the two and repeating, and reports median times, MB/s and
// peak RSS per case, with cat and cp --sparse of the same bytes as the
// physical reference.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/diskimg/diskimg/format"
)

// Config says what to run.
type Config struct {
	// Diskimg is the diskimg binary to time (os.Executable() for the CLI).
	Diskimg string
	// QemuImg is the qemu-img binary; "" looks it up on PATH. When there
	// is none, diskimg still runs and the comparison is unavailable.
	QemuImg string
	// Dir is where the work directory is made; "" is the system temp dir.
	Dir string
	// Runs is the number of timed repetitions per tool and case; the
	// median is reported.
	Runs int
	// Quick runs a star instead of the full matrix: every input format to
	// raw, and raw to every output.
	Quick bool
	// Sizes are the corpus sizes; zero means FullSizes, or QuickSizes
	// with Quick.
	Sizes Sizes
	// Formats, when not empty, restricts input and output formats to
	// these names (raw is always kept as the corpus's own format).
	Formats []string
	// Keep leaves the work directory in place after a successful run.
	Keep bool
	// DropCaches empties the page cache before each timed run (root
	// only), instead of reading the input into it.
	DropCaches bool
	// QemuLimit stops a qemu-img run that takes longer and records the
	// limit as a lower bound of its time (qemu-img spends minutes on empty
	// 1 TiB vmdk, vhdx and qcow inputs); 0 means none, or QuickQemuLimit
	// with Quick.
	QemuLimit time.Duration
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// VirtSparsify is the virt-sparsify binary RunSparsify compares with;
	// "" looks it up on PATH.
	VirtSparsify string

	skipSpaceCheck bool // tests: let the disk really fill up
}

// qemuFormats are the formats qemu-img both reads and writes, so a corpus
// can be made in them and converted to them by both tools.
var qemuFormats = []string{"raw", "qcow2", "vmdk", "vpc", "vhdx", "qcow", "qed", "vdi"}

// output is one kind of conversion target.
type output struct {
	name       string   // as shown: "qcow2 -c"
	format     string   // -O
	args       []string // extra convert arguments, the same for both tools
	compressed bool
}

// outputsFor returns the outputs for the registered writers: one per
// format, plus compressed qcow2 and streamOptimized vmdk.
func outputsFor(names []string) []output {
	var outs []output
	for _, n := range names {
		outs = append(outs, output{name: n, format: n})
		switch n {
		case "qcow2":
			outs = append(outs, output{name: "qcow2 -c", format: n, args: []string{"-c"}, compressed: true})
		case "vmdk":
			outs = append(outs, output{name: "vmdk stream", format: n, args: []string{"-o", "subformat=streamOptimized"}, compressed: true})
		}
	}
	return outs
}

// noQemu is the note of a report made without qemu-img.
const noQemu = "qemu-img not found: comparison unavailable"

// Run generates the corpus, times every case and returns the report. The
// work directory is removed on error, and on success unless c.Keep.
func Run(ctx context.Context, c Config) (rep *Report, err error) {
	if c.Diskimg == "" {
		return nil, errors.New("bench: no diskimg binary given")
	}
	if c.Runs < 1 || c.Runs > 100 {
		return nil, fmt.Errorf("bench: runs must be 1 to 100, not %d", c.Runs)
	}
	if c.Sizes == (Sizes{}) {
		c.Sizes = FullSizes
		if c.Quick {
			c.Sizes = QuickSizes
		}
	}
	logw := c.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(f string, a ...any) { fmt.Fprintf(logw, f+"\n", a...) }

	rep = &Report{
		Date:      time.Now().UTC().Format(time.RFC3339),
		CPUs:      runtime.NumCPU(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
		Runs:      c.Runs,
		Quick:     c.Quick,
		CacheMode: "warm",
		RSSMethod: RSSMethod(),
	}
	if c.DropCaches {
		rep.CacheMode = "dropped"
	}
	env := os.Environ()
	qemu := c.QemuImg
	if qemu == "" {
		qemu, _ = exec.LookPath("qemu-img")
	}
	if qemu != "" {
		if out, err := exec.CommandContext(ctx, qemu, "--version").Output(); err == nil {
			rep.QemuVersion, _, _ = strings.Cut(string(out), "\n")
		} else {
			qemu = ""
		}
	}
	if qemu == "" {
		rep.Notes = append(rep.Notes, noQemu)
		logf("%s", noQemu)
	}

	// Formats: inputs are those both tools read that the corpus can be
	// made in; outputs are the registered writers.
	allowed := func(n string) bool { return len(c.Formats) == 0 || slices.Contains(c.Formats, n) || n == "raw" }
	readers := map[string]bool{}
	for _, f := range format.Formats() {
		readers[f.Name] = true
	}
	var writers []string
	for _, w := range format.WriterFormats() {
		writers = append(writers, w.Name)
	}
	var inputs []string
	for _, n := range qemuFormats {
		if !readers[n] || !allowed(n) {
			continue
		}
		// Without qemu-img the corpus is converted by diskimg itself.
		if qemu == "" && !slices.Contains(writers, n) {
			continue
		}
		inputs = append(inputs, n)
	}
	var outs []output
	for _, o := range outputsFor(append(writers, missingWriters(writers)...)) {
		if allowed(o.format) {
			outs = append(outs, o)
		}
	}
	for _, f := range c.Formats {
		if !slices.Contains(qemuFormats, f) && !slices.Contains(writers, f) {
			return nil, fmt.Errorf("bench: unknown format %q (inputs: %s; outputs: %s)", f, strings.Join(qemuFormats, ", "), strings.Join(writers, ", "))
		}
	}

	parent := c.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	if !c.skipSpaceCheck {
		if err := checkSpace(parent, c.Sizes, len(inputs)); err != nil {
			return nil, err
		}
	}
	work, err := os.MkdirTemp(parent, "diskimg-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: work directory: %w", err)
	}
	report := rep
	report.WorkDir = work
	defer func() {
		if err != nil || !c.Keep {
			if rerr := os.RemoveAll(work); rerr != nil && err == nil {
				err = rerr
			}
			report.WorkDir = ""
		}
		if err != nil {
			rep = nil
			if noSpace(err) {
				err = fmt.Errorf("bench: %s is full (%s); the work directory was removed, use --dir for a bigger disk", parent, strings.TrimPrefix(err.Error(), "bench: "))
			}
		}
	}()

	h := &harness{c: c, env: env, qemu: qemu, work: work, logf: logf, rep: rep}
	corpora, err := h.makeCorpora(ctx, inputs, writers)
	if err != nil {
		return nil, err
	}
	for _, cp := range corpora {
		if cp.raw == "" {
			rep.Notes = append(rep.Notes, fmt.Sprintf("corpus %s skipped: %s", cp.name, cp.note))
			continue
		}
		if cp.only == "" {
			if err := h.references(ctx, cp); err != nil {
				return nil, err
			}
		}
		for _, in := range inputs {
			for _, o := range outs {
				if !h.wanted(cp, in, o) {
					continue
				}
				if err := h.runCase(ctx, cp, in, o, writers); err != nil {
					return nil, err
				}
			}
		}
	}
	rep.Targets = evaluate(rep)
	return rep, nil
}

// missingWriters lists the qemu formats diskimg has no writer for yet, so
// their cases show up as skipped rather than vanish.
func missingWriters(writers []string) []string {
	var m []string
	for _, n := range []string{"qcow2", "vmdk", "vpc", "vhdx"} {
		if !slices.Contains(writers, n) {
			m = append(m, n)
		}
	}
	return m
}

// checkSpace refuses to start when the corpus cannot fit: the raw disks'
// data once per input format, plus one output and the file tree.
func checkSpace(dir string, s Sizes, inputs int) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bench: %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	data := s.RandomData + s.Dense
	if s.OSDisk >= minOSDisk {
		data += s.OSFiles + s.OSFiles/8 + espSize/16
	}
	need := data*int64(inputs+2) + s.OSFiles + 64*mib
	if free < need {
		return fmt.Errorf("bench: %s has %s free, the corpus needs about %s: use --dir on a bigger disk", dir, human(free), human(need))
	}
	return nil
}

type harness struct {
	c    Config
	env  []string
	qemu string
	work string
	logf func(string, ...any)
	rep  *Report
}

// wanted reports whether a case is in the set: the full matrix, or with
// Quick a star through raw. The dense disk, which is there for raw
// throughput, is always a star.
func (h *harness) wanted(cp *corpus, in string, o output) bool {
	if cp.only != "" {
		return in == cp.only && len(o.args) == 0 && (o.format == "qcow2" || o.format == "raw")
	}
	star := h.c.Quick || cp.name == "dense"
	if !star {
		return true
	}
	return in == "raw" || (o.format == "raw" && len(o.args) == 0)
}

// makeCorpora makes each raw disk and converts it to every input format.
func (h *harness) makeCorpora(ctx context.Context, inputs, writers []string) ([]*corpus, error) {
	s := h.c.Sizes
	type gen struct {
		name string
		size int64
		make func(path string) error
		skip string
	}
	gens := []gen{
		{"random", s.RandomDisk, func(p string) error { return makeRandom(p, s.RandomDisk, s.RandomData) }, ""},
		{"dense", s.Dense, func(p string) error { return makeDense(p, s.Dense) }, ""},
		{"os", s.OSDisk, func(p string) error { return makeOS(ctx, h.env, p, h.work, s.OSDisk, s.OSFiles) }, ""},
		{"empty", s.Huge, func(p string) error { return makeEmpty(p, s.Huge) }, ""},
	}
	var out []*corpus
	for _, hc := range holeCorpora {
		if size := hc.size(s); size > 0 && s.HoleData > 0 && slices.Contains(inputs, hc.format) {
			cp, err := h.makeHoles(ctx, hc.name, hc.format, hc.opts, size)
			if err != nil {
				return nil, err
			}
			out = append(out, cp)
		}
	}
	for _, g := range gens {
		if g.size == 0 {
			continue
		}
		cp := &corpus{name: g.name, size: g.size, inputs: map[string]string{}}
		out = append(out, cp)
		if g.name == "os" {
			if t := missingTool(osTools...); t != "" {
				cp.note = t + " not installed"
				continue
			}
			if g.size < minOSDisk {
				cp.note = fmt.Sprintf("disk smaller than %s", human(minOSDisk))
				continue
			}
		}
		start := time.Now()
		raw := filepath.Join(h.work, g.name+".raw")
		if err := g.make(raw); err != nil {
			return nil, fmt.Errorf("bench: making the %s disk: %w", g.name, err)
		}
		cp.raw = raw
		for _, in := range inputs {
			if in == "raw" {
				cp.inputs[in] = raw
				continue
			}
			p := filepath.Join(h.work, g.name+"."+in)
			var err error
			if h.qemu != "" {
				err = run(ctx, h.env, h.qemu, "convert", "-f", "raw", "-O", in, raw, p)
			} else {
				err = run(ctx, h.env, h.c.Diskimg, "convert", "-f", "raw", "-O", in, raw, p)
			}
			if err != nil {
				return nil, fmt.Errorf("bench: making %s in %s: %w", g.name, in, err)
			}
			cp.inputs[in] = p
		}
		h.logf("corpus %s: %s virtual, made in %s", g.name, human(g.size), time.Since(start).Round(time.Millisecond))
	}
	return out, nil
}

// makeHoles makes a corpus in format with options opts: a sparse raw disk
// holding HoleData in four runs, converted, so every block the format
// allocates without data is a hole in its file.
func (h *harness) makeHoles(ctx context.Context, name, format, opts string, size int64) (*corpus, error) {
	start := time.Now()
	raw := filepath.Join(h.work, name+".raw")
	if err := makeRandom(raw, size, h.c.Sizes.HoleData); err != nil {
		return nil, fmt.Errorf("bench: making the %s disk: %w", name, err)
	}
	p := filepath.Join(h.work, name+"."+format)
	bin := h.qemu
	if bin == "" {
		bin = h.c.Diskimg
	}
	if err := run(ctx, h.env, bin, "convert", "-f", "raw", "-O", format, "-o", opts, raw, p); err != nil {
		return nil, fmt.Errorf("bench: making %s in %s: %w", name, format, err)
	}
	if err := os.Remove(raw); err != nil {
		return nil, err
	}
	h.logf("corpus %s: %s virtual %s (%s), made in %s", name, human(size), format, opts, time.Since(start).Round(time.Millisecond))
	return &corpus{name: name, size: size, raw: p, inputs: map[string]string{format: p}, only: format}, nil
}

// prepare puts the page cache in the state every timed run starts from,
// and removes the previous output. It also flushes every dirty page of
// the system (sync, untimed), so no run pays for writeback left over from
// the corpus or a previous run: without it, times of the same case swung
// by 3x on this machine's virtual disk.
func (h *harness) prepare(src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if h.c.DropCaches {
		return dropCaches()
	}
	if err := warm(src); err != nil {
		return err
	}
	syscall.Sync()
	return nil
}

// durable flushes the output a tool wrote and adds the time to s: a
// conversion is done when its output is on disk. diskimg syncs its output
// itself, qemu-img convert does not, so without this the two would not be
// timing the same work.
func durable(s *sample, path string) error {
	start := time.Now()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	s.seconds += time.Since(start).Seconds()
	return err
}

// references times cat and cp --sparse=always of the raw disk.
func (h *harness) references(ctx context.Context, cp *corpus) error {
	dst := filepath.Join(h.work, "ref.out")
	defer os.Remove(dst)
	for _, tool := range []string{"cat", "cp --sparse"} {
		ref := Reference{Corpus: cp.name, Tool: tool, Size: cp.size}
		h.rep.References = append(h.rep.References, &ref)
		if tool == "cat" && cp.size >= 64*gib {
			ref.Skipped = "would read " + human(cp.size) + " of holes"
			continue
		}
		bin := strings.Fields(tool)[0]
		path, err := exec.LookPath(bin)
		if err != nil {
			ref.Skipped = bin + " not installed"
			continue
		}
		var samples []sample
		for range h.c.Runs {
			if err := h.prepare(cp.raw, dst); err != nil {
				return err
			}
			var s sample
			if tool == "cat" {
				f, err := os.Create(dst)
				if err != nil {
					return err
				}
				s, err = timeCmd(ctx, h.env, f, path, cp.raw)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
			} else if s, err = timeCmd(ctx, h.env, nil, path, "--sparse=always", cp.raw, dst); err != nil {
				return err
			}
			if err := durable(&s, dst); err != nil {
				return err
			}
			samples = append(samples, s)
		}
		ref.Result = summarize(samples, cp.size)
	}
	return nil
}

// QuickQemuLimit is Config.QemuLimit under Quick: every uncompressed
// qemu-img case but the empty-input ones finishes well within it, and the
// slow compressed ones show their ratio as a lower bound.
const QuickQemuLimit = 8 * time.Second

// slowRun is how long a run may take and still be repeated (quickSlowRun
// under Quick): qemu-img spends minutes on some empty 1 TiB inputs (vmdk,
// vhdx) and seconds compressing, and their median would not change the
// verdict against diskimg's sub-second runs.
const (
	slowRun      = 10.0 // seconds
	quickSlowRun = 3.0
)

func (h *harness) slow(s []sample) bool {
	limit := slowRun
	if h.c.Quick {
		limit = quickSlowRun
	}
	return len(s) > 0 && s[0].seconds > limit
}

// runCase times one conversion with both tools, alternating which goes
// first, and records it. The tool that opens a case alternates from case
// to case too: a case's first run follows another case's work, and with
// an odd number of runs the opener also gets one more first slot.
func (h *harness) runCase(ctx context.Context, cp *corpus, in string, o output, writers []string) error {
	row := &Case{Corpus: cp.name, Input: in, Output: o.name, Size: cp.size, Compressed: o.compressed}
	opener := len(h.rep.Cases) % 2 // 0: diskimg opens, 1: qemu-img
	h.rep.Cases = append(h.rep.Cases, row)
	src := cp.inputs[in]
	if !slices.Contains(writers, o.format) {
		row.Skipped = "no writer"
		h.logf("%s", row.logLine())
		return nil
	}
	qemuOK := h.qemu != "" && slices.Contains(qemuFormats, o.format)
	if !qemuOK {
		row.QemuNote = "unavailable"
		if h.qemu != "" {
			row.QemuNote = "qemu-img cannot write " + o.format
		}
	}
	dst := filepath.Join(h.work, "out."+o.format)
	defer os.Remove(dst)
	convArgs := append(append([]string{"convert", "-f", in, "-O", o.format}, o.args...), src, dst)
	var dsamples, qsamples []sample
	var derr, qerr error
	for r := range h.c.Runs {
		tools := []string{"diskimg", "qemu-img"}
		if (r+opener)%2 == 1 {
			tools[0], tools[1] = tools[1], tools[0]
		}
		for _, t := range tools {
			if t == "qemu-img" && (!qemuOK || qerr != nil || h.slow(qsamples)) || t == "diskimg" && (derr != nil || h.slow(dsamples)) {
				continue
			}
			if err := h.prepare(src, dst); err != nil {
				return err
			}
			bin := h.c.Diskimg
			if t == "qemu-img" {
				bin = h.qemu
			}
			runCtx, limit := ctx, time.Duration(0)
			if t == "qemu-img" {
				limit = h.c.QemuLimit
				if limit == 0 && h.c.Quick {
					limit = QuickQemuLimit
				}
			}
			var cancel context.CancelFunc = func() {}
			if limit > 0 {
				runCtx, cancel = context.WithTimeout(ctx, limit)
			}
			s, err := timeCmd(runCtx, h.env, nil, bin, convArgs...)
			cancel()
			if err == nil {
				err = durable(&s, dst)
			}
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				// Stopped at the limit: the time is at least that.
				s, err = sample{seconds: limit.Seconds(), capped: true}, nil
			}
			switch {
			case err == nil:
			case ctx.Err() != nil || noSpace(err):
				return err
			case t == "diskimg":
				derr = err
				continue
			default:
				qerr = err
				continue
			}
			if t == "diskimg" {
				dsamples = append(dsamples, s)
			} else {
				qsamples = append(qsamples, s)
			}
		}
	}
	if derr != nil {
		row.Diskimg = &Result{Error: derr.Error()}
	} else {
		row.Diskimg = summarize(dsamples, cp.size)
	}
	if qerr != nil {
		row.Qemu = &Result{Error: qerr.Error()}
	} else if qemuOK {
		row.Qemu = summarize(qsamples, cp.size)
	}
	if row.Diskimg.Error == "" && row.Qemu != nil && row.Qemu.Error == "" && row.Diskimg.Seconds > 0 {
		row.Ratio = row.Qemu.Seconds / row.Diskimg.Seconds
	}
	h.logf("%s", row.logLine())
	return nil
}
