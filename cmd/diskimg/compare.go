package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/convert"
)

// compare's exit codes, as qemu-img's.
const (
	exitDifferent    = 1
	exitCompareError = 2
)

func compareCommand() *cli.Command {
	return imageCommand("compare", "A B", "compare the guest contents of two images (exit 0 identical, 1 different, 2 error; like qemu-img compare)",
		func(c *cli.Context) error {
			if err := runCompare(c); err != nil {
				var ee *exitError
				if asExit(err, &ee) {
					return err
				}
				return &exitError{code: exitCompareError, err: err}
			}
			return nil
		},
		&cli.StringFlag{Name: "F", Usage: "format `FMT` of the second image"},
		&cli.BoolFlag{Name: "s", Usage: "strict: images of different sizes, or whose ranges differ in allocation (data, zero, unallocated), differ"},
		quietFlag, srcCacheFlag)
}

// runCompare compares as qemu-img compare does: without -s images of
// different sizes are compared on their common part, then the rest of the
// larger one must read as zeros (with qemu-img's warning once the common
// part matched); with -s the sizes and every range's allocation must match
// too.
func runCompare(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("compare: expected two images, got %d arguments", c.NArg())
	}
	a, err := openImage(c, c.Args().Get(0), c.String(formatFlag.Name), "")
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := openImage(c, c.Args().Get(1), c.String("F"), "")
	if err != nil {
		return err
	}
	defer b.Close()
	say := func(format string, args ...any) {
		if !c.Bool(quietFlag.Name) {
			fmt.Fprintf(c.App.Writer, format, args...)
		}
	}
	strict := c.Bool("s")
	if strict && a.Size() != b.Size() {
		say("Strict mode: Image size mismatch!\n")
		return &exitError{code: exitDifferent}
	}
	statusAt := int64(-1)
	if strict {
		if statusAt, err = convert.StatusMismatch(c.Context, a, b); err != nil {
			return err
		}
	}
	same, off, err := convert.Compare(c.Context, a, b)
	if err != nil {
		return err
	}
	// qemu-img checks a range's allocation before its bytes.
	if statusAt >= 0 && (same || statusAt <= off) {
		say("Strict mode: Offset %d block status mismatch!\n", statusAt)
		return &exitError{code: exitDifferent}
	}
	if a.Size() != b.Size() && (same || off >= min(a.Size(), b.Size())) {
		say("Warning: Image size mismatch!\n")
	}
	if !same {
		say("Content mismatch at offset %d!\n", off)
		return &exitError{code: exitDifferent}
	}
	say("Images are identical.\n")
	return nil
}
