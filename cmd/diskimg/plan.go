package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/limits"
)

// exitRefused is plan's exit code when the cloud would refuse the image.
const exitRefused = 3

func planCommand() *cli.Command {
	return imageCommand("plan", "FILE", "check an image against a cloud's import/export limits and choose the path (exit 3: refused)", runPlan,
		outputFlag,
		&cli.StringFlag{Name: "cloud", Usage: "cloud profile `NAME`: " + strings.Join(limits.Profiles(), ", ")},
		&cli.StringFlag{Name: "direction", Value: "import", Usage: "import or export"},
		&cli.StringFlag{Name: "disk", Value: "system", Usage: "the image is a system or data disk"},
		&cli.StringFlag{Name: "arch", Usage: "architecture of the servers to create (x86_64, aarch64)"},
		&cli.Int64Flag{Name: "memory", Usage: "memory of the servers to create, `GiB`"},
		&cli.StringFlag{Name: "flavor-disk", Usage: "disk `SIZE` of the target flavor (e.g. 40G)"},
		&cli.StringFlag{Name: "upload-format", Usage: "upload in this `FMT` instead of the one plan chooses"},
		&cli.StringSliceFlag{Name: "quota", Usage: "a count the request involves, `NAME=N` (private-images, creation-tasks, shared-tenants, tags, replications, servers)"},
		&cli.StringFlag{Name: "boot-mode", Usage: "the image boots with `MODE` bios or uefi (overrides what inspect found; chooses for a hybrid image)"})
}

func planRequest(c *cli.Context) (limits.Request, error) {
	req := limits.Request{
		Direction:    limits.Direction(c.String("direction")),
		Disk:         c.String("disk"),
		Arch:         c.String("arch"),
		MemoryGiB:    c.Int64("memory"),
		UploadFormat: c.String("upload-format"),
		BootMode:     c.String("boot-mode"),
	}
	if req.BootMode != "" && req.BootMode != "bios" && req.BootMode != "uefi" {
		return req, fmt.Errorf("--boot-mode: %q is not bios or uefi", req.BootMode)
	}
	if req.Direction != limits.Import && req.Direction != limits.Export {
		return req, fmt.Errorf("--direction: %q is not import or export", req.Direction)
	}
	if req.Disk != "system" && req.Disk != "data" {
		return req, fmt.Errorf("--disk: %q is not system or data", req.Disk)
	}
	if s := c.String("flavor-disk"); s != "" {
		n, err := format.ParseSize(s)
		if err != nil {
			return req, fmt.Errorf("--flavor-disk: %w", err)
		}
		req.FlavorDisk = n
	}
	for _, q := range c.StringSlice("quota") {
		name, val, ok := strings.Cut(q, "=")
		n, err := strconv.ParseInt(val, 10, 64)
		if !ok || err != nil || n < 0 {
			return req, fmt.Errorf("--quota: %q is not NAME=N", q)
		}
		if req.Quotas == nil {
			req.Quotas = map[string]int64{}
		}
		req.Quotas[name] = n
	}
	return req, nil
}

func runPlan(c *cli.Context) error {
	mode, err := outputMode(c)
	if err != nil {
		return err
	}
	if c.String("cloud") == "" {
		return fmt.Errorf("plan: --cloud NAME is required (%s)", strings.Join(limits.Profiles(), ", "))
	}
	profile, err := limits.Lookup(c.String("cloud"))
	if err != nil {
		return err
	}
	req, err := planRequest(c)
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return fmt.Errorf("plan: expected one FILE argument, got %d", c.NArg())
	}
	d, err := planFile(c, c.Args().First(), c.String(formatFlag.Name), profile, req)
	if err != nil {
		return err
	}
	w := c.App.Writer
	if mode == "json" {
		err = writeJSON(w, d)
	} else {
		writePlanText(w, d)
	}
	if err == nil && d.Path == limits.Refused {
		return &exitError{code: exitRefused}
	}
	return err
}

