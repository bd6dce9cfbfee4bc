package main

import (
	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/inspect"
)

func inspectCommand() *cli.Command {
	return imageCommand("inspect", "FILE", "show the partitions, filesystems and operating system inside an image",
		withImage(runInspect), outputFlag, &cli.BoolFlag{Name: "no-os", Usage: "skip operating system detection"})
}

func runInspect(c *cli.Context, mode, _ string, img format.Image) error {
	rep, err := inspect.Inspect(img, inspect.Options{NoOS: c.Bool("no-os")})
	if err != nil {
		return err
	}
	if mode == "json" {
		return rep.WriteJSON(c.App.Writer)
	}
	return rep.WriteText(c.App.Writer)
}
