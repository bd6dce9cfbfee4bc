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
	return &cli.Command{
		Name:      "compare",
		Usage:     "compare the guest contents of two images (exit 0 identical, 1 different, 2 error; like qemu-img compare)",
		ArgsUsage: "A B",
		Flags:     append(imageFlags(), &cli.StringFlag{Name: "F", Usage: "format `FMT` of the second image"}),
		Action: func(c *cli.Context) error {
			if err := runCompare(c); err != nil {
				var ee *exitError
				if asExit(err, &ee) {
					return err
				}
				return &exitError{code: exitCompareError, err: err}
			}
			return nil
		},
	}
}

func runCompare(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("compare: expected two images, got %d arguments", c.NArg())
	}
	a, err := openImage(c, c.Args().Get(0), c.String(formatFlag.Name), policyOf(c))
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := openImage(c, c.Args().Get(1), c.String("F"), policyOf(c))
	if err != nil {
		return err
	}
	defer b.Close()
	same, off, err := convert.Compare(c.Context, a, b)
	if err != nil {
		return err
	}
	if !same {
		fmt.Fprintf(c.App.Writer, "Content mismatch at offset %d!\n", off)
		return &exitError{code: exitDifferent}
	}
	fmt.Fprintln(c.App.Writer, "Images are identical.")
	return nil
}
