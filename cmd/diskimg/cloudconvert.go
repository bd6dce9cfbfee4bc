package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/convert"
	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
	"github.com/diskimg/diskimg/inspect"
	"github.com/diskimg/diskimg/limits"
)

// runCloudConvert is `convert --cloud NAME SRC OUTDIR`: plan the upload,
// convert to what the plan chose into OUTDIR (made when missing, and
// removed again if the conversion fails), verify the output against the
// source, and plan again on the output to prove the cloud will take it.
// OUTDIR may be a bucket prefix (s3://bucket/prefix/): the output is then
// uploaded as it is written and verified by reading it back.
func runCloudConvert(c *cli.Context) (err error) {
	if c.NArg() != 2 {
		return fmt.Errorf("convert --cloud: expected SRC and OUTDIR, got %d arguments", c.NArg())
	}
	src, outdir := c.Args().Get(0), c.Args().Get(1)
	if src == convert.Stdin {
		return errors.New("convert --cloud: SRC is read twice (plan, then convert): give a file, not standard input")
	}
	if c.Bool("n") {
		return errors.New("convert --cloud writes a new file in OUTDIR: -n does not apply")
	}
	if remote.IsURL(outdir) {
		if !strings.HasSuffix(outdir, "/") {
			outdir += "/"
		}
	} else if fi, err := os.Stat(outdir); err == nil && !fi.IsDir() || err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("convert --cloud: %s is not a directory", outdir)
	}
	profile, err := limits.Lookup(c.String("cloud"))
	if err != nil {
		return err
	}
	req := limits.Request{Direction: limits.Import, Disk: c.String("disk"), UploadFormat: c.String("upload-format"), BootMode: c.String("boot-mode"), Sparsify: sparsifyOptions(c) != nil}
	if req.BootMode != "" && req.BootMode != "bios" && req.BootMode != "uefi" {
		return fmt.Errorf("--boot-mode: %q is not bios or uefi", req.BootMode)
	}
	d, err := planFile(c, src, c.String(formatFlag.Name), profile, req)
	if err != nil {
		return err
	}
	quiet := c.Bool(quietFlag.Name)
	if !quiet {
		writePlanText(c.App.ErrWriter, d)
	}
	if d.Path == limits.Refused {
		return &exitError{code: exitRefused, err: fmt.Errorf("%s refuses %s; nothing written", profile.Title, src)}
	}
	if d.Conversion == nil && remote.IsURL(outdir) {
		dst := outdir + path.Base(filepath.ToSlash(src))
		if err := uploadAsIs(c, src, dst); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s: uploaded as it is, verified; %s import to %s\n", dst, d.Path, profile.Title)
		return nil
	}
	if d.Conversion == nil {
		fmt.Fprintf(c.App.Writer, "%s goes to %s as it is (%s import); nothing to convert\n", src, profile.Title, d.Path)
		return nil
	}
	out, err := outputOptions(c)
	if err != nil {
		return err
	}
	job := conversion{
		src:    src,
		dst:    joinOut(outdir, d.Conversion.Output),
		format: d.Conversion.Format,
		resize: d.Conversion.VirtualSize,
		verify: true,
		opts:   convert.Options{Workers: c.Int("m"), Checksum: c.String("checksum") == "sha256"},
		out:    out,
	}
	if d.Conversion.Sparsify {
		job.sparsify = sparsifyOptions(c)
	}
	if len(d.Conversion.Options) > 0 {
		opts, err := format.ParseOptions(strings.Join(d.Conversion.Options, ","))
		if err != nil {
			return err
		}
		job.opts.WriterOptions = opts
	}
	made := ""
	if !remote.IsURL(outdir) {
		if made, err = makeDir(outdir); err != nil {
			return fmt.Errorf("convert --cloud: %w", err)
		}
	}
	defer func() {
		if err != nil {
			removeMade(outdir, made)
		}
	}()
	if _, err := runConversion(c, job); err != nil {
		return err
	}
	// The output must now go as it is.
	after, err := planFile(c, job.dst, d.Conversion.Format, profile, limits.Request{Direction: limits.Import, Disk: req.Disk, UploadFormat: d.Conversion.Format})
	if err != nil {
		return fmt.Errorf("re-checking %s: %w", job.dst, err)
	}
	// The output must need no further conversion (packaging, such as
	// GCP's tar.gz, may remain).
	again := after.Conversion != nil && (after.Conversion.Format != d.Conversion.Format ||
		after.Conversion.VirtualSize != 0 || strings.Join(after.Conversion.Options, ",") != strings.Join(d.Conversion.Options, ","))
	if after.Path == limits.Refused || again {
		writePlanText(c.App.ErrWriter, after)
		return &exitError{code: exitRefused, err: fmt.Errorf("%s: the converted file does not pass %s's rules", job.dst, profile.Title)}
	}
	fmt.Fprintf(c.App.Writer, "%s: %s, %d bytes, verified; %s import to %s\n", job.dst, d.Conversion.Format, after.UploadSize, after.Path, profile.Title)
	for _, f := range after.Findings {
		if f.Severity != limits.Info {
			fmt.Fprintf(c.App.Writer, "  %-7s %s: %s\n", f.Severity, f.Rule, f.Message)
		}
	}
	if p := limits.PackageCommand(d.Conversion, outdir); p != "" {
		fmt.Fprintf(c.App.Writer, "then package it for upload:\n  %s\n", p)
	}
	return nil
}

