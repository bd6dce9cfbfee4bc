package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image to another format, copying only its data (like qemu-img convert)",
		ArgsUsage: "SRC|- DST|-   or   --cloud NAME SRC OUTDIR",
		Flags: append(imageFlags(),
			&cli.StringFlag{Name: "O", Usage: "output `FMT`: raw, qcow2, vmdk, vpc (vhd), vhdx, zvhd2, zvhd, …"},
			&cli.StringFlag{Name: "cloud", Usage: "plan the upload for cloud `NAME` (see plan), convert to what it needs into OUTDIR, then re-check the output"},
			&cli.StringFlag{Name: "upload-format", Usage: "with --cloud: upload in this `FMT` instead of the one the plan chooses"},
			&cli.StringFlag{Name: "disk", Value: "system", Usage: "with --cloud: the image is a system or data disk"},
			&cli.StringFlag{Name: "o", Usage: "output format `OPTIONS`, qemu-img's names: subformat=, cluster_size=, compression_type=, compat=, force_size=, block_size=, …"},
			&cli.BoolFlag{Name: "c", Usage: "compress the output (qcow2, vmdk streamOptimized)"},
			&cli.BoolFlag{Name: "p", Usage: "show a progress bar (default when stderr is a terminal)"},
			&cli.IntFlag{Name: "m", Usage: "`N` parallel read/compress workers (default: number of CPUs)"},
			&cli.StringFlag{Name: "S", Usage: "`SIZE` of a zero run that becomes a hole (default 4k; 0 writes every byte)"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite DST if it exists"},
			&cli.StringFlag{Name: "checksum", Usage: "print the `ALGO` (sha256) digest of the written file"},
			&cli.BoolFlag{Name: "verify", Usage: "re-read the output and compare it with the source"},
			&cli.StringFlag{Name: "resize", Usage: "grow the disk to `SIZE` (bytes, or with K/M/G/T) while converting"},
		),
		Action: runConvert,
	}
}

// conversion is one convert job, from the command line or a cloud plan.
type conversion struct {
	src, dst string
	format   string // output format
	opts     convert.Options
	resize   int64 // grow the disk to this size; 0 keeps it
	verify   bool
}

func runConvert(c *cli.Context) error {
	if c.String("cloud") != "" {
		return runCloudConvert(c)
	}
	if c.NArg() != 2 {
		return fmt.Errorf("convert: expected SRC and DST, got %d arguments", c.NArg())
	}
	if c.String("O") == "" {
		return errors.New("convert: -O FMT is required")
	}
	job := conversion{src: c.Args().Get(0), dst: c.Args().Get(1), format: c.String("O"), verify: c.Bool("verify")}
	job.opts = convert.Options{Workers: c.Int("m"), Compress: c.Bool("c")}
	var err error
	if s := c.String("o"); s != "" {
		if job.opts.WriterOptions, err = format.ParseOptions(s); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
	}
	if s := c.String("S"); s != "" {
		n, err := parseSize(s)
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
		if job.resize, err = parseSize(s); err != nil {
			return fmt.Errorf("--resize: %w", err)
		}
	}
	_, err = runConversion(c, job)
	return err
}

