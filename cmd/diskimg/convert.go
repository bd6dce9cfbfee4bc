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
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image to another format, copying only its data (like qemu-img convert)",
		ArgsUsage: "SRC DST|-",
		Flags: append(imageFlags(),
			&cli.StringFlag{Name: "O", Required: true, Usage: "output `FMT`: raw, qcow2, vmdk, vpc (vhd), vhdx, …"},
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

func runConvert(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("convert: expected SRC and DST, got %d arguments", c.NArg())
	}
	src, dst := c.Args().Get(0), c.Args().Get(1)
	w, err := format.LookupWriter(c.String("O"))
	if err != nil {
		return err
	}
	opts := convert.Options{Workers: c.Int("m"), Compress: c.Bool("c")}
	if s := c.String("o"); s != "" {
		if opts.WriterOptions, err = format.ParseOptions(s); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
	}
	if s := c.String("S"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("-S: %w", err)
		}
		opts.SparseSize = n
		if n == 0 {
			opts.SparseSize = convert.NoSparse
		}
	}
	switch c.String("checksum") {
	case "":
	case "sha256":
		opts.Checksum = true
	default:
		return fmt.Errorf("--checksum: %q is not supported (sha256)", c.String("checksum"))
	}
	if c.Bool("verify") && dst == convert.Stdout {
		return errors.New("--verify needs an output file, not standard output")
	}

	img, err := format.Open(src, c.String(formatFlag.Name), policyOf(c))
	if err != nil {
		return err
	}
	defer img.Close()
	in := img
	if s := c.String("resize"); s != "" {
		n, err := parseSize(s)
		if err != nil {
			return fmt.Errorf("--resize: %w", err)
		}
		if in, err = convert.Grow(img, n); err != nil {
			return err
		}
	}
	// Every option is checked before the output exists.
	if err := convert.Check(in, w, opts); err != nil {
		return err
	}
	out, err := convert.CreateOutput(dst, convert.OutputOptions{Force: c.Bool("force"), Sources: convert.SourceFiles(src, img)})
	if err != nil {
		return err
	}
	defer out.Abort()

	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.Bool("p") || term.IsTerminal(int(os.Stderr.Fd())) {
		bar := newBar(in.Size(), c)
		defer bar.Finish()
		opts.Progress = func(done, total int64) { bar.Set64(done) }
	}
	res, err := convert.Convert(ctx, in, w, out.Target, opts)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("convert: interrupted; %s not written", dst)
		}
		return fmt.Errorf("convert: %w", err)
	}
	if c.Bool("verify") {
		if err := verifyOutput(ctx, in, out.TempName(), w.Name); err != nil {
			return err
		}
	}
	if err := out.Commit(); err != nil {
		return err
	}
	if opts.Checksum {
		report := c.App.Writer
		if dst == convert.Stdout {
			report = c.App.ErrWriter
		}
		fmt.Fprintf(report, "%s  %s\n", hex.EncodeToString(res.SHA256), dst)
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

func newBar(total int64, c *cli.Context) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(c.App.ErrWriter),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionSetDescription(filepath.Base(c.Args().Get(1))),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.App.ErrWriter) }),
	)
}