// uploadAsIs copies the image file src byte for byte to the object dst,
// then reads the object back as an image and compares it with src.
func uploadAsIs(c *cli.Context, src, dst string) error {
	img, err := openImage(c, src, c.String(formatFlag.Name), "")
	if err != nil {
		return err
	}
	defer img.Close()
	f, err := openFile(c, src)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := convert.CreateOutput(dst, convert.OutputOptions{Force: c.Bool("force"), Sources: []string{src},
		Remote: remoteOptions(c, ""), SizeHint: f.Size(), Context: ctx})
	if err != nil {
		return err
	}
	defer out.Abort()
	if _, err := io.Copy(out.Target, io.NewSectionReader(f, 0, f.Size())); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("upload: interrupted; %s not written", dst)
		}
		return fmt.Errorf("upload: %w", err)
	}
	if err := out.Commit(); err != nil {
		return err
	}
	if err := verifyUpload(c, ctx, img, img, dst, img.Info().Format); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s  %s\n", hex.EncodeToString(out.SHA256), dst)
	return nil
}

// joinOut names the file name in outdir, a directory or a bucket prefix.
func joinOut(outdir, name string) string {
	if remote.IsURL(outdir) {
		return outdir + name
	}
	return filepath.Join(outdir, name)
}

// makeDir creates dir and its missing parents, and returns the topmost
// directory it created ("" when dir existed).
func makeDir(dir string) (string, error) {
	top := ""
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		top = d
		if filepath.Dir(d) == d {
			break
		}
	}
	if top == "" {
		return "", nil
	}
	return top, os.MkdirAll(dir, 0o755)
}

// removeMade removes the empty directories makeDir created, from dir up
// to top, so a failed run leaves the filesystem as it was.
func removeMade(dir, top string) {
	if top == "" {
		return
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if os.Remove(d) != nil || d == top {
			return
		}
	}
}

// planFile opens (as fmtName, "" probes) and inspects path, and plans it
// for the profile.
func planFile(c *cli.Context, path, fmtName string, p *limits.Profile, req limits.Request) (limits.Decision, error) {
	img, err := openImage(c, path, fmtName, "")
	if err != nil {
		return limits.Decision{}, err
	}
	defer img.Close()
	facts, err := imageFacts(c, path, img)
	if err != nil {
		return limits.Decision{}, err
	}
	facts.OpenFlags = openFlags(c, path, img)
	if rep, err := inspect.Inspect(img, inspect.Options{NoAllocated: true}); err == nil {
		limits.AddInspection(&facts, rep)
	}
	opts := inspect.SparsifyOptions{}
	if o := sparsifyOptions(c); o != nil {
		opts = *o
	}
	if sparse, rep, err := inspect.Sparsify(img, opts); err == nil {
		facts.SparsifyFree = rep.SavedBytes
		facts.Measure = measurer(img, sparse)
	}
	return limits.Plan(facts, p, req), nil
}
