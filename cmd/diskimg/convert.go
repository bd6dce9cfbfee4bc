package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
	"github.com/diskimg/diskimg/inspect"
)

func convertCommand() *cli.Command {
	return imageCommand("convert", "SRC|- DST|-   or   --cloud NAME SRC OUTDIR", "convert an image to another format, copying only its data (like qemu-img convert)", runConvert, append(outputFormatFlags(),
		&cli.StringFlag{Name: "cloud", Usage: "plan the upload for cloud `NAME` (see plan), convert to what it needs into OUTDIR (created if missing), then re-check the output"},
		&cli.StringFlag{Name: "upload-format", Usage: "with --cloud: upload in this `FMT` instead of the one the plan chooses"},
		&cli.StringFlag{Name: "disk", Value: "system", Usage: "with --cloud: the image is a system or data disk"},
		&cli.StringFlag{Name: "boot-mode", Usage: "with --cloud: the image boots with `MODE` bios or uefi (see plan)"},
		&cli.BoolFlag{Name: "p", Usage: "show a progress bar", DefaultText: "on when stderr is a terminal"},
		quietFlag,
		&cli.IntFlag{Name: "m", Usage: "`N` parallel read/compress workers", DefaultText: "number of CPUs"},
		&cli.StringFlag{Name: "S", Usage: "`SIZE` of a zero run that becomes a hole (0 writes every byte)", DefaultText: "4k"},
		&cli.BoolFlag{Name: "n", Usage: "write into the existing DST (a raw file or block device) in place instead of creating it; ranges the image has as zeros are zeroed"},
		&cli.BoolFlag{Name: "target-is-zero", Usage: "with -n: DST reads as zeros already, so zero ranges are not written"},
		&cli.StringFlag{Name: "t", Value: "writeback", Usage: "cache `MODE` of the output: writeback (page cache, fsync at the end), unsafe (no fsync), writethrough (O_DSYNC), none (O_DIRECT, fsync at the end), directsync (O_DIRECT|O_DSYNC)"},
		srcCacheFlag,
		&cli.BoolFlag{Name: "W", Usage: "accepted for qemu-img's scripts: the output is always written in order"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite DST if it exists"},
		&cli.StringFlag{Name: "checksum", Usage: "print the `ALGO` (sha256) digest of the written file"},
		&cli.BoolFlag{Name: "verify", Usage: "before the output gets its name, re-read it: its guest contents must equal the source's (qemu-img compare) and its structure must pass diskimg check with no corruption, leak, check error or warning (qemu-img check's refcounts and leaks for qcow2, both grain directories for vmdk, footer copy and BAT for vpc, headers, log, region tables, BAT and metadata for vhdx); a failed output is removed, and -n reports it and exits non-zero"},
		&cli.StringFlag{Name: "resize", Usage: "grow the disk to `SIZE` (bytes, or with K/M/G/T) while converting"},
		sparsifyFlag(),
		snapshotFlag)...)
}

// outputFormatFlags are -O, -o and -c, which measure takes as convert
// does.
func outputFormatFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "O", Value: "raw", Usage: "output `FMT`: " + strings.Join(writableFormats(), ", ")},
		&cli.StringFlag{Name: "o", Usage: "output format `OPTIONS`, qemu-img's names (subformat=, cluster_size=, preallocation=, …); -o help lists the output format's"},
		&cli.BoolFlag{Name: "c", Usage: "compress the output (qcow2, vmdk streamOptimized)"},
	}
}

// writableFormats lists the output formats, from the writer registry.
func writableFormats() []string {
	var names []string
	for _, w := range format.WriterFormats() {
		names = append(names, w.Name)
	}
	return names
}

// conversion is one convert job, from the command line or a cloud plan.
type conversion struct {
	src, dst string
	format   string // output format
	opts     convert.Options
	resize   int64 // grow the disk to this size; 0 keeps it
	verify   bool
	out      convert.OutputOptions    // Force, Cache, InPlace, TargetIsZero
	sparsify *inspect.SparsifyOptions // nil: copy free filesystem space too
}

