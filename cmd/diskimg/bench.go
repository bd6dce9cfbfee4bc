package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/bench"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "time diskimg convert against qemu-img convert on a generated corpus",
		Description: "Generates disks (random data in a sparse disk, dense random data, a GPT disk with\n" +
			"EFI FAT32 and ext4 holding files, an empty 1 TiB disk) in every input format, then\n" +
			"times `diskimg convert` and `qemu-img convert` for each input × output format,\n" +
			"alternating the two, and prints median time, MB/s and peak RSS per case, with cat\n" +
			"and cp --sparse of the same bytes as reference. Without qemu-img, diskimg alone is timed.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Usage: "make the work directory in `DIR` (default: the system temp dir)"},
			&cli.IntFlag{Name: "runs", Usage: "timed runs per tool and case; the median is reported (default 2 with --quick, else 5)"},
			&cli.BoolFlag{Name: "quick", Usage: "smaller corpus, every input to raw and raw to every output (a few minutes)"},
			outputFlag,
			&cli.StringFlag{Name: "formats", Usage: "comma-separated `FMTS` to limit inputs and outputs to (raw is always included)"},
			&cli.BoolFlag{Name: "keep", Usage: "keep the work directory and its corpus"},
			&cli.DurationFlag{Name: "qemu-limit", Usage: "stop a qemu-img run after `DURATION` and report its time as a lower bound (default: 8s with --quick, else none)"},
			&cli.BoolFlag{Name: "drop-caches", Usage: "empty the page cache before each run (root) instead of reading the input first"},
			&cli.BoolFlag{Name: "sparsify", Usage: "instead: time convert --sparsify against virt-sparsify on an ext4 disk holding deleted files (4 GiB with 3 GiB deleted; 1 GiB with --quick)"},
			&cli.BoolFlag{Name: "tiny", Hidden: true, Usage: "a corpus of a few MiB, for tests"},
			&cli.BoolFlag{Name: "object-storage", Usage: "instead: time converting into a bucket in one pass against qemu-img to a local file then an upload; a local SeaweedFS unless --endpoint"},
			&cli.StringFlag{Name: "bucket", Usage: "with --object-storage and --endpoint: the `BUCKET` to write to (objects are removed afterwards)"},
			endpointFlag, pathStyleFlag,
		},
		Action: runBenchCmd,
	}
}

func runBenchCmd(c *cli.Context) error {
	if c.NArg() != 0 {
		return fmt.Errorf("bench: unexpected argument %q", c.Args().First())
	}
	mode, err := outputMode(c)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: finding the diskimg binary: %w", err)
	}
	cfg := bench.Config{
		Diskimg:    self,
		Dir:        c.String("dir"),
		Runs:       c.Int("runs"),
		Quick:      c.Bool("quick"),
		Keep:       c.Bool("keep"),
		DropCaches: c.Bool("drop-caches"),
		QemuLimit:  c.Duration("qemu-limit"),
		Log:        c.App.ErrWriter,
	}
	if cfg.Runs == 0 {
		cfg.Runs = 5
		if cfg.Quick {
			cfg.Runs = 2
		}
	}
	if c.Bool("tiny") {
		cfg.Sizes = bench.TinySizes
	}
	if s := c.String("formats"); s != "" {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				cfg.Formats = append(cfg.Formats, f)
			}
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.Bool("object-storage") {
		return runObjectBench(c, ctx, cfg, mode)
	}
	if c.Bool("sparsify") {
		rep, err := bench.RunSparsify(ctx, cfg)
		if err != nil {
			return err
		}
		if mode == "json" {
			return writeJSON(c.App.Writer, rep)
		}
		return rep.WriteTable(c.App.Writer)
	}
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return benchError(ctx, err)
	}
	if mode == "json" {
		return rep.WriteJSON(c.App.Writer)
	}
	if err := rep.WriteTable(c.App.Writer); err != nil {
		return err
	}
	if rep.WorkDir != "" {
		fmt.Fprintf(c.App.Writer, "work directory kept: %s\n", rep.WorkDir)
	}
	return nil
}

// runObjectBench runs the object-storage cases (bench.RunObject).
func runObjectBench(c *cli.Context, ctx context.Context, cfg bench.Config, mode string) error {
	oc := bench.ObjectConfig{Diskimg: cfg.Diskimg, Endpoint: c.String(endpointFlag.Name), PathStyle: c.Bool(pathStyleFlag.Name),
		Bucket: c.String("bucket"), Dir: cfg.Dir, Runs: cfg.Runs, Sizes: cfg.Sizes, Log: cfg.Log}
	if oc.Sizes == (bench.Sizes{}) {
		oc.Sizes = bench.FullSizes
		if cfg.Quick {
			oc.Sizes = bench.QuickSizes
		}
	}
	rep, err := bench.RunObject(ctx, oc)
	if err != nil {
		return benchError(ctx, err)
	}
	if mode == "json" {
		return writeJSON(c.App.Writer, rep)
	}
	return rep.WriteTable(c.App.Writer)
}

// benchError says an interrupted run removed its work directory.
func benchError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("bench: interrupted; work directory removed")
	}
	return err
}