// runConversion converts job.src to job.dst: options are checked before
// the output exists, the output appears only when complete and (with
// verify) identical to the source, and an interrupt leaves nothing.
func runConversion(c *cli.Context, job conversion) (*convert.Result, error) {
	if job.verify && job.dst == convert.Stdout {
		return nil, errors.New("--verify needs an output file, not standard output")
	}
	w, err := format.LookupWriter(job.format)
	if err != nil {
		return nil, err
	}
	img, err := openSource(job.src, job.dst, c)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	in := img
	if job.resize != 0 {
		if in, err = convert.Grow(img, job.resize); err != nil {
			return nil, err
		}
	}
	// Every option is checked before the output exists.
	if err := convert.Check(in, w, job.opts); err != nil {
		return nil, err
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := convert.CreateOutput(job.dst, convert.OutputOptions{Force: c.Bool("force"), Sources: convert.SourceFiles(job.src, img),
		Remote: remoteOptions(c, ""), SizeHint: outputBound(in, w, job.opts), Context: ctx})
	if err != nil {
		return nil, err
	}
	defer out.Abort()

	opts := job.opts
	if c.Bool("p") || term.IsTerminal(int(os.Stderr.Fd())) {
		bar := newBar(in.Size(), filepath.Base(job.dst), c)
		defer bar.Finish()
		opts.Progress = func(done, total int64) { bar.Set64(done) }
	}
	res, err := convert.Convert(ctx, in, w, out.Target, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("convert: interrupted; %s not written", job.dst)
		}
		return nil, fmt.Errorf("convert: %w", err)
	}
	if job.verify && !out.Uploaded() {
		if err := verifyOutput(ctx, in, out.TempName(), w.Name); err != nil {
			return nil, err
		}
	}
	if err := out.Commit(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("convert: interrupted; %s not written", job.dst)
		}
		return nil, err
	}
	if out.Uploaded() {
		// An object exists only once complete: verify it by reading it
		// back by ranges, and remove it if it differs.
		res.SHA256 = out.SHA256
		if job.verify {
			if err := verifyUpload(c, ctx, in, job.dst, w.Name); err != nil {
				return nil, err
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

// outputBound is an upper bound of the output's length, which sets an
// upload's part size: qemu-img measure's required size with a margin, or
// the virtual size and then some when the format cannot be measured.
func outputBound(src format.Image, w *format.WriterFormat, opts convert.Options) int64 {
	if m, err := convert.Measure(src, 0, w, opts); err == nil && m.Required > 0 {
		return m.Required + m.Required/16 + 64<<20
	}
	return src.Size() + src.Size()/16 + 64<<20
}

// openSource opens the image to convert; "-" reads standard input, spooled
// next to the output when it is not a file. An image from a stream may name
// no other file, whatever the policy flags say.
func openSource(src, dst string, c *cli.Context) (format.Image, error) {
	dir := ""
	if dst != convert.Stdout && !remote.IsURL(dst) {
		dir = filepath.Dir(dst)
	}
	if src != convert.Stdin {
		return openImageIn(c, src, c.String(formatFlag.Name), policyOf(c), dir)
	}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		return nil, errors.New("standard input is a terminal: pipe or redirect an image into it")
	}
	f, err := convert.OpenStdin(os.Stdin, dir)
	if err != nil {
		return nil, err
	}
	policy := policyOf(c)
	policy.Untrusted = true
	img, err := format.NewOpener(policy).OpenImage(f, c.String(formatFlag.Name))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("standard input: %w", err)
	}
	return img, nil
}

// verifyUpload reads the uploaded object back by ranges and compares it
// with the source; an object that differs is removed.
func verifyUpload(c *cli.Context, ctx context.Context, src format.Image, name, fmtName string) error {
	out, err := openImage(c, name, fmtName, format.Policy{Untrusted: true})
	if err == nil {
		defer out.Close()
		var same bool
		var off int64
		same, off, err = convert.Compare(ctx, src, out)
		if err == nil && !same {
			err = fmt.Errorf("the object differs from the source at offset %d", off)
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

// verifyOutput re-reads what was written and compares it with the source.
func verifyOutput(ctx context.Context, src format.Image, path, fmtName string) error {
	out, err := format.Open(path, fmtName, format.Policy{Untrusted: true})
	if err != nil {
		return fmt.Errorf("verify: reopening the output: %w", err)
	}
	defer out.Close()
	same, off, err := convert.Compare(ctx, src, out)
	switch {
	case err != nil:
		return fmt.Errorf("verify: %w", err)
	case !same:
		return fmt.Errorf("verify: output differs from the source at offset %d", off)
	}
	return nil
}

func newBar(total int64, name string, c *cli.Context) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(c.App.ErrWriter),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionSetDescription(name),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.App.ErrWriter) }),
	)
}