func runConvert(c *cli.Context) error {
	var writerOpts map[string]string
	if s := c.String("o"); s != "" {
		var err error
		if writerOpts, err = format.ParseOptions(s); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
		if wantsHelp(writerOpts) {
			return writeOptionsHelp(c.App.Writer, c.String("O"))
		}
	}
	if c.String("cloud") != "" {
		return runCloudConvert(c)
	}
	if c.NArg() != 2 {
		return fmt.Errorf("convert: expected SRC and DST, got %d arguments", c.NArg())
	}
	job := conversion{src: c.Args().Get(0), dst: c.Args().Get(1), format: c.String("O"), verify: c.Bool("verify"), sparsify: sparsifyOptions(c)}
	job.opts = convert.Options{Workers: c.Int("m"), Compress: c.Bool("c"), WriterOptions: writerOpts}
	var err error
	if job.out, err = outputOptions(c); err != nil {
		return err
	}
	if job.out.InPlace {
		// As qemu-img: the target exists, so there is nothing to create.
		if len(writerOpts) > 0 {
			return errors.New("convert: -o has no effect when skipping image creation (-n)")
		}
		if w, err := format.LookupWriter(job.format); err == nil && w.Name != "raw" {
			return fmt.Errorf("convert -n: only raw targets can be written in place, not %s (diskimg writes other formats as new files)", w.Name)
		}
	}
	if s := c.String("S"); s != "" {
		n, err := format.ParseSize(s)
		if err != nil {
			return fmt.Errorf("-S: %w", err)
		}
		job.opts.SparseSize = n
		if n == 0 {
			job.opts.SparseSize = convert.NoSparse
		}
	}
	switch c.String("checksum") {
	case "":
	case "sha256":
		job.opts.Checksum = true
	default:
		return fmt.Errorf("--checksum: %q is not supported (sha256)", c.String("checksum"))
	}
	if s := c.String("resize"); s != "" {
		if job.resize, err = format.ParseSize(s); err != nil {
			return fmt.Errorf("--resize: %w", err)
		}
	}
	_, err = runConversion(c, job)
	return err
}

// outputOptions reads the options that say how the output is opened.
func outputOptions(c *cli.Context) (convert.OutputOptions, error) {
	o := convert.OutputOptions{Force: c.Bool("force"), InPlace: c.Bool("n"), TargetIsZero: c.Bool("target-is-zero")}
	if o.TargetIsZero && !o.InPlace {
		return o, errors.New("convert: --target-is-zero requires use of -n flag")
	}
	var err error
	if o.Cache, err = convert.ParseCache(c.String("t")); err != nil {
		return o, fmt.Errorf("-t: %w", err)
	}
	return o, nil
}

// wantsHelp reports "-o help" (or "-o ?"), which lists the options
// instead of converting.
func wantsHelp(opts map[string]string) bool {
	_, help := opts["help"]
	_, q := opts["?"]
	return help || q
}

// writeOptionsHelp lists the -o options of an output format, as qemu-img
// convert -o help does.
func writeOptionsHelp(w io.Writer, name string) error {
	wf, err := format.LookupWriter(name)
	if err != nil {
		return err
	}
	if len(wf.Options) == 0 {
		fmt.Fprintf(w, "%s takes no options.\n", wf.Name)
		return nil
	}
	fmt.Fprintf(w, "Supported %s options:\n", wf.Name)
	for _, o := range wf.Options {
		fmt.Fprintf(w, "  %-21s - %s\n", o.Name, o.Help)
	}
	return nil
}

// runConversion converts job.src to job.dst: options are checked before
// the output exists, the output appears only when complete and (with
// verify) identical to the source, and an interrupt leaves nothing (in
// place, -n, the target is partly written).
func runConversion(c *cli.Context, job conversion) (*convert.Result, error) {
	if job.verify && job.dst == convert.Stdout {
		return nil, errors.New("--verify needs an output file, not standard output")
	}
	if job.dst == convert.Stdout && term.IsTerminal(int(os.Stdout.Fd())) {
		return nil, errors.New("standard output is a terminal: redirect the image to a file or a pipe")
	}
	w, err := format.LookupWriter(job.format)
	if err != nil {
		return nil, err
	}
	// From here an interrupt cleans up and exits with 128 + its number;
	// reading a pipe into its spool file stops too.
	parent := c.Context
	ctx, interrupted, stop := notifyInterrupt(parent)
	defer stop()
	c.Context = ctx // for openImage's spooling of standard input
	defer func() { c.Context = parent }()
	img, err := openImage(c, job.src, c.String(formatFlag.Name), spoolDirFor(job.dst))
	if err != nil {
		return nil, interruptedOr(interrupted, job.dst+" not written", err)
	}
	defer img.Close()
	if err := loadSnapshot(c, img); err != nil {
		return nil, err
	}
	in := img
	if job.sparsify != nil {
		// --verify compares with this: free space reads as zeros.
		if in, err = sparsifySource(c, img, *job.sparsify); err != nil {
			return nil, err
		}
	}
	if job.resize != 0 {
		if in, err = convert.Grow(in, job.resize); err != nil {
			return nil, err
		}
	}
	// Every option is checked before the output exists.
	if err := convert.Check(in, w, job.opts); err != nil {
		return nil, err
	}
	oo := job.out
	oo.Sources, oo.Size = convert.SourceFiles(job.src, img), in.Size()
	oo.Remote, oo.SizeHint, oo.Context = remoteOptions(c, ""), outputBound(in, w, job.opts), ctx
	out, err := convert.CreateOutput(job.dst, oo)
	if err != nil {
		return nil, err
	}
	defer out.Abort()

	opts := job.opts
	opts.Name = out.Name()
	var bar *progressbar.ProgressBar
	if !c.Bool(quietFlag.Name) && (c.Bool("p") || term.IsTerminal(int(os.Stderr.Fd()))) {
		bar = newBar(in.Size(), filepath.Base(job.dst), c)
		opts.Progress = func(done, total int64) { bar.Set64(done) }
	}
	res, err := convert.Convert(ctx, in, w, out.Target, opts)
	if err != nil {
		err = fmt.Errorf("convert: %w", err)
	} else if job.verify && !out.Uploaded() {
		err = verifyOutput(ctx, in, out, w.Name, oo.InPlace)
	}
	if err == nil && ctx.Err() != nil {
		// A signal that came as the last bytes went out: no commit.
		err = ctx.Err()
	}
	if err == nil {
		// Convert checked its source; in may wrap img (sparsify,
		// resize), and the verify pass read it again.
		err = format.Unchanged(img)
	}
	if bar != nil {
		if err == nil {
			bar.Finish()
		} else {
			bar.Exit() // where it stopped, not 100%
		}
	}
	if err != nil {
		what := job.dst + " not written"
		if oo.InPlace {
			what = job.dst + " partly written"
		}
		return nil, interruptedOr(interrupted, what, err)
	}
	if err := out.Commit(); err != nil {
		return nil, interruptedOr(interrupted, job.dst+" not written", err)
	}
	if out.Uploaded() {
		// An object exists only once complete: verify it by reading it
		// back by ranges, and remove it if it differs.
		res.SHA256 = out.SHA256
		if job.verify {
			if err := verifyUpload(c, ctx, in, img, job.dst, w.Name); err != nil {
				return nil, interruptedOr(interrupted, job.dst+" removed", err)
			}
		}
	}
	if opts.Checksum || out.Uploaded() {
		report := c.App.Writer
		if job.dst == convert.Stdout {
			report = c.App.ErrWriter
		}
		fmt.Fprintf(report, "%s  %s\n", hex.EncodeToString(res.SHA256), job.dst)
	}
	return res, nil
}

