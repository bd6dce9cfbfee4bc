package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
)

// Flags shared by every command that opens an image.
var (
	formatFlag    = &cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "image format (`FMT`: " + strings.Join(readableFormats(), ", ") + "); probed when omitted"}
	outputFlag    = &cli.StringFlag{Name: "output", Value: "human", Usage: "output `FORMAT`: human or json"}
	outsideFlag   = &cli.BoolFlag{Name: "allow-backing-outside", Usage: "follow backing files, extents and parents outside the image's directory (absolute paths, ..)"}
	noBackingFlag = &cli.BoolFlag{Name: "no-backing", Usage: "open no backing file: ranges the image does not hold read as zeros"}
	untrustedFlag = &cli.BoolFlag{Name: "untrusted", Usage: "open no file other than the image itself"}
	parentFlag    = &cli.StringSliceFlag{Name: "parent", Usage: "an image to take as the parent of a differencing image that names its parent by identity (VirtualBox VDI: by UUID) or whose stored paths do not lead to it (Hyper-V VHDX); repeat for a chain", TakesFile: true}
	// diskimg takes no locks on images, so qemu-img's -U changes nothing.
	forceShareFlag = &cli.BoolFlag{Name: "force-share", Aliases: []string{"U"}, Usage: "accepted for qemu-img's scripts: diskimg takes no image locks"}
	quietFlag      = &cli.BoolFlag{Name: "q", Usage: "quiet: no progress bar or informational output, errors only"}
	srcCacheFlag   = &cli.StringFlag{Name: "T", Usage: "cache `MODE` of the source image: " + strings.Join(convert.CacheModes, ", ") + " (none and directsync read it with O_DIRECT)", Value: "writeback"}
)

// readableFormats lists the formats diskimg reads, as the registry has
// them (in probe order).
func readableFormats() []string {
	var names []string
	for _, f := range format.Formats() {
		names = append(names, f.Name)
	}
	return names
}

func imageFlags() []cli.Flag {
	return append([]cli.Flag{formatFlag, outsideFlag, noBackingFlag, untrustedFlag, parentFlag, forceShareFlag}, remoteFlags()...)
}

// imageCommand is a command that opens images: the image flags, then its
// own.
func imageCommand(name, argsUsage, usage string, action cli.ActionFunc, flags ...cli.Flag) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, ArgsUsage: argsUsage, Flags: append(imageFlags(), flags...), Action: action}
}

// withImage is the action of a command that prints what it finds in its
// single FILE argument, in the --output mode.
func withImage(run func(c *cli.Context, mode, path string, img format.Image) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		mode, err := outputMode(c)
		if err != nil {
			return err
		}
		path, img, err := openArg(c)
		if err != nil {
			return err
		}
		defer img.Close()
		return run(c, mode, path, img)
	}
}

func policyOf(c *cli.Context) format.Policy {
	return format.Policy{
		AllowOutside: c.Bool(outsideFlag.Name),
		NoBacking:    c.Bool(noBackingFlag.Name),
		Untrusted:    c.Bool(untrustedFlag.Name),
		Parents:      c.StringSlice(parentFlag.Name),
		// info shows a backing file's name without needing the file, as
		// qemu-img info does; --backing-chain opens the whole chain.
		DeferBackingErrors: c.Command.Name == "info" && !c.Bool("backing-chain"),
	}
}

// openArg opens the single FILE argument of a command ("-" reads standard
// input).
func openArg(c *cli.Context) (string, format.Image, error) {
	if c.NArg() != 1 {
		return "", nil, fmt.Errorf("%s: expected one FILE argument, got %d", c.Command.Name, c.NArg())
	}
	path := c.Args().First()
	img, err := openImage(c, path, c.String(formatFlag.Name), "")
	return path, img, err
}

// openImage opens the image at path as fmtName ("" probes). "-" reads
// standard input: a redirected file in place, a pipe spooled into an
// unlinked file in spoolDir ("" for $TMPDIR). An image from a stream may
// name no other file, whatever the policy flags say. With -T none or
// directsync the image file is read with O_DIRECT. A URL is read by
// range requests (openRemoteImage).
func openImage(c *cli.Context, path, fmtName, spoolDir string) (format.Image, error) {
	if remote.IsURL(path) {
		return openRemoteImage(c, path, fmtName, policyOf(c), spoolDir)
	}
	cache, err := sourceCache(c)
	if err != nil {
		return nil, err
	}
	if path != convert.Stdin {
		if !cache.Direct {
			return format.Open(path, fmtName, policyOf(c))
		}
		f, err := convert.OpenDirect(path)
		if err != nil {
			return nil, err
		}
		img, err := format.NewOpener(policyOf(c)).OpenImage(f, fmtName)
		if err != nil {
			format.CloseFile(f)
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return img, nil
	}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		return nil, errors.New("standard input is a terminal: pipe or redirect an image into it")
	}
	f, err := convert.OpenStdin(c.Context, os.Stdin, spoolDir)
	if err != nil {
		return nil, err
	}
	stdinImage = f
	policy := policyOf(c)
	policy.Untrusted = true
	img, err := format.NewOpener(policy).OpenImage(f, fmtName)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("standard input: %w", err)
	}
	return img, nil
}

// stdinImage is standard input once opened as an image: plan needs its
// size.
var stdinImage *convert.StdinFile

// sourceCache is the -T cache mode of commands that have it.
func sourceCache(c *cli.Context) (convert.Cache, error) {
	if !hasFlag(c, srcCacheFlag.Name) {
		return convert.Cache{}, nil
	}
	cache, err := convert.ParseCache(c.String(srcCacheFlag.Name))
	if err != nil {
		return cache, fmt.Errorf("-T: %w", err)
	}
	return cache, nil
}

// hasFlag reports whether the running command defines the flag name.
func hasFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// spoolDirFor is where standard input (or a source whose server sends no
// ranges) is spooled for a conversion: next to the output, so the copy
// lands on the disk that has room for it.
func spoolDirFor(dst string) string {
	if dst == convert.Stdout || remote.IsURL(dst) {
		return ""
	}
	return filepath.Dir(dst)
}

func outputMode(c *cli.Context) (string, error) {
	switch o := c.String(outputFlag.Name); o {
	case "human", "json":
		return o, nil
	default:
		return "", fmt.Errorf("--output: %q is not human or json", o)
	}
}
