package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
)

func measureCommand() *cli.Command {
	return imageCommand("measure", "[SRC]", "compute the size a conversion's output needs (like qemu-img measure)", runMeasure,
		append(outputFormatFlags(),
			outputFlag,
			&cli.StringFlag{Name: "size", Usage: "measure a new empty image of `SIZE` instead of SRC"},
			snapshotFlag)...)
}

func runMeasure(c *cli.Context) error {
	mode, err := outputMode(c)
	if err != nil {
		return err
	}
	w, err := format.LookupWriter(c.String("O"))
	if err != nil {
		return err
	}
	opts := convert.Options{Compress: c.Bool("c")}
	if s := c.String("o"); s != "" {
		if opts.WriterOptions, err = format.ParseOptions(s); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
		if wantsHelp(opts.WriterOptions) {
			return writeOptionsHelp(c.App.Writer, w.Name)
		}
	}
	var src format.Image
	var size int64
	switch {
	case c.String("size") != "" && c.NArg() == 0:
		if size, err = format.ParseSize(c.String("size")); err != nil {
			return fmt.Errorf("--size: %w", err)
		}
	case c.String("size") == "" && c.NArg() == 1:
		_, img, err := openArg(c)
		if err != nil {
			return err
		}
		defer img.Close()
		if err := loadSnapshot(c, img); err != nil {
			return err
		}
		src = img
	default:
		return fmt.Errorf("measure: give either SRC or --size")
	}
	m, err := convert.Measure(src, size, w, opts)
	if err != nil {
		return err
	}
	if mode == "json" {
		return writeJSON(c.App.Writer, m)
	}
	fmt.Fprintf(c.App.Writer, "required size: %d\nfully allocated size: %d\n", m.Required, m.FullyAllocated)
	return nil
}