// interruptedOr returns err, or, after an interrupt, the error that exits
// with 128 + the signal's number, saying what became of the output.
func interruptedOr(interrupted func() syscall.Signal, what string, err error) error {
	sig := interrupted()
	if sig == 0 {
		return err
	}
	return &exitError{code: 128 + int(sig), err: fmt.Errorf("convert: interrupted (%v); %s", sig, what)}
}

// notifyInterrupt returns a context cancelled by SIGINT or SIGTERM and a
// function telling which signal came (0 for none), so the command can
// clean up and exit with 128 + the signal's number, as shells expect.
func notifyInterrupt(parent context.Context) (context.Context, func() syscall.Signal, func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var got atomic.Int32
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			got.Store(int32(s.(syscall.Signal)))
			cancel()
		case <-done:
		}
	}()
	stop := func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
	return ctx, func() syscall.Signal { return syscall.Signal(got.Load()) }, stop
}

// outputBound is an upper bound of the output's length, which sets an
// upload's part size: qemu-img measure's required size with a margin, or
// the virtual size and then some when the format cannot be measured.
func outputBound(src format.Image, w *format.WriterFormat, opts convert.Options) int64 {
	if m, err := convert.Measure(src, 0, w, opts); err == nil && m.Required > 0 {
		return m.Required + m.Required/16 + 64<<20
	}
	return src.Size() + src.Size()/16 + 64<<20
}

// verifyUpload reads the uploaded object back by ranges and compares it
// with the source src, as opened (opened: src may wrap it); an object
// that differs, or whose source changed meanwhile, is removed.
func verifyUpload(c *cli.Context, ctx context.Context, src, opened format.Image, name, fmtName string) error {
	out, err := openRemoteImage(c, name, fmtName, format.Policy{Untrusted: true}, "")
	if err == nil {
		defer out.Close()
		var same bool
		var off int64
		same, off, err = convert.Compare(ctx, src, out)
		if err == nil && !same {
			err = fmt.Errorf("the object differs from the source at offset %d", off)
		}
		if err == nil {
			err = format.Unchanged(opened)
		}
	}
	if err != nil {
		if rerr := remote.Remove(context.Background(), name, remoteOptions(c, "")); rerr != nil {
			return fmt.Errorf("verify: %w; removing %s: %v", err, name, rerr)
		}
		return fmt.Errorf("verify: %w; %s removed", err, name)
	}
	return nil
}

// verifyOutput re-reads what was written before it gets its name: it must
// read as the source and pass the format's structural check (see
// convert.Verify); in place (-n), only the part of the target the image
// was written to is compared.
func verifyOutput(ctx context.Context, src format.Image, out *convert.Output, fmtName string, inPlace bool) error {
	f, err := out.ReadBack()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return convert.Verify(ctx, src, f, fmtName, inPlace)
}

func newBar(total int64, name string, c *cli.Context) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(c.App.ErrWriter),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionSetDescription(name),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.App.ErrWriter) }),
	)
}
