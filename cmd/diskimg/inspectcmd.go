package main

import (
	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/inspect"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show the partitions, filesystems and operating system inside an image",
		ArgsUsage: "FILE",
		Flags: append(imageFlags(), outputFlag,
			&cli.BoolFlag{Name: "no-os", Usage: "skip operating system detection"}),
		Action: runInspect,
	}
}

func runInspect(c *cli.Context) error {
	mode, err := outputMode(c)
	if err != nil {
		return err
	}
	_, img, err := openArg(c)
	if err != nil {
		return err
	}
	defer img.Close()
	rep, err := inspect.Inspect(img, inspect.Options{NoOS: c.Bool("no-os")})
	if err != nil {
		return err
	}
	if mode == "json" {
		return rep.WriteJSON(c.App.Writer)
	}
	return rep.WriteText(c.App.Writer)
}
