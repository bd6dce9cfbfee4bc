package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
)

// Flags shared by every command that opens an image.
var (
	formatFlag    = &cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "image format (`FMT`: raw, qcow2, vmdk, vpc, vhdx); probed when omitted"}
	outputFlag    = &cli.StringFlag{Name: "output", Value: "human", Usage: "output `FORMAT`: human or json"}
	outsideFlag   = &cli.BoolFlag{Name: "allow-backing-outside", Usage: "follow backing files, extents and parents outside the image's directory (absolute paths, ..)"}
	noBackingFlag = &cli.BoolFlag{Name: "no-backing", Usage: "open no backing file: ranges the image does not hold read as zeros"}
	untrustedFlag = &cli.BoolFlag{Name: "untrusted", Usage: "open no file other than the image itself"}
)

func imageFlags() []cli.Flag {
	return append([]cli.Flag{formatFlag, outsideFlag, noBackingFlag, untrustedFlag}, remoteFlags()...)
}

func policyOf(c *cli.Context) format.Policy {
	return format.Policy{
		AllowOutside: c.Bool(outsideFlag.Name),
		NoBacking:    c.Bool(noBackingFlag.Name),
		Untrusted:    c.Bool(untrustedFlag.Name),
	}
}

// openArg opens the single FILE argument of a command.
func openArg(c *cli.Context) (string, format.Image, error) {
	if c.NArg() != 1 {
		return "", nil, fmt.Errorf("%s: expected one FILE argument, got %d", c.Command.Name, c.NArg())
	}
	path := c.Args().First()
	img, err := openImage(c, path, c.String(formatFlag.Name), policyOf(c))
	return path, img, err
}

func outputMode(c *cli.Context) (string, error) {
	switch o := c.String(outputFlag.Name); o {
	case "human", "json":
		return o, nil
	default:
		return "", fmt.Errorf("--output: %q is not human or json", o)
	}
}