// imageFacts gathers what limits needs from the image's info.
func imageFacts(c *cli.Context, path string, img format.Image) (limits.Image, error) {
	rep, err := format.NewReport(path, img)
	if err != nil {
		return limits.Image{}, err
	}
	info := img.Info()
	var fileSize int64
	if path == convert.Stdin && stdinImage != nil {
		fileSize = stdinImage.Size()
	} else if fileSize, err = sizeOf(c, path); err != nil {
		return limits.Image{}, err
	}
	return limits.Image{
		Filename:      path,
		Format:        info.Format,
		Subformat:     info.Subformat,
		VirtualSize:   img.Size(),
		FileSize:      fileSize,
		AllocatedSize: rep.AllocatedSize,
		Encrypted:     info.Encrypted,
		Backing:       info.BackingFile != "",
		Measure:       measurer(img, nil),
	}, nil
}

// openFlags are the options the plan's commands need to open the image as
// plan did.
func openFlags(c *cli.Context, path string, img format.Image) []string {
	var flags []string
	if c.Bool(noBackingFlag.Name) {
		flags = append(flags, "--"+noBackingFlag.Name)
	}
	if c.Bool(outsideFlag.Name) && leavesDirectory(path, img) {
		flags = append(flags, "--"+outsideFlag.Name)
	}
	for _, p := range c.StringSlice(parentFlag.Name) {
		flags = append(flags, "--"+parentFlag.Name, p)
	}
	return flags
}

// leavesDirectory reports whether the image's chain names a file (backing
// file, extent) outside the directory of the image naming it, which only
// --allow-backing-outside opens.
func leavesDirectory(path string, img format.Image) bool {
	for img != nil {
		info := img.Info()
		refs := info.ExtentFiles
		if info.BackingFile != "" {
			refs = append(refs[:len(refs):len(refs)], info.BackingFile)
		}
		for _, ref := range refs {
			if _, err := (format.Policy{}).Resolve(path, ref); errors.Is(err, format.ErrOutsideDirectory) {
				return true
			}
		}
		path, img = info.FullBackingFile, info.Backing
	}
	return false
}

// measurer measures a conversion of img with the writers' own Measure,
// for the sizes limits plans with; sparse is img as convert --sparsify
// reads it (nil: img), measured when limits asks for the sparsified image.
func measurer(img, sparse format.Image) func(string, []string, int64, bool) (int64, error) {
	return func(f string, options []string, size int64, sparsify bool) (int64, error) {
		w, err := format.LookupWriter(f)
		if err != nil {
			return 0, err
		}
		opts, err := format.ParseOptions(strings.Join(options, ","))
		if err != nil {
			return 0, err
		}
		src := img
		if sparsify && sparse != nil {
			src = sparse
		}
		if size > src.Size() {
			if src, err = convert.Grow(src, size); err != nil {
				return 0, err
			}
		}
		m, err := convert.Measure(src, size, w, convert.Options{WriterOptions: opts})
		return m.Required, err
	}
}

func writePlanText(w io.Writer, d limits.Decision) {
	fmt.Fprintf(w, "cloud: %s (%s)\n", d.Cloud, d.Direction)
	fmt.Fprintf(w, "path: %s\n", d.Path)
	if d.UploadFormat != "" {
		approx := ""
		if d.UploadSizeEstimated {
			approx = "at most "
		}
		fmt.Fprintf(w, "upload: %s, %s%s (%d bytes)\n", d.UploadFormat, approx, humanSize(d.UploadSize), d.UploadSize)
	}
	if len(d.Findings) > 0 {
		fmt.Fprintln(w, "findings:")
		for _, f := range d.Findings {
			fmt.Fprintf(w, "  %-7s %s: %s\n", f.Severity, f.Rule, f.Message)
		}
	}
	if len(d.Commands) > 0 {
		fmt.Fprintln(w, "commands:")
		for _, cmd := range d.Commands {
			fmt.Fprintf(w, "  %s\n", cmd)
		}
	}
}
